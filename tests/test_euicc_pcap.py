"""tshark shows the eUICC's STORE DATA sequence in the GSMTAP pcap (issue 23, "What it must show" item 9;
docs/protocols.md, "pcap export"): a host LPA (tests/lpac_host.py, lpac's AT driver) runs ES10 functions
(GetEUICCChallenge, GetEUICCInfo1, GetEID, an AuthenticateServer in seven STORE DATA blocks, a refused block number)
through a real `bipsim cp --profile euicc --trace F`; `bipsim trace pcap F -o P` exports the card's APDUs as
GSMTAP SIM; Wireshark's GSM SIM dissector (fields gsm_sim.apdu.*) must find every STORE DATA (INS E2) with its P1
(11 more blocks, 91 last) and P2 block number in the order the host sent them, on the channel the CP opened, each
61xx followed by a GET RESPONSE, and no malformed packet.

One CP process, one export and one tshark reading serve the module."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_tool
from tests.cp_process import CpOnPty
from tests.lpac_host import ISD_R_AID, AtLine, HostLpa, HostPki, authenticate_server_request, rsp_spec

FIELDS: tuple[str, ...] = (
    "gsm_sim.apdu.cla.log_chan",
    "gsm_sim.apdu.ins",
    "gsm_sim.apdu.p1",
    "gsm_sim.apdu.p2",
)
FIELDS += ("gsm_sim.apdu.p3", "gsm_sim.apdu.sw")


@dataclass
class Export:
    sent: list[bytes] = field(default_factory=list)  # every APDU the host sent, class 81 as lpac sends it
    answers: list[bytes] = field(default_factory=list)  # the card's answer to each, through +CGLA
    channel: int = 0  # the logical channel the CP opened for the host's session
    apdus: int = 0  # APDUs the CP's trace holds
    rows: list[dict[str, str]] = field(default_factory=list)  # tshark's gsm_sim fields, a row a packet
    flagged: str = ""  # what tshark's filter for malformed packets and expert errors printed


def host_session(device: Path, keys: HostPki, spec: Any) -> tuple[list[bytes], list[bytes]]:
    """Another application holds the first session; the host's ES10 sequence on its own (class 81)."""
    line = AtLine(device)
    try:
        other, lpac = HostLpa(line), HostLpa(line)
        lpac.connect()
        other.open_channel(ISD_R_AID)
        channel = lpac.open_channel(ISD_R_AID)
        answers: list[bytes] = []
        transmit = lpac.transmit

        def kept(index: int, apdu: bytes) -> bytes:
            answers.append(transmit(index, apdu))
            return answers[-1]

        lpac.transmit = kept  # type: ignore[method-assign]
        challenge = spec.decode(
            "GetEuiccChallengeResponse", lpac.store_data(channel, bytes.fromhex("BF2E00"))
        )
        lpac.store_data(channel, bytes.fromhex("BF2000"))
        lpac.store_data(channel, bytes.fromhex("BF3E035C015A"))
        request = authenticate_server_request(
            spec,
            keys,
            challenge=challenge["euiccChallenge"],
            transaction_id=bytes(range(1, 17)),
            server_challenge=bytes(range(16)),
        )
        assert spec.decode("AuthenticateServerResponse", lpac.store_data(channel, request))[0] == (
            "authenticateResponseOk"
        )
        kept(channel, bytes.fromhex("81E2910106BF3E035C015A"))  # block 01 first: 6A80
        lpac.close_channel(channel)
        other.close_channel(1)
        return lpac.sent, answers
    finally:
        line.close()


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Export]:
    from bipsim.uicc.euicc.pki import ensure_pki

    tshark = require_tool("tshark")
    folder = tmp_path_factory.mktemp("euicc_pcap")
    pki = folder / "pki"
    ensure_pki(pki)
    result = Export()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BIPSIM_PKI", str(pki))
        with CpOnPty(folder, ["--profile", "euicc"]) as modem:
            result.sent, result.answers = host_session(modem.device, HostPki.load(pki), rsp_spec())
            modem.stop_cp()  # SIGTERM: the CP writes the rest of its trace
    trace = [json.loads(text) for text in modem.trace.read_text().splitlines() if text.strip()]
    result.apdus = len([e for e in trace if e.get("kind") == "apdu.command"])
    opened = [e["hex"] for e in trace if e.get("summary", "").startswith("MANAGE CHANNEL open:")]
    result.channel = int(opened[1][:2], 16)
    pcap = folder / "es10.pcap"
    exported = subprocess.run(
        [sys.executable, "-m", "bipsim", "trace", "pcap", str(modem.trace), "-o", str(pcap)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert exported.returncode == 0, exported.stderr
    fields = [arg for name in FIELDS for arg in ("-e", name)]
    read = subprocess.run(
        [tshark, "-r", str(pcap), "-Y", "gsm_sim", "-T", "fields", "-E", "separator=;", *fields],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert read.returncode == 0, read.stderr
    result.rows = [dict(zip(FIELDS, row.split(";"), strict=True)) for row in read.stdout.splitlines()]
    flagged = subprocess.run(
        [tshark, "-r", str(pcap), "-Y", "_ws.malformed or _ws.expert.severity >= error", "-T", "fields"]
        + ["-e", "frame.number", "-e", "_ws.col.Info"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert flagged.returncode == 0, flagged.stderr
    result.flagged = flagged.stdout
    yield result


def number(value: str) -> int:
    return int(value, 0)


def test_every_apdu_is_a_gsm_sim_packet_and_none_is_malformed(export: Export) -> None:
    assert export.flagged == ""
    assert len(export.rows) == export.apdus >= len(export.sent)


def test_the_store_data_sequence_in_order_with_p1_and_block_numbers(export: Export) -> None:
    """Each STORE DATA the host sent is in the pcap, in order, with its P1 (11/91), P2 (block number) and P3, on
    the channel the CP opened (the host sent class 81), and with the status word the host got back."""
    store_data = [row for row in export.rows if number(row["gsm_sim.apdu.ins"]) == 0xE2]
    sent = [
        (apdu, answer) for apdu, answer in zip(export.sent, export.answers, strict=True) if apdu[1] == 0xE2
    ]
    assert [(number(r["gsm_sim.apdu.p1"]), number(r["gsm_sim.apdu.p2"])) for r in store_data] == [
        (apdu[2], apdu[3]) for apdu, _ in sent
    ]
    assert [number(r["gsm_sim.apdu.p3"]) for r in store_data] == [apdu[4] for apdu, _ in sent]
    assert [number(r["gsm_sim.apdu.sw"]) for r in store_data] == [
        int.from_bytes(answer[-2:], "big") for _, answer in sent
    ]
    blocks = [(number(r["gsm_sim.apdu.p1"]), number(r["gsm_sim.apdu.p2"])) for r in store_data]
    # GetEUICCChallenge, GetEUICCInfo1, GetEID in one block each; AuthenticateServer's blocks 0..n; the refused 01
    many = len(blocks) - 4
    assert blocks == [(0x91, 0)] * 3 + [(0x11, n) for n in range(many - 1)] + [(0x91, many - 1), (0x91, 1)]
    assert many >= 3
    assert {number(r["gsm_sim.apdu.cla.log_chan"]) for r in store_data} == {export.channel} != {1}
    assert number(store_data[-1]["gsm_sim.apdu.sw"]) == 0x6A80


def test_a_get_response_follows_every_61xx(export: Export) -> None:
    es10 = [row for row in export.rows if number(row["gsm_sim.apdu.ins"]) in (0xE2, 0xC0)]
    chained = 0
    for row, following in zip(es10, es10[1:], strict=False):
        if number(row["gsm_sim.apdu.sw"]) >> 8 == 0x61:
            assert number(following["gsm_sim.apdu.ins"]) == 0xC0
            chained += 1
    assert chained >= 5  # each of the three short answers and the AuthenticateServer answer's pieces
