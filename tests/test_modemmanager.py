"""ModemManager 1.20 drives the CP through its test profile (tests/mm_peer.py): it enables the modem, sees it
registered, scans 3GPP networks, and shows the SIM's unlock retries, which it reads from the card itself with
+CSIM (VERIFY PIN and UNBLOCK PIN without data, TS 102 221 11.1.9/11.1.13) and +CPIN? (27.007 8.3). With a
PIN-enabled card the modem is locked until `mmcli --pin` enters the PIN through +CPIN=."""

from __future__ import annotations

from pathlib import Path

from tests.mm_peer import MmPeer


def _retries(modem: dict[str, object]) -> list[str]:
    status = modem.get("generic", {})
    assert isinstance(status, dict)
    found = status.get("unlock-retries", [])
    assert isinstance(found, list)
    return [str(item) for item in found]


def test_modemmanager_enables_registers_and_scans(tmp_path: Path) -> None:
    with MmPeer(tmp_path) as peer:
        peer.wait_for("initialised", lambda: peer.modem().get("generic", {}).get("state") == "disabled")
        generic = peer.modem()["generic"]
        assert generic["manufacturer"] == "bipsim" and generic["unlock-required"] in ("none", "--"), generic
        # the card's counters: PIN1 needs no verification (disabled: VERIFY answers 9000, which MM does not count)
        assert {"sim-puk (10)", "sim-pin2 (3)", "sim-puk2 (10)"} <= set(_retries(peer.modem()))
        code, out = peer.mmcli("-m", "0", "-e")
        assert code == 0, out + peer.mm_log()[-3000:]
        peer.wait_for("registered", lambda: peer.modem().get("generic", {}).get("state") == "registered")
        threegpp = peer.modem()["3gpp"]
        assert threegpp["registration-state"] == "home" and threegpp["operator-code"] == "00101"
        code, out = peer.mmcli("-m", "0", "--3gpp-scan", "--timeout=100")
        assert code == 0 and "00101" in out, out
        assert "granted org.freedesktop.ModemManager1.Device.Control" in peer._log("polkit")


def test_modemmanager_unlocks_a_pin_enabled_card(tmp_path: Path) -> None:
    with MmPeer(tmp_path, cp_args=["--profile", "pin"]) as peer:
        peer.wait_for("locked", lambda: peer.modem().get("generic", {}).get("state") == "locked")
        generic = peer.modem()["generic"]
        assert generic["unlock-required"] == "sim-pin"
        assert "sim-pin (3)" in _retries(peer.modem())
        sim = peer.modem()["generic"]["sim"]
        code, out = peer.mmcli("-i", sim, "--pin=0000")
        assert code != 0
        peer.wait_for("2 PIN attempts", lambda: "sim-pin (2)" in _retries(peer.modem()))
        code, out = peer.mmcli("-i", sim, "--pin=1234")
        assert code == 0, out + peer.mm_log()[-3000:]
        peer.wait_for(
            "unlocked", lambda: peer.modem().get("generic", {}).get("state") in ("disabled", "enabled")
        )
        code, out = peer.mmcli("-m", "0", "-e")
        assert code == 0, out
        peer.wait_for("registered", lambda: peer.modem().get("generic", {}).get("state") == "registered")
        assert 'AT+CPIN="1234"' in peer.mm_log()
