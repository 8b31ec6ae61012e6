"""`bipsim trace replay --as card`: a recorded embodiment-2 card (and its recorded OTA server) against a live CP and AP.

The recording is a real run of the three processes (bipsim.scenarios.harness). Its campaign is small (an RFM update
and a GET STATUS) so that no server flight exceeds the card's buffer: how a live CP cuts a larger flight into Data
Available events depends on timing, which a byte-exact replay would (rightly) report.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from bipsim.cli import main
from bipsim.scenarios.campaigns import RAM_STATUS, SPN_UPDATE, campaign
from bipsim.scenarios.harness import RunConfig, run_processes
from bipsim.trace.events import Actor, Layer, TraceEvent
from bipsim.trace.reader import read_trace
from bipsim.trace.replay import ConnectionTape, Flight, RecordedServer, open_channel_address, server_tapes
from bipsim.uicc.ota_agent import SEED_ENV

SEED = "0123456789ABCDEF"
SMALL_CAMPAIGN = campaign(SPN_UPDATE, RAM_STATUS)


@pytest.fixture(scope="session")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("e2-recording")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BIPSIM_CARD_SEED", SEED)  # the card's TLS randoms, so --as server can replay them
        run = run_processes(
            RunConfig(session="e2", bearer="ap-proxy", campaign=SMALL_CAMPAIGN), directory / "run"
        )
    assert run.cp_code == 0, run.explain()
    path = directory / "e2.jsonl"
    path.write_text("".join(e.to_json() + "\n" for e in run.events), encoding="utf-8")
    return path


def replay(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`bipsim trace replay PATH ARGS` through the console script's entry point (bipsim.cli.main) in this process:
    the live CP and AP it plays against are processes of their own either way, and the replay's own interpreter
    start is saved (`test_trace_without_apdus_is_refused` runs the command as a process)."""
    out, err = io.StringIO(), io.StringIO()
    seed = os.environ.get(SEED_ENV)  # `--card-seed` hands the live card its seed through the environment
    try:
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            pytest.raises(SystemExit) as exit_,
        ):
            main(["trace", "replay", str(path), *args])
    finally:
        if seed is None:
            os.environ.pop(SEED_ENV, None)
        else:
            os.environ[SEED_ENV] = seed
    code = exit_.value.code
    return subprocess.CompletedProcess(
        args, code if isinstance(code, int) else 1, out.getvalue(), err.getvalue()
    )


def test_recorded_card_against_live_cp_matches(recording: Path, tmp_path: Path) -> None:
    live = tmp_path / "live.jsonl"
    out = replay(recording, "--as", "card", "--trace", str(live))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("replay matches:") and "S701..S718" in out.stdout
    events, problems = read_trace([live])
    assert problems == []
    assert {f"S7{n:02d}" for n in range(1, 19)} <= {e.step for e in events if e.step}


# S714, late in the session: the live CP must first match every earlier TR byte for byte, S702's among them; a
# divergence reported under S702 is test_one_flipped_byte_of_the_cps_recorded_at_command_is_reported's
@pytest.mark.parametrize("step", ["S714"])
def test_one_flipped_byte_of_a_recorded_tr_is_reported_with_its_step(
    recording: Path, tmp_path: Path, step: str
) -> None:
    events, _ = read_trace([recording])
    target = next(
        i
        for i, e in enumerate(events)
        if e.step == step and e.layer is Layer.APDU and e.src is Actor.CP and e.data[:2] == b"\x80\x14"
    )
    original = events[target].data
    flipped = original[:-1] + bytes([original[-1] ^ 0x01])
    fields = events[target].to_dict() | {"hex": flipped.hex().upper()}
    events[target] = TraceEvent.from_dict(fields)
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("".join(e.to_json() + "\n" for e in events), encoding="utf-8")

    out = replay(tampered, "--as", "card")
    assert out.returncode == 1, out.stdout + out.stderr
    text = out.stdout
    assert "replay diverged" in text
    assert f"expected [{step}]: cp->uicc apdu: TERMINAL RESPONSE" in text
    assert f"bytes: {flipped.hex().upper()}" in text  # what the recording says
    assert f"bytes: {original.hex().upper()}" in text  # what the live CP sent
    assert f"first differing byte at offset {len(original) - 1}" in text
    assert "meaning: TERMINAL RESPONSE" in text


def _flip(path: Path, out: Path, pick: object, offset: int) -> tuple[TraceEvent, bytes]:
    """Writes `path` to `out` with one byte of the first event `pick` accepts flipped; returns it and its bytes."""
    events, _ = read_trace([path])
    target = next(i for i, e in enumerate(events) if pick(e))  # type: ignore[operator]
    original = events[target].data
    flipped = original[:offset] + bytes([original[offset] ^ 0x01]) + original[offset + 1 :]
    for i, e in enumerate(events):  # every copy: a merged trace holds a CMUX frame as sent and as received
        if e.hex == events[target].hex and e.layer is events[target].layer and i != target:
            events[i] = TraceEvent.from_dict(e.to_dict() | {"hex": flipped.hex().upper()})
    events[target] = TraceEvent.from_dict(events[target].to_dict() | {"hex": flipped.hex().upper()})
    out.write_text("".join(e.to_json() + "\n" for e in events), encoding="utf-8")
    return events[target], original


def test_recorded_server_against_live_seeded_card_matches(recording: Path) -> None:
    out = replay(recording, "--as", "server", "--card-seed", SEED)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("replay matches:") and "S701..S718" in out.stdout


def test_one_flipped_byte_of_the_cards_recorded_request_is_reported(recording: Path, tmp_path: Path) -> None:
    # the third flight the card sent: its first POST, inside an ApplicationData record
    sent = [0]

    def third_client_flight(e: TraceEvent) -> bool:
        if e.layer is Layer.TCP and e.src is Actor.AP and e.dst is Actor.OTA and e.hex:
            sent[0] += 1
            return sent[0] == 3
        return False

    event, original = _flip(recording, tmp_path / "tampered.jsonl", third_client_flight, 10)
    out = replay(tmp_path / "tampered.jsonl", "--as", "server", "--card-seed", SEED)
    assert out.returncode == 1, out.stdout + out.stderr
    text = out.stdout
    assert "the client sent other bytes" in text
    assert f"expected [{event.step}]: ap->ota" in text and event.step == "S709"
    assert f"bytes: {event.hex}" in text  # the recording
    assert f"actual: {original.hex().upper()}" in text  # the live card, decrypted with the profile's PSK:
    assert "POST /server/adminagent HTTP/1.1; X-Admin-Protocol: globalplatform-remote-admin/1.0" in text
    assert "first differing byte at offset 10" in text


def test_another_seed_diverges_at_the_client_hello(recording: Path) -> None:
    out = replay(recording, "--as", "server", "--card-seed", "FF")
    assert out.returncode == 1
    assert "expected [S709]" in out.stdout and out.stdout.count("meaning: Handshake ClientHello") == 2
    assert "first differing byte at offset 11" in out.stdout  # the client_random starts there


def test_recorded_ap_against_live_cp_matches(recording: Path) -> None:
    out = replay(recording, "--as", "ap")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 AT commands before CMUX" in out.stdout and "DLCs 0, 1, 2, 3" in out.stdout


def test_one_flipped_byte_of_the_cps_recorded_at_command_is_reported(recording: Path, tmp_path: Path) -> None:
    def webopch(e: TraceEvent) -> bool:
        return e.layer is Layer.CMUX and e.src is Actor.CP and b"%WEBOPCH" in e.data

    event, original = _flip(recording, tmp_path / "tampered.jsonl", webopch, 12)  # inside the payload
    out = replay(tmp_path / "tampered.jsonl", "--as", "ap")
    assert out.returncode == 1, out.stdout + out.stderr
    text = out.stdout
    assert "divergence on DLC 2: the CP sent other bytes" in text
    assert "expected [S702]: cp->ap UIH DLC2" in text
    assert "first differing byte at offset 8" in text  # the payload offset: 4 header bytes come first
    assert "actual 'AT%WEBOPCH=1," in text and "expected 'AT%WEBOPBH=1," in text  # C (43) ^ 1 = B (42)


def test_trace_without_apdus_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "net-only.jsonl"
    empty.write_text(TraceEvent(0.0, Actor.AP, Actor.OTA, Layer.TCP, "data", "00").to_json() + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "bipsim", "trace", "replay", str(empty), "--as", "card"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "no APDU exchanges" in out.stderr


def test_server_tape_of_the_recording(recording: Path) -> None:
    events, _ = read_trace([recording])
    tapes = server_tapes(events)
    assert len(tapes) == 1
    tape = tapes[0]
    assert (tape.host, tape.port) == open_channel_address(events)
    directions = [f.from_server for f in tape.flights]
    assert directions[0] is False  # the card's ClientHello comes first
    assert all(a != b for a, b in zip(directions, directions[1:], strict=False))  # flights alternate
    assert tape.client_closed and not tape.server_closed
    assert tape.flights[0].first.step == "S709"


def _event(src: Actor, dst: Actor, data: bytes) -> TraceEvent:
    return TraceEvent(0.0, src, dst, Layer.TCP, f"{len(data)} bytes", data.hex().upper())


async def test_recorded_server_reports_the_first_wrong_byte() -> None:
    hello, answer = b"hello server", b"hello card"
    tape = ConnectionTape(
        "127.0.0.1",
        None,
        [
            Flight(False, hello, [_event(Actor.AP, Actor.OTA, hello)]),
            Flight(True, answer, [_event(Actor.OTA, Actor.AP, answer)]),
            Flight(False, b"again", [_event(Actor.AP, Actor.OTA, b"again")]),
        ],
    )
    server = RecordedServer([tape], 0, read_timeout=5)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        await listeners[0].aclose()
        server.port = port
        await nursery.start(server.run)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(hello)
        received = b""
        while len(received) < len(answer):
            received += await stream.receive_some(100)
        await stream.send_all(b"agaiN")
        await server.done.wait()
        await stream.aclose()
    assert received == answer
    assert server.divergence is not None and server.flights_played == 2
    assert server.divergence.actual == b"agaiN" and server.divergence.reason == "the client sent other bytes"
    assert "first differing byte at offset 4" in server.divergence.describe()


def test_a_recording_the_live_cp_stops_short_of_is_reported_with_the_processes_last_words(
    recording: Path, tmp_path: Path
) -> None:
    """One more file-access exchange at the end of the recording: the live CP finishes without sending it, so
    the replay says what the card was still owed and what the live processes said last."""
    from bipsim.uicc.recorded_card import ApduKind, exchanges

    events, _ = read_trace([recording])
    last = [x for x in exchanges(events) if x.kind is ApduKind.FILES][-1]
    end = events[-1].t
    extra = [
        TraceEvent.from_dict(e.to_dict() | {"t": end + 0.001 * (i + 1)})
        for i, e in enumerate((last.command, last.response))
    ]
    longer = tmp_path / "longer.jsonl"
    longer.write_text("".join(e.to_json() + "\n" for e in [*events, *extra]), encoding="utf-8")
    out = replay(longer, "--as", "card")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "actual: (nothing: the trace ended)" in out.stdout
    assert "the live CP exited with" in out.stdout and "cp log:" in out.stdout and "ap log:" in out.stdout
