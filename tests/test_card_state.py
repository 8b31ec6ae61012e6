"""The card's persistence (uicc/card_state.py, the GP registry's LOAD journal): a torn journal append reads as the
records before it, the state file is rewritten only when it changed, and a registry restored from state file plus
journal has exactly the LOAD blocks it answered (the last one too, when the kill came before the state save)."""

from __future__ import annotations

import json
from pathlib import Path

from bipsim.uicc.card_state import Journal, StateFile, read_journal
from bipsim.uicc.gp_registry import GpRegistry

LOAD_FILE = bytes.fromhex("A0000005590010")
CAP = b"\xc4\x06\x4f\x04\xa0\x00\x00\x05"  # 'C4' load file data holding one module AID ('4F')


def install_for_load() -> bytes:
    data = bytes((len(LOAD_FILE),)) + LOAD_FILE + b"\x00\x00\x00\x00"
    return bytes((0x80, 0xE6, 0x02, 0x00, len(data))) + data


def load(block: int, data: bytes, *, last: bool = False) -> bytes:
    return bytes((0x80, 0xE8, 0x80 if last else 0x00, block, len(data))) + data


def restored(path: Path) -> GpRegistry:
    registry = GpRegistry()
    registry.bind_state_path(path)
    registry.load_dict(json.loads(path.read_text())["gp"])
    return registry


def save(path: Path, registry: GpRegistry) -> None:
    StateFile(path).save({"gp": registry.to_dict()})
    registry.state_saved()


def test_a_torn_append_reads_as_the_records_before_it(tmp_path: Path) -> None:
    path = tmp_path / "j.journal"
    journal = Journal.create(path)
    journal.append(b"one")
    journal.append(b"two", sync=False)
    journal.close()
    whole = path.read_bytes()
    for cut in range(len(whole) - 1, 0, -1):
        path.write_bytes(whole[:cut])
        records, good = read_journal(path)
        assert records == [b"one", b"two"][: len(records)] and len(records) < 2
    path.write_bytes(whole[:-1])
    journal, records = Journal.reopen(path)  # the torn tail is cut so that appends follow whole records
    journal.append(b"three")
    journal.close()
    assert read_journal(path)[0] == [b"one", b"three"]
    path.write_bytes(whole[:-4] + bytes(4))  # same length, bad checksum
    assert read_journal(path)[0] == [b"one"]


def test_the_state_file_is_written_only_when_it_changed(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    state = StateFile(path)
    assert state.save({"a": 1}) and not state.save({"a": 1}) and state.writes == 1
    assert state.save({"a": 2}) and json.loads(path.read_text()) == {"a": 2}
    path.write_text('{"a": 3}')  # changed behind its back: written again
    assert state.save({"a": 2}) and json.loads(path.read_text()) == {"a": 2}


def test_load_blocks_live_in_the_journal_and_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    registry = GpRegistry()
    registry.bind_state_path(path)
    assert registry.process(install_for_load())[-2:] == b"\x90\x00"
    save(path, registry)
    stored = path.read_bytes()
    assert registry.process(load(0, CAP[:3]))[-2:] == b"\x90\x00"
    assert registry.process(load(1, CAP[3:5]))[-2:] == b"\x90\x00"
    save(path, registry)
    assert path.read_bytes() == stored  # the state file does not grow with the load data
    again = restored(path)
    assert again.load_in_progress == (LOAD_FILE, 2, CAP[:5])
    assert again.process(load(2, CAP[5:], last=True))[-2:] == b"\x90\x00"
    assert LOAD_FILE in again.load_files and again.load_in_progress is None
    save(path, again)
    assert not list(tmp_path.glob("*.journal"))  # the finished load's journal is gone
    assert LOAD_FILE in restored(path).load_files


def test_a_last_block_answered_before_the_kill_is_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    registry = GpRegistry()
    registry.bind_state_path(path)
    registry.process(install_for_load())
    save(path, registry)
    registry.process(load(0, CAP[:4]))
    assert registry.process(load(1, CAP[4:], last=True))[-2:] == b"\x90\x00"
    registry.sync_state()
    # killed here: the state file still names the journal, which holds the last block
    again = restored(path)
    assert LOAD_FILE in again.load_files and again.load_in_progress is None
    assert list(tmp_path.glob("*.journal"))  # kept until a state file stops naming it
    assert LOAD_FILE in restored(path).load_files  # a second kill before that save loses nothing either


def test_a_new_load_leaves_the_journal_named_on_disk_whole(tmp_path: Path) -> None:
    """INSTALL [for load] again before the state is saved: the old journal stays until the state moves on."""
    path = tmp_path / "card.json"
    registry = GpRegistry()
    registry.bind_state_path(path)
    registry.process(install_for_load())
    registry.process(load(0, CAP[:4]))
    save(path, registry)
    registry.process(install_for_load())  # restart of the load (killed here, before the save)
    named = tmp_path / json.loads(path.read_text())["gp"]["loading"]["journal"]
    assert len(read_journal(named)[0]) == 1  # what a restart would read: the block of the state on disk
    save(path, registry)
    assert not named.exists()
    assert restored(path).load_in_progress == (LOAD_FILE, 0, b"")
    assert len(list(tmp_path.glob("*.journal"))) == 1
