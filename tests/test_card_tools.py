"""The simulated UICC as real PC/SC tools see it (issue 18): the file parts of the card that tools explore (FCP
templates of TS 102 221 section 11.1.1, EF_DIR, EF_ARR, the status words of section 10.2.1), then a private pcscd
with the vpcd reader (tests/pcsc_peer.py) with `bipsim card serve --vpcd` as its card, and pcsc_scan, opensc-tool,
scriptor and pyscard as the peers."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bipsim.uicc.card import ATR, SimCard
from bipsim.uicc.fs import USIM_AID, bcd_swapped
from bipsim.uicc.profile import load_profile
from tests.pcsc_peer import PcscPeer, pcscd, private_pcscd

__all__ = ["pcscd"]  # the fixture, imported for the tests below

REPO = Path(__file__).resolve().parent.parent
BIPSIM = [sys.executable, "-m", "bipsim"]
DEADLINE = 30.0  # seconds for a started process to be ready on a loaded CI machine


# --- the file parts, in process -----------------------------------------------------------------------------


def decode_tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """Simple TLVs with one-byte tags and one-byte lengths, as the FCP's are (an independent reading)."""
    out, at = [], 0
    while at < len(data):
        tag, length = data[at], data[at + 1]
        assert length < 0x80 and at + 2 + length <= len(data), data.hex()
        out.append((tag, data[at + 2 : at + 2 + length]))
        at += 2 + length
    return out


def run(card: SimCard, hex_apdu: str) -> tuple[bytes, str]:
    response = card.process(bytes.fromhex(hex_apdu.replace(" ", "")))
    return response[:-2], response[-2:].hex().upper()


def fcp_of(card: SimCard, select_hex: str) -> dict[int, bytes]:
    """SELECT with FCP (P2 04), GET RESPONSE after 61 xx as a T=0 terminal does; the template's TLVs by tag."""
    _, sw = run(card, select_hex)
    assert sw[:2] == "61", sw
    fcp, sw = run(card, f"00C00000{sw[2:]}")
    assert sw == "9000" and fcp[0] == 0x62 and fcp[1] == len(fcp) - 2
    return {tag: value for tag, value in decode_tlvs(fcp[2:])}


@pytest.fixture
def card() -> SimCard:
    return SimCard(load_profile())


def test_fcp_of_the_mf_has_what_ts_102_221_table_11_3_requires(card: SimCard) -> None:
    fcp = fcp_of(card, "00A40004023F00")
    # '82027821' is pySim's own test vector for a shareable DF (pySim/ts_102_221.py, FileDescriptor)
    assert fcp[0x82] == bytes.fromhex("7821") and fcp[0x83] == b"\x3f\x00"
    assert fcp[0x8A] == b"\x05"  # operational, activated ('8a0105' in pySim's LifeCycleStatusInteger vectors)
    assert fcp[0x8B] == bytes.fromhex("2F0601")  # EF_ARR of the MF, record 1
    proprietary = dict(decode_tlvs(fcp[0xA5]))
    assert proprietary[0x80] == b"\x71" and int.from_bytes(proprietary[0x83], "big") > 0
    pin_status = decode_tlvs(fcp[0xC6])
    # PS_DO (TS 102 221 9.5.2): PIN1 disabled (the default profile), PIN2 enabled (it guards EF_FDN's updates)
    assert pin_status[0] == (0x90, b"\x40") and (0x83, b"\x01") in pin_status


def test_fcp_of_the_usim_adf_and_its_efs(card: SimCard) -> None:
    fcp = fcp_of(card, "00A40404 10" + USIM_AID.hex())
    assert fcp[0x84] == USIM_AID and fcp[0x82] == bytes.fromhex("7821")
    assert fcp[0x8B][:2] == b"\x6f\x06"  # inside the ADF: its own EF_ARR
    imsi = fcp_of(card, "00A4000402 6F07")
    assert imsi[0x82] == bytes.fromhex("4121")  # pySim's vector for a transparent working EF
    assert imsi[0x80] == b"\x00\x09" and imsi[0x88] == bytes((0x07 << 3,))
    sms = fcp_of(card, "00A4000402 6F3C")
    assert sms[0x82] == bytes.fromhex("422100B00A")  # linear fixed, 176-byte records, 10 of them
    assert sms[0x88] == b""  # no SFI, said explicitly


def test_ef_dir_lists_the_usim_and_ef_arr_holds_the_rules(card: SimCard) -> None:
    fcp = fcp_of(card, "00A40004022F00")
    assert fcp[0x82][:2] == bytes.fromhex("4221") and fcp[0x88] == bytes((0x1E << 3,))
    record, sw = run(card, "00B2010420")
    assert sw == "9000"
    ((tag, template),) = decode_tlvs(record.rstrip(b"\xff"))
    assert tag == 0x61 and dict(decode_tlvs(template)) == {0x4F: USIM_AID, 0x50: b"USIM"}
    assert run(card, "00B2020420")[1] == "6A83"  # one application, one record
    assert run(card, "00B201F420")[0] == record  # by SFI 1E
    run(card, "00A4000C022F06")
    always, sw = run(card, "00B2010418")  # records of 24 bytes (uicc/fs.py ARR_RECORD_LENGTH)
    assert sw == "9000" and always.startswith(bytes.fromhex("8001039000"))


def test_select_by_fid_path_parent_and_child(card: SimCard) -> None:
    assert run(card, "00A4080C047FF06F07") == (b"", "9000")  # path from the MF
    assert run(card, "00B0000001")[0] == b"\x08"
    assert run(card, "00A4030C") == (b"", "9000")  # parent of ADF_USIM: the MF
    assert run(card, "00A4090C047FF06FAD") == (b"", "9000")  # path from the current DF
    assert run(card, "00A4000C023F00") == (b"", "9000")
    assert run(card, "00A4010C027F10") == (b"", "9000")  # P1 01: a child DF
    assert run(card, "00A4000C023F00") == (b"", "9000")
    assert run(card, "00A4010C022FE2")[1] == "6A82"  # P1 01 names a DF; 2FE2 is an EF
    assert run(card, "00A4020C022FE2") == (b"", "9000")  # P1 02: an EF under the current DF


@pytest.mark.parametrize(
    ("apdu", "sw"),
    [
        ("00A40004021234", "6A82"),  # file not found
        ("00A4080C047FF01234", "6A82"),  # path to nowhere
        ("00A40704023F00", "6A86"),  # P1 not defined
        ("00A40004033F00", "6700"),  # Lc says 3, 2 bytes follow
        ("00EE0000", "6D00"),  # no such instruction
        ("80A4000C023F00", "6D00"),  # SELECT is not a class 80 command
        ("F0A4000C023F00", "6E00"),  # class F0: not supported
        ("00C0010000", "6B00"),  # GET RESPONSE with P1 P2 other than 00 00
        ("00C0000000", "6985"),  # GET RESPONSE with nothing to get
        ("00B0000001", "6986"),  # READ BINARY with no EF selected
    ],
)
def test_status_words_of_bad_commands(card: SimCard, apdu: str, sw: str) -> None:
    assert run(card, apdu)[1] == sw


def test_wrong_le_is_6c_and_offsets_outside_are_6b00(card: SimCard) -> None:
    run(card, "00A4000C022FE2")
    assert run(card, "00B0000005")[1] == "9000"
    assert run(card, "00B000000B") == (bcd_swapped(load_profile().iccid, 10), "6282")
    assert run(card, "00B0000A01")[1] == "6B00"
    run(card, "00A4000C022F00")
    assert run(card, "00B2010410")[1] == "6C20"  # record length 32


def test_iccid_is_read_only_for_the_terminal_but_not_for_remote_file_management(card: SimCard) -> None:
    run(card, "00A4000C022FE2")
    assert run(card, "00D600000101")[1] == "6982"  # security status not satisfied: update needs ADM
    assert run(card, "00B0000001")[0] == bcd_swapped(load_profile().iccid, 10)[:1]
    internal = card.internal_apdu(bytes.fromhex("00A4000C022FE2"))
    assert internal == b"\x90\x00"
    assert card.internal_apdu(bytes.fromhex("00D600000101")) == b"\x90\x00"
    assert run(card, "00B0000001")[0] == b"\x01"
    assert run(card, "00D600000102")[1] == "6982"  # the terminal still may not


def test_verify_pin_counts_attempts_and_adm_opens_the_iccid(tmp_path: Path) -> None:
    profile = load_profile()
    card = SimCard(profile, state_path=tmp_path / "state.json")
    pin1 = profile.pin1.encode().ljust(8, b"\xff").hex()
    assert run(card, "0020008100") == (b"", "63C3")  # no data: the attempts left
    assert run(card, "0020000100") == (b"", "9000")  # PIN1 is disabled in the default profile: not needed
    assert profile.pin1 != "0000"
    assert run(card, "0020000108 30303030FFFFFFFF")[1] == "6984"  # a disabled PIN is not verified
    assert run(card, "0028000108" + pin1) == (b"", "9000")  # ENABLE PIN1
    assert run(card, "0020000108 30303030FFFFFFFF")[1] == "63C2"  # "0000": wrong
    assert run(card, "0020000100") == (b"", "63C2")
    assert run(card, "0020000108" + pin1) == (b"", "9000")
    assert run(card, "0020000100") == (b"", "9000")  # verified
    assert run(card, "0020008108 3030303030303030")[1] == "63C2"  # PIN2, wrong
    assert run(card, "0020008108 3030303030303030")[1] == "63C1"
    assert run(card, "0020000502 3030")[1] == "6700"  # a PIN is 8 bytes
    assert run(card, "0020000208" + pin1)[1] == "6A88"  # no such key reference
    assert run(card, "0020010108" + pin1)[1] == "6B00"
    # the lost attempts survive a power cycle (the state file is written before the answer)
    again = SimCard(profile, state_path=tmp_path / "state.json")
    assert run(again, "0020008100") == (b"", "63C1")
    assert run(again, "0020008108 3030303030303030")[1] == "63C0"  # the third false one blocks it
    assert run(again, "0020008108 3030303030303030")[1] == "6983"  # blocked
    assert run(again, "0020008108" + profile.pin2.encode().ljust(8, b"\xff").hex())[1] == "6983"
    # ADM1 opens EF_ICCID for UPDATE until the next reset
    run(again, "00A4000C022FE2")
    assert run(again, "00D600000101")[1] == "6982"
    assert run(again, "002000 0A08" + profile.adm1.encode().hex()) == (b"", "9000")
    assert run(again, "00D600000101") == (b"", "9000")
    again.reset()
    run(again, "00A4000C022FE2")
    assert run(again, "00D600000102")[1] == "6982"


def test_status_answers_the_current_df(card: SimCard) -> None:
    run(card, "00A40404 10" + USIM_AID.hex())
    fcp, sw = run(card, "80F2000000")
    assert sw == "9000" and dict(decode_tlvs(fcp[2:]))[0x84] == USIM_AID
    assert run(card, "80F20001 00") == (b"\x84\x10" + USIM_AID, "9000")
    assert run(card, "80F2000C00") == (b"", "9000")
    assert run(card, "80F2000500")[1] == "6A86"


# --- real PC/SC peers ---------------------------------------------------------------------------------------


@dataclass
class ServedCard:
    process: subprocess.Popen[str]
    trace: Path
    state: Path
    peer: PcscPeer

    def events(self) -> list[dict[str, Any]]:
        """The card's trace, once it has stopped (a running tracer writes its lines in batches)."""
        if self.process.poll() is None:
            stop_card(self)
        return [json.loads(line) for line in self.trace.read_text().splitlines() if line.strip()]


def wait_for_card(peer: PcscPeer, reader: int = 0) -> None:
    """Polls opensc-tool for the ATR of the card in `reader` until pcscd has seen it (with a deadline)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        probe = subprocess.run(
            ["opensc-tool", "-r", str(reader), "-a"],
            env=peer.env(),
            capture_output=True,
            text=True,
            timeout=20,
        )
        if probe.returncode == 0 and ATR.hex(":") in probe.stdout.lower():
            return
        assert time.monotonic() < deadline, f"no card in reader {reader}: {probe.stdout} {probe.stderr}"
        time.sleep(0.05)


def start_card(peer: PcscPeer, directory: Path, *extra: str) -> ServedCard:
    trace, state = directory / "card.jsonl", directory / "card-state.json"
    process = subprocess.Popen(
        [*BIPSIM, "card", "serve", "--vpcd", f"127.0.0.1:{peer.vpcd_port}", "--trace", str(trace)]
        + ["--state", str(state), *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return ServedCard(process, trace, state, peer)


def stop_card(served: ServedCard) -> str:
    """SIGTERM: the command exits 0 promptly (bipsim/commands/common.py Shutdown); its stderr."""
    served.process.send_signal(signal.SIGTERM)
    _, err = served.process.communicate(timeout=20)
    assert served.process.returncode == 0, err
    return err


@pytest.fixture
def served(pcscd: PcscPeer, tmp_path: Path) -> Iterator[ServedCard]:
    card = start_card(pcscd, tmp_path)
    try:
        wait_for_card(pcscd)
        yield card
    finally:
        if card.process.poll() is None:
            stop_card(card)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedCard]:
    """One private pcscd and one served card for the tests that only ask the card through PC/SC and read no
    trace of it (pcsc_scan, scriptor, `card readers`): started once for them all, as a reader stays plugged in
    while several programs use it."""
    with private_pcscd(tmp_path_factory.mktemp("pcscd")) as peer:
        card = start_card(peer, tmp_path_factory.mktemp("card"))
        try:
            wait_for_card(peer)
            yield card
        finally:
            if card.process.poll() is None:
                stop_card(card)


@pytest.mark.needs("pcscd", "pcsc_scan", "opensc-tool")
def test_private_pcscd_lists_its_vpcd_readers(shared: ServedCard) -> None:
    pcscd = shared.peer
    listing = subprocess.run(
        ["pcsc_scan", "-r"], env=pcscd.env(), capture_output=True, text=True, timeout=20, check=True
    )
    assert f"0: {pcscd.reader}" in listing.stdout
    assert "1: Virtual PCD 00 01" in listing.stdout


@pytest.mark.needs("pcscd", "pcsc_scan", "opensc-tool")
def test_pcsc_scan_shows_our_atr(shared: ServedCard) -> None:
    scan = subprocess.run(
        ["pcsc_scan", "-n", "-c", "-t", "1"],
        env=shared.peer.env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = scan.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if shared.peer.reader in line)
    assert "Card inserted" in "".join(lines[at : at + 4])
    assert f"ATR: {ATR.hex(' ').upper()}" in "".join(lines[at : at + 4])


@pytest.mark.needs("pcscd", "opensc-tool")
def test_opensc_tool_reads_the_profiles_iccid(served: ServedCard) -> None:
    result = subprocess.run(
        ["opensc-tool", "-r", "0", "-s", "00A40004023F00", "-s", "00A4000C022FE2", "-s", "00B000000A"],
        env=served.peer.env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    iccid = bcd_swapped(load_profile().iccid, 10).hex(" ").upper()
    assert f"{iccid} " in result.stdout.replace("\n", " ")
    assert result.stdout.count("SW1=0x90, SW2=0x00") == 3
    events = served.events()
    kinds = [(e["kind"], e.get("fields", {}).get("sw")) for e in events]
    assert ("apdu.response", "9000") in kinds and ("apdu.atr", None) in kinds
    read = [e for e in events if e["kind"] == "apdu.command" and e["hex"] == "00B000000A"]
    assert read and read[0]["src"] == "reader" and read[0]["dst"] == "uicc"


@pytest.mark.needs("pcscd", "opensc-tool", "scriptor")
def test_scriptor_runs_an_apdu_file(shared: ServedCard, tmp_path: Path) -> None:
    script = tmp_path / "explore.apdu"
    aid = USIM_AID.hex(" ").upper()
    script.write_text(
        "# select ADF_USIM by AID (EF_DIR's entry), read EF_IMSI by SFI, then two commands the card refuses\n"
        f"00 A4 04 04 10 {aid}\n00 C0 00 00 00\n00 B0 87 00 09\n00 FF 00 00\nF0 A4 00 00\n"
    )
    result = subprocess.run(
        ["scriptor", "-r", shared.peer.reader, str(script)],
        env=shared.peer.env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    # an answer is "< HEX : meaning", its hex wrapped over several lines when long
    answers = [
        " ".join(m.split()) for m in re.findall(r"^< ((?:[0-9A-F]{2}\s+)+: [^\n]*)", result.stdout, re.M)
    ]
    answers = ["< " + a for a in answers]
    assert len(answers) == 5, result.stdout
    assert answers[0].startswith("< 61 ")
    assert (
        answers[1].startswith("< 62 ")
        and f"84 10 {aid}" in answers[1]
        and ": Normal processing" in answers[1]
    )
    assert answers[2].startswith("< 08 09 10 10 10 32 54 76 98 90 00")  # EF_IMSI of 001010123456789
    assert answers[3].startswith("< 6D 00")
    assert answers[4].startswith("< 6E 00")


@pytest.mark.needs("pcscd", "opensc-tool")
def test_pyscard_terminal_profile_fetch_terminal_response(served: ServedCard) -> None:
    pytest.importorskip("smartcard")
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "pcsc_cat_cycle.py"), served.peer.reader],
        env=served.peer.env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["atr"] == ATR.hex().upper()
    assert out["terminal_profile"][:2] == "91"  # the default profile's card has a proactive command for us
    assert out["fetch"] == "9000" and out["command"]
    assert out["terminal_response"][:2] in ("90", "91")
    events = served.events()
    kinds = [e["kind"] for e in events]
    for kind in ("cat.terminal_profile", "cat.fetch", "cat.proactive", "cat.terminal_response"):
        assert kind in kinds
    proactive = next(e for e in events if e["kind"] == "cat.proactive")
    assert proactive["fields"]["command"] == out["command"]


@pytest.mark.needs("pcscd", "opensc-tool")
def test_card_readers_lists_the_reader_with_our_atr(shared: ServedCard) -> None:
    pytest.importorskip("smartcard")
    listing = subprocess.run(
        [*BIPSIM, "card", "readers"],
        env=shared.peer.env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    assert f"0: {shared.peer.reader}  ATR {ATR.hex().upper()}" in listing.stdout
    assert "1: Virtual PCD 00 01  no card" in listing.stdout


# A program holding the card (as bipsim cp --card pcsc does): one APDU, a pause until told, the same APDU again.
HOLDER = """
import sys
from smartcard.System import readers
connection = readers()[0].createConnection()
connection.connect()
for _ in range(2):
    data, sw1, sw2 = connection.transmit([0x00, 0xA4, 0x00, 0x0C, 0x02, 0x3F, 0x00])
    print(f"{sw1:02X}{sw2:02X}", flush=True)
    sys.stdin.readline()
"""


def test_card_readers_leaves_a_card_that_another_program_holds_alone(shared: ServedCard) -> None:
    """pyscard's connect/disconnect powers the card off by default: another holder's next APDU would fail with
    "Card was reset"; card readers connects with SCARD_LEAVE_CARD."""
    pytest.importorskip("smartcard")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        env=shared.peer.env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "9000"
        listing = subprocess.run(
            [*BIPSIM, "card", "readers"],
            env=shared.peer.env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listing.returncode == 0 and "ATR" in listing.stdout, listing.stderr
        holder.stdin.write("\n")
        holder.stdin.flush()
        output = holder.communicate(timeout=30)[0]
        assert output.strip() == "9000", output  # not "Card was reset"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_card_readers_without_pcscd_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("smartcard")
    env = dict(os.environ, PCSCLITE_CSOCK_NAME=str(tmp_path / "no-pcscd.comm"))
    listing = subprocess.run(
        [*BIPSIM, "card", "readers"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert listing.returncode != 0
    lines = listing.stderr.strip().splitlines()
    assert len(lines) == 1 and "pcscd is not running" in lines[0], listing.stderr


@pytest.mark.needs("pcscd", "opensc-tool")
def test_card_serve_reconnects_when_pcscd_restarts_and_keeps_the_state(served: ServedCard) -> None:
    peer = served.peer
    update = ["opensc-tool", "-r", "0", "-s", "00A4080C047FF06F46", "-s", "00D600000101"]
    assert (
        "SW1=0x90, SW2=0x00" in subprocess.run(update, env=peer.env(), capture_output=True, text=True).stdout
    )
    peer.restart()
    wait_for_card(peer)  # the same card server, inserted again in the new daemon's reader
    assert served.process.poll() is None
    read = ["opensc-tool", "-r", "0", "-s", "00A4080C047FF06F46", "-s", "00B0000001"]
    result = subprocess.run(read, env=peer.env(), capture_output=True, text=True, timeout=30, check=True)
    assert "Received (SW1=0x90, SW2=0x00):\n01 " in result.stdout
    assert served.process.poll() is None
    connected = [e for e in served.events() if e.get("fields", {}).get("event") == "vpcd_connected"]
    assert len(connected) >= 2
    assert json.loads(served.state.read_text())["files"]["3F00/7FF0/6F46"].startswith("01")


def test_card_serve_drops_a_peer_that_sends_a_wrong_length_and_goes_on(tmp_path: Path) -> None:
    """A vpcd peer (a plain socket here) sends a zero length: one line on stderr, a vpcd.error event, and the
    card connects again."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(DEADLINE)
        port = server.getsockname()[1]
        trace = tmp_path / "card.jsonl"
        process = subprocess.Popen(
            [*BIPSIM, "card", "serve", "--vpcd", f"127.0.0.1:{port}", "--trace", str(trace)],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            first, _ = server.accept()
            with first:
                first.settimeout(DEADLINE)
                first.sendall(b"\x00\x01\x04")
                assert first.recv(64) == b"\x00" + bytes((len(ATR),)) + ATR
                first.sendall(b"\x00\x00")
                assert first.recv(64) == b""  # the card hung up
            second, _ = server.accept()  # and came back
            second.close()
        finally:
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=20)
    assert process.returncode == 0
    assert any("dropped (a message of length 0)" in line for line in err.splitlines()), err
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    errors = [e for e in events if e["kind"] == "vpcd.error"]
    assert (
        len(errors) == 1 and errors[0]["fields"] == {"reason": "zero_length"} and errors[0]["error"] is True
    )


def test_card_readers_without_pyscard_is_one_line() -> None:
    """pyscard missing (an import that fails, as in an install without the pcsc extra): one line, exit 1."""
    code = (
        "import sys; sys.modules['smartcard'] = None; from bipsim.cli import main; main(['card', 'readers'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs pyscard" in lines[0] and "bipsim[pcsc]" in lines[0], result.stderr


def test_card_serve_refuses_a_bad_vpcd_address() -> None:
    result = subprocess.run(
        [*BIPSIM, "card", "serve", "--vpcd", "localhost:http"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["bipsim: error: 'localhost:http' is not HOST:PORT"]


def test_card_serve_waits_for_a_missing_reader_and_stops_on_sigterm(tmp_path: Path) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = placeholder.getsockname()[1]
        process = subprocess.Popen(
            [*BIPSIM, "card", "serve", "--vpcd", f"127.0.0.1:{port}", "--state", str(tmp_path / "s.json")],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stderr is not None
        first = process.stderr.readline()  # said once, when the first attempt is refused
        assert f"waiting for the vpcd reader at 127.0.0.1:{port}" in first
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=20)
    assert process.returncode == 0 and "waiting" not in rest
    assert (tmp_path / "s.json").exists()  # the state is written at exit
