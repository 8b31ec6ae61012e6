"""The simulated UICC as real PC/SC tools see it: a private pcscd with the vpcd reader (tests/pcsc_peer.py),
`bipsim card serve --vpcd` as its card, and pcsc_scan, opensc-tool, scriptor and pyscard as the peers."""

from __future__ import annotations

import subprocess

import pytest

from tests.pcsc_peer import PcscPeer, pcscd

__all__ = ["pcscd"]  # the fixture, imported for the tests below


@pytest.mark.needs("pcscd", "pcsc_scan")
def test_private_pcscd_lists_its_vpcd_readers(pcscd: PcscPeer) -> None:
    listing = subprocess.run(
        ["pcsc_scan", "-r"], env=pcscd.env(), capture_output=True, text=True, timeout=20, check=True
    )
    assert f"0: {pcscd.reader}" in listing.stdout
    assert "1: Virtual PCD 00 01" in listing.stdout
