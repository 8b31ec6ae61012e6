"""The soak run (`bipsim soak`, scenarios/soak.py): its plan comes from the seed, its consistency check finds what
the card and the server's log disagree on, the harness's ServerLink holds, drops, corrupts and paces the server's
bytes, and a short soak through the command line passes with a JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from bipsim.scenarios.campaigns import APPLICATION, LOAD_FILE, SPN_DATA
from bipsim.scenarios.harness import RunConfig, RunResult, ServerLink
from bipsim.scenarios.soak import Fault, check_consistency, plan_session

# seed 14's first three sessions: power-loss (AP proxy), line-drop (the CP's own stack), corrupt (AP proxy)
SEED = 14


def test_the_plan_comes_from_the_seed_alone() -> None:
    plans = [plan_session(SEED, i) for i in range(3)]
    assert plans == [plan_session(SEED, i) for i in range(3)]
    assert [p.fault for p in plans] == [Fault.POWER_LOSS, Fault.LINE_DROP, Fault.CORRUPT]
    assert plan_session(SEED + 1, 0) != plans[0]
    for plan in (plan_session(seed, i) for seed in range(20) for i in range(10)):
        # the fault lands past the handshake and the EF_SPN script, inside the load script
        assert 3000 <= plan.offset < 3000 + plan.size // 2 and 8000 <= plan.size <= 16000
    assert {plan_session(seed, 0).fault for seed in range(40)} == set(Fault)


def run_with(results: dict[str, Any], state: dict[str, Any], *, completed: bool = True) -> RunResult:
    card = {"completed": completed, "all_ok": True, "sessions": 1, "resumed": 0, **results}
    return RunResult(RunConfig(), 0, [], {"iccid:1": card}, state, Path("."), {})


def script(index: int, kind: str, *status_words: str) -> dict[str, Any]:
    return {"script": index, "kind": kind, "status_words": list(status_words or ["9000"])}


WHOLE_STATE = {
    "files": {"3F00/7FF0/6F46": SPN_DATA},
    "gp": {"load_files": {LOAD_FILE.lower(): {}}, "applications": {APPLICATION.lower(): {}}},
}
WHOLE_LOG = [script(0, "rfm"), script(1, "ram-load"), script(2, "ram-install")]


def test_consistency_of_a_whole_campaign() -> None:
    assert check_consistency(run_with({"scripts": WHOLE_LOG}, WHOLE_STATE)) == []


def test_consistency_finds_a_script_logged_but_not_applied() -> None:
    state = {**WHOLE_STATE, "gp": {"load_files": {LOAD_FILE.lower(): {}}, "applications": {}}}
    problems = check_consistency(run_with({"scripts": WHOLE_LOG}, state))
    assert problems == ["the server logged the ram-install script as answered; the card does not have it"]


def test_consistency_finds_a_script_applied_but_never_logged() -> None:
    problems = check_consistency(run_with({"scripts": WHOLE_LOG[:2]}, WHOLE_STATE, completed=False))
    assert problems == ["the card has the ram-install script applied; the server never logged its answer"]


def test_consistency_finds_a_script_applied_twice() -> None:
    log = [*WHOLE_LOG, script(2, "ram-install", "6985")]
    problems = check_consistency(run_with({"scripts": log}, WHOLE_STATE))
    assert "iccid:1: script 2 logged 2 times" in problems
    assert "iccid:1: script 2 (ram-install) answered 6985" in problems


def test_consistency_finds_a_completed_campaign_that_is_not_all_there() -> None:
    state = {"files": {}, "gp": {"load_files": {}, "applications": {}}}
    problems = check_consistency(run_with({"scripts": []}, state))
    assert problems == ["the campaign completed with only [] logged"]


async def test_the_server_link_holds_drops_corrupts_and_paces_the_servers_bytes() -> None:
    payload = bytes(range(256)) * 40  # 10 240 bytes

    async def server(stream: trio.SocketStream) -> None:
        await stream.receive_some(1)
        await stream.send_all(payload)
        await trio.sleep_forever()

    async def read(stream: trio.SocketStream, count: int) -> bytes:
        data = b""
        while len(data) < count:
            data += await stream.receive_some(count - len(data))
        return data

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, server, 0)
            link = ServerLink("127.0.0.1", listeners[0].socket.getsockname()[1])
            port = await nursery.start(link.serve)
            link.hold_at(3000)
            card = await trio.open_tcp_stream("127.0.0.1", port)
            await card.send_all(b"?")
            await link.reached(3000)
            assert await read(card, 3000) == payload[:3000]
            with trio.move_on_after(0.2):
                await card.receive_some(1)
                raise AssertionError("a byte past the hold reached the card")
            link.corrupt_next()
            link.pace(40000.0)
            link.hold_at(None)
            rest = await read(card, len(payload) - 3000)
            assert rest != payload[3000:] and len(rest) == len(payload) - 3000
            assert sum(a != b for a, b in zip(rest, payload[3000:], strict=True)) == 1  # one byte, one bit
            await link.reached(len(payload))  # counted once the piece was handed on
            assert link.stats.corrupted == 1 and link.stats.to_card == len(payload)
            link.drop()
            assert await card.receive_some(1) == b""  # the card sees its connection closed
            assert link.stats.drops == 1
            nursery.cancel_scope.cancel()


def test_a_short_soak_from_the_command_line_passes(tmp_path: Path) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "bipsim", "soak", "--sessions", "3", "--seed", str(SEED), "--json"]
        + ["--keep", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert process.returncode == 0, (process.stdout[-3000:], process.stderr[-2000:])
    report = json.loads(process.stdout)
    assert report["passed"] and report["consistent"] and not report["leaks"]
    assert (
        report["sessions"] == 3 and report["completed"] == 2
    )  # the corrupted session's TLS failed, as it must
    assert report["faults_injected"] == {
        "none": 0,
        "line-drop": 1,
        "server-drop": 0,
        "corrupt": 1,
        "power-loss": 1,
        "slow-peer": 0,
    }
    assert {"soak", "ota", "ap", "cp"} <= set(report["resources"])
    assert (tmp_path / "session-0000" / "cp-boot2.jsonl").exists()  # the CP booted again after the power loss
