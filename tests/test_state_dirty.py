"""Dirty tracking of the card's state (uicc/fs.py, uicc/gp_registry.py, uicc/card_state.py save_parts): the state
file is encoded and written only after an APDU that changed something, and holds exactly what a whole-state
`json.dumps(snapshot, sort_keys=True)` would (docs/protocols.md, "Card state")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bipsim.cp.bip_gateway import BipGateway, SendTerminalResponse
from bipsim.cp.card_driver import TERMINAL_PROFILE
from bipsim.cp.modem import simulated_card
from bipsim.trace.recorder import NULL_TRACER
from bipsim.uicc import card_state
from bipsim.uicc.card import SimCard
from bipsim.uicc.card_state import StateFile
from bipsim.uicc.cat import decode_proactive
from bipsim.uicc.fs import File, FileKind, FileSystem
from bipsim.uicc.gp_registry import GpRegistry

LOAD_FILE = bytes.fromhex("A0000005590010")
SELECT_SPN = "00A4080C047FF06F46"  # by path from the MF, no FCP returned
CAP = b"\xc4\x06\x4f\x04\xa0\x00\x00\x05"  # 'C4' load file data holding one module AID ('4F')


class Counted:
    """Counts JSON encodings and stats of the state file made by uicc/card_state.py while it is installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.dumps = 0
        self.stats = 0
        real_dumps, real_stat = json.dumps, Path.stat

        def dumps(obj: Any, **kwargs: Any) -> str:
            self.dumps += 1
            return real_dumps(obj, **kwargs)

        def stat(path: Path, **kwargs: Any) -> Any:
            self.stats += 1
            return real_stat(path, **kwargs)

        monkeypatch.setattr(card_state.json, "dumps", dumps)
        monkeypatch.setattr(Path, "stat", stat)


def the_card(path: Path) -> tuple[SimCard, StateFile]:
    transport, _agent = simulated_card(None, str(path), NULL_TRACER)
    card: SimCard = transport.card  # type: ignore[attr-defined]
    assert card._state_file is not None
    card.save_state()  # the first save writes the whole state
    return card, card._state_file


def apdu(card: SimCard, hex_: str) -> bytes:
    return card.process(bytes.fromhex(hex_))


def per_apdu(card: SimCard, state: StateFile, counted: Counted, command: str) -> tuple[int, int, int, bytes]:
    """Encodings, writes and stats of one APDU followed by a state save, and the card's answer."""
    encodes, writes, dumps, stats = state.encodes, state.writes, counted.dumps, counted.stats
    answer = apdu(card, command)
    card.save_state()
    assert counted.dumps - dumps == state.encodes - encodes  # every JSON encoding is one the file counts
    return state.encodes - encodes, state.writes - writes, counted.stats - stats, answer


def test_reads_cost_nothing_and_an_update_one_encoding_and_one_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "card.json"
    card, state = the_card(path)
    counted = Counted(monkeypatch)
    assert apdu(card, SELECT_SPN)[-2:] == b"\x90\x00"
    encodes, writes, stats, answer = per_apdu(card, state, counted, "00B0000011")  # READ BINARY EF_SPN
    assert answer[-2:] == b"\x90\x00" and (encodes, writes, stats) == (0, 0, 0)
    encodes, writes, stats, answer = per_apdu(card, state, counted, "80F2000C00")  # STATUS
    assert (encodes, writes, stats) == (0, 0, 0)
    encodes, writes, _, answer = per_apdu(card, state, counted, "00D6000003017879")  # UPDATE BINARY
    assert answer[-2:] == b"\x90\x00" and (encodes, writes) == (1, 1)
    assert json.loads(path.read_text())["files"]["3F00/7FF0/6F46"].startswith("017879")
    encodes, writes, _, _ = per_apdu(card, state, counted, "00D6000003017879")  # the same bytes again
    assert (encodes, writes) == (1, 0)
    encodes, writes, stats, _ = per_apdu(card, state, counted, "00B0000003")
    assert (encodes, writes, stats) == (0, 0, 0)


def test_a_terminal_response_that_changes_nothing_encodes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card, state = the_card(tmp_path / "card.json")
    counted = Counted(monkeypatch)
    profile = bytes((0x80, 0x10, 0, 0, len(TERMINAL_PROFILE))) + TERMINAL_PROFILE
    answer = card.process(profile)
    assert answer[0] == 0x91  # the power-on trigger: OPEN CHANNEL waits
    fetched = card.process(bytes((0x80, 0x12, 0, 0, answer[1])))
    command = decode_proactive(fetched[:-2])
    actions = BipGateway().on_command(command)
    response = next(a.response for a in actions if isinstance(a, SendTerminalResponse))
    body = response.encode()
    encodes, writes, dumps = state.encodes, state.writes, counted.dumps
    answer = card.process(bytes((0x80, 0x14, 0, 0, len(body))) + body)  # the card saves its state inside
    assert answer[-2] in (0x90, 0x91)  # accepted (91 xx: the engine's next command waits)
    assert (state.encodes - encodes, state.writes - writes, counted.dumps - dumps, counted.stats) == (
        0,
        0,
        0,
        0,
    )


def test_load_blocks_that_go_to_the_journal_encode_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card, state = the_card(tmp_path / "card.json")
    registry = next(c for c in card._components.values() if isinstance(c, GpRegistry))
    counted = Counted(monkeypatch)

    def gp(command: bytes) -> tuple[int, int]:
        encodes, writes = state.encodes, state.writes
        assert registry.process(command)[-2:] == b"\x90\x00"
        card.save_state()
        return state.encodes - encodes, state.writes - writes

    install = bytes((len(LOAD_FILE),)) + LOAD_FILE + b"\x00\x00\x00\x00"
    assert gp(bytes((0x80, 0xE6, 0x02, 0x00, len(install))) + install) == (1, 1)
    assert gp(bytes((0x80, 0xE8, 0x00, 0, 3)) + CAP[:3]) == (0, 0)
    assert gp(bytes((0x80, 0xE8, 0x00, 1, 2)) + CAP[3:5]) == (0, 0)
    assert gp(bytes((0x80, 0xE8, 0x80, 2, 3)) + CAP[5:]) == (1, 1)  # the last block registers the load file
    encodes, writes = state.encodes, state.writes
    assert registry.process(bytes.fromhex("80F2200000"))[-2:] == b"\x90\x00"  # GET STATUS changes nothing
    card.save_state()
    assert (state.encodes - encodes, state.writes - writes) == (0, 0)
    assert counted.dumps == 2


def test_the_file_is_what_a_whole_state_encoding_writes(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    card, _ = the_card(path)
    apdu(card, SELECT_SPN)
    apdu(card, "00D60000024142")
    card.save_state()
    assert path.read_bytes() == json.dumps(card.snapshot(), sort_keys=True).encode()
    restarted, _ = the_card(path)
    assert restarted.snapshot() == card.snapshot()


def test_a_failed_write_is_tried_again_at_the_next_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "card.json"
    card, state = the_card(path)
    apdu(card, SELECT_SPN)
    apdu(card, "00D60000024142")
    real = card_state._write_atomically

    def full_disk(target: Path, payload: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(card_state, "_write_atomically", full_disk)
    with pytest.raises(OSError):
        card.save_state()
    monkeypatch.setattr(card_state, "_write_atomically", real)
    card.save_state()  # nothing changed since the failed save, but the file does not hold it yet
    assert json.loads(path.read_text())["files"]["3F00/7FF0/6F46"].startswith("4142")


class Untracked:
    """A state component without a state_version: compared by value at every save."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def to_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def load_dict(self, state: dict[str, Any]) -> None:
        self.values = dict(state)


def test_a_component_without_a_version_is_saved_when_its_value_changes(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    card, state = the_card(path)
    extra = Untracked()
    card.attach_state("extra", extra)
    card.save_state()
    writes = state.writes
    card.save_state()
    assert state.writes == writes
    extra.values["counter"] = 7
    card.save_state()
    assert state.writes == writes + 1 and json.loads(path.read_text())["extra"] == {"counter": 7}


def test_every_change_of_the_tree_moves_its_version_and_reads_do_not() -> None:
    fs = FileSystem("8988211000000000001", "001010123456789")
    spn = fs.usim.children[0x6F46]
    sms = fs.usim.children[0x6F3C]
    changes = [
        lambda: spn.data.__setitem__(slice(0, 2), b"\x01\x02"),
        lambda: spn.data.__setitem__(0, 5),
        lambda: sms.data.extend(b"\xff" * 176),
        lambda: sms.data.__delitem__(slice(-176, None)),
        lambda: sms.data.__iadd__(b"\x00"),
        lambda: sms.data.pop(),
        lambda: setattr(spn, "data", bytearray(b"\x00" * 17)),
        lambda: fs.usim.add(File(0x6F99, "EF_NEW", FileKind.TRANSPARENT, bytearray(4))),
        lambda: fs.usim.children[0x6F99].data.__setitem__(0, 1),  # a file added later counts on the tree
        lambda: fs.usim.children.pop(0x6F99),
        lambda: setattr(spn, "sfi", 0x1A),
    ]
    for change in changes:
        before = fs.state_version
        change()
        assert fs.state_version > before, change
    before = fs.state_version
    assert bytes(spn.data[0:3]) and spn.data.hex() and len(sms.data) and fs.to_dict()
    assert fs.by_aid(fs.usim.aid) is fs.usim
    assert fs.state_version == before
