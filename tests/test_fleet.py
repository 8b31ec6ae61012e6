"""`bipsim fleet` (ota/fleet.py) and `bipsim ota-server --workers K` (ota/server_pool.py): a small fleet against
the server agrees with the server's own log, a worker killed mid-run and a server that refuses are counted by cause,
the Dask engine gives the same report, and a card keeps one record across the pool's workers."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from bipsim.ota.admin import AdminServer, Answer
from bipsim.ota.campaign import Campaign
from bipsim.ota.fleet import (
    SERVER_REFUSED,
    WORKER_DIED,
    Engine,
    FleetConfig,
    FleetTally,
    Histogram,
    LocalEngine,
    card_identity,
    classify_failure,
    fleet_keys,
    keys_toml,
    luhn_digit,
    run_fleet,
    split,
)
from bipsim.ota.http_connection import HttpRequest
from bipsim.ota.server import OtaServer
from bipsim.ota.server_pool import FrameReader, card_key, encode_frame, owner_of
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer
from bipsim.uicc.http_limits import LIMITS
from tests.conftest import missing

BIPSIM = [sys.executable, "-m", "bipsim"]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BIPSIM, *args], capture_output=True, text=True, timeout=timeout)


# --- the sans-IO parts ------------------------------------------------------------------------------------------


def test_identities_are_distinct_and_valid_iccids() -> None:
    cards = [card_identity(i) for i in range(1000)]
    assert len({c.iccid for c in cards}) == 1000
    assert len({c.psk_identity for c in cards}) == 1000
    assert len({c.psk for c in cards}) == 1000
    for card in cards[:50]:
        assert len(card.iccid) == 20 and card.iccid.startswith("89")
        assert luhn_digit(card.iccid[:-1]) == int(card.iccid[-1])
    # the known Luhn example of ISO/IEC 7812 (7992739871 -> 3)
    assert luhn_digit("7992739871") == 3
    assert card_identity(5, seed=1).psk != card_identity(5, seed=0).psk
    assert fleet_keys(3) == {c.psk_identity: c.psk for c in cards[:3]}


def test_split_and_session_shares_add_up() -> None:
    assert split(10, 3) == [(0, 4), (4, 3), (7, 3)]
    config = FleetConfig(cards=7, workers=3, sessions=23)
    specs = config.specs("127.0.0.1", 1)
    assert [(s.first, s.count) for s in specs] == [(0, 3), (3, 2), (5, 2)]
    assert sum(s.sessions or 0 for s in specs) == 23
    assert all(sum(s.sessions_of(i) or 0 for i in range(s.count)) == s.sessions for s in specs)
    assert sum(s.sessions or 0 for s in FleetConfig(cards=5, workers=2).specs("h", 1)) == 5  # one per card


def test_failure_causes() -> None:
    assert classify_failure(["connection lost: connect: refused"] * 4) == SERVER_REFUSED
    assert classify_failure(["server answered 503"]) == SERVER_REFUSED
    assert classify_failure(["server answered 404"]) == "http 404"
    assert classify_failure(["TLS: alert 115"]) == "tls failed"
    assert classify_failure(["connection lost: closed by the server"] * 4) == "connection lost"
    assert classify_failure(["HTTP: bad header"]) == "bad answer"


def test_histogram_percentiles_within_one_percent() -> None:
    histogram = Histogram()
    for ms in range(1, 1001):
        histogram.add(ms / 1000)
    p50, p99 = histogram.percentile(50), histogram.percentile(99)
    assert p50 is not None and p99 is not None
    assert 0.500 <= p50 <= 0.500 * 1.011
    assert 0.990 <= p99 <= 0.990 * 1.011
    assert Histogram().percentile(99) is None


def test_tally_counts_what_a_dead_worker_owed() -> None:
    specs = FleetConfig(cards=4, workers=2, sessions=8).specs("h", 1)
    tally = FleetTally(specs, engine="local", cards=4)
    tally.feed({"type": "started", "worker": 0, "pid": 1})
    tally.feed({"type": "sessions", "worker": 0, "outcomes": [[0.01, None]] * 3 + [[0.02, "tls failed"]]})
    tally.feed({"type": "done", "worker": 0})
    tally.exited(0, None)
    tally.feed({"type": "started", "worker": 1, "pid": 2})
    tally.feed({"type": "sessions", "worker": 1, "outcomes": [[0.01, None]]})
    tally.feed({"type": "sessions", "worker": 7, "outcomes": [[0.01, None]]})  # no such worker: ignored
    tally.exited(1, "killed by SIGKILL")
    report = tally.report(2.0)
    assert (report.completed, report.failed, report.sessions) == (4, 4, 8)
    assert report.failures == {"tls failed": 1, WORKER_DIED: 3}
    assert report.workers_died == 1 and not report.ok
    assert report.sessions_per_s == 2.0


def test_pool_frames_and_owners() -> None:
    reader = FrameReader()
    data = encode_frame({"id": 1}) + encode_frame({"id": 2, "body": "x" * 100})
    assert reader.feed(data[:7]) == []
    assert [m["id"] for m in reader.feed(data[7:])] == [1, 2]
    with pytest.raises(ValueError):
        FrameReader().feed((2**31).to_bytes(4, "big"))
    request = HttpRequest("POST", "/", {"x-admin-from": "//se-id/iccid/8988"})
    assert card_key(request) == "iccid:8988"
    assert card_key(HttpRequest("POST", "/", {"x-admin-from": "nonsense"})) is None
    owners = {owner_of(f"iccid:{card_identity(i).iccid}", 2) for i in range(20)}
    assert owners == {0, 1}
    assert owner_of("iccid:8988", 3) == owner_of("iccid:8988", 3)


# --- fleets against a server --------------------------------------------------------------------------------------


def test_small_fleet_agrees_with_the_servers_log(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    trace = tmp_path / "fleet.jsonl"
    done = run_cli(
        "fleet", "--cards", "20", "--workers", "2", "--json", "--results", str(results), "--trace", str(trace)
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert sorted(e["fields"]["worker"] for e in events if "pid" in e.get("fields", {})) == [0, 1]  # started
    assert events[-1]["kind"] == "app.event" and events[-1]["fields"]["completed"] == 20
    report = json.loads(done.stdout)
    assert (report["cards"], report["workers"], report["engine"]) == (20, 2, "local")
    assert (report["sessions"], report["completed"], report["failed"], report["failures"]) == (20, 20, 0, {})
    assert report["ok"] and report["sessions_per_s"] > 0 and 0 < report["p50_ms"] <= report["p99_ms"]
    # the server's own figures and its per-card log: one record per card, every card's plan done once
    assert report["server"]["cards"] == 20 and report["server"]["sessions"] == 20
    log = json.loads(results.read_text())
    assert set(log) == {f"iccid:{card_identity(i).iccid}" for i in range(20)}
    assert all(entry["completed"] and entry["sessions"] == 1 and entry["all_ok"] for entry in log.values())
    assert sum(len(entry["scripts"]) for entry in log.values()) == 20 * 4  # the built-in campaign's 4 scripts


class HoldingServer(OtaServer):
    """A server that never answers the cards in `held` (their sessions hang until the test ends)."""

    def __init__(self, held: set[str], **kwargs: Any) -> None:
        super().__init__(AdminServer(Campaign.load()), **kwargs)
        self.held = held
        self.holding = trio.Event()

    async def answer(self, request: HttpRequest, identity: str | None) -> Answer:
        if card_key(request) in self.held:
            self.holding.set()
            await trio.sleep_forever()
        return await super().answer(request, identity)


def need_distributed() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:  # the 'fleet' extra; `make test` installs it with dev, so CI never skips this
        missing("distributed is not installed (the 'fleet' extra: pip install -e '.[fleet]')")


def engine_named(name: str) -> Engine:
    if name == "dask":
        need_distributed()
        from bipsim.ota.fleet_dask import DaskEngine

        return DaskEngine(scheduler=None, workers=2)
    return LocalEngine()


@pytest.mark.parametrize("engine", ["local", "dask"])
async def test_a_killed_worker_is_counted_and_the_rest_finishes(engine: str) -> None:
    """The same fault and the same report whatever runs the workers: a Dask worker process SIGKILLed is the
    task's KilledWorker, counted as a dead worker (its task is not run again)."""
    config = FleetConfig(cards=20, workers=2, flush=0.2 if engine == "dask" else 0.0)
    second = config.specs("h", 1)[1]
    held = {f"iccid:{card_identity(i).iccid}" for i in range(second.first, second.first + second.count)}
    server = HoldingServer(held, keys=fleet_keys(20))
    pids: dict[int, int] = {}
    exits: dict[int, Any] = {}
    second_started = trio.Event()

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "started":
            pids[event["worker"]] = event["pid"]
            if event["worker"] == 1:
                second_started.set()
        if event["type"] == "exited":
            exits[event["worker"]] = event["why"]

    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        config.server = ("127.0.0.1", port)

        async def killer() -> None:
            await second_started.wait()  # worker 1 runs (its pid is known)
            await server.holding.wait()  # and one of its cards is mid-session at the server
            os.kill(pids[1], signal.SIGKILL)

        nursery.start_soon(killer)
        tracer = Tracer(keep=True)
        with trio.fail_after(170):
            report = await run_fleet(config, engine_named(engine), on_event=on_event, tracer=tracer)
        nursery.cancel_scope.cancel()
    died = [e for e in tracer.events if e.kind == Kind.APP_ERROR]
    assert [(e.fields or {}).get("worker") for e in died] == [1] and died[0].error
    assert (died[0].fields or {})["where"] == "fleet worker"
    last = tracer.events[-1]
    assert last.kind == Kind.APP_EVENT and (last.fields or {})["failures"] == {WORKER_DIED: 10}
    assert exits[0] is None and exits[1] is not None
    assert ("SIGKILL" if engine == "local" else "KilledWorker") in exits[1]
    assert report.workers_died == 1 and not report.ok
    assert report.completed == 10  # worker 0's cards, every one
    assert report.failures == {WORKER_DIED: 10}
    assert report.sessions == 20 and report.engine == engine
    # the server's own records agree: worker 0's cards each ran their plan to its end (with Dask too: this is
    # the suite's one Dask fleet, its workers Dask's processes)
    first = {f"iccid:{card_identity(i).iccid}" for i in range(10)}
    done = {key for key, plan in server.admin.cards.items() if plan.completed}
    assert first <= done and not done & held


def free_port_nobody_listens_on() -> tuple[socket.socket, int]:
    """A port bound and never listened on: connections to it are refused, and no other test can take it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


def test_a_refusing_server_is_counted_by_cause_and_the_exit_is_nonzero() -> None:
    sock, port = free_port_nobody_listens_on()
    with sock:
        done = run_cli("fleet", "--cards", "4", "--workers", "2", "--server", f"127.0.0.1:{port}", "--json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["failures"] == {SERVER_REFUSED: 4} and report["completed"] == 0 and not report["ok"]
    text = run_cli("fleet", "--cards", "2", "--workers", "1", "--server", f"127.0.0.1:{port}", "--quiet")
    assert text.returncode == 1 and "failed: 2 x server refused" in text.stdout


async def test_a_server_over_capacity_is_counted_as_refused() -> None:
    from dataclasses import replace

    admin = AdminServer(Campaign.load(), limits=replace(LIMITS, connections=0))  # every connection gets 503
    server = OtaServer(admin, keys=fleet_keys(6))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        config = FleetConfig(cards=6, workers=2, server=("127.0.0.1", port))
        with trio.fail_after(120):
            report = await run_fleet(config, LocalEngine())
        nursery.cancel_scope.cancel()
    assert report.failures == {SERVER_REFUSED: 6} and report.completed == 0
    assert server.refused == 6


def test_pool_server_keeps_one_record_per_card(tmp_path: Path) -> None:
    """Three sessions per card against `ota-server --workers 2`: the kernel spreads the connections over both
    workers, and each card still has one record (its plan run once, three sessions) at its owner."""
    keys, results = tmp_path / "keys.toml", tmp_path / "results.json"
    assert run_cli("fleet", "--cards", "12", "--export-keys", str(keys)).returncode == 0
    server = subprocess.Popen(
        [*BIPSIM, "ota-server", "--listen", "127.0.0.1:0", "--workers", "2", "--keys", str(keys)]
        + ["--results", str(results)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("listening on ") and "2 workers" in line, line
        address = line.split()[2]
        done = run_cli(
            "fleet", "--cards", "12", "--workers", "2", "--sessions", "36", "--server", address, "--json"
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["completed"] == 36
    finally:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=60)
    assert server.returncode == 0
    summary = json.loads(
        next(x for x in out.splitlines() if x.startswith("summary: ")).removeprefix("summary: ")
    )
    assert (summary["cards"], summary["completed"], summary["sessions"]) == (12, 12, 36)
    assert summary["forwarded"] > 0  # requests did land on the worker not owning their card
    log = json.loads(results.read_text())
    assert len(log) == 12
    assert all(e["completed"] and e["sessions"] == 3 and len(e["scripts"]) == 4 for e in log.values())
    assert {Path(p).name for p in os.listdir(tmp_path)} >= {"results.w0.json", "results.w1.json"}


def test_fleet_help_and_bad_options() -> None:
    help_text = run_cli("fleet", "--help").stdout
    for option in ("--cards", "--workers", "--server", "--duration", "--sessions", "--seed", "--engine"):
        assert option in help_text
    bad = run_cli("fleet", "--cards", "2", "--sessions", "4", "--duration", "1")
    assert bad.returncode != 0 and "exclude" in bad.stderr and "Traceback" not in bad.stderr
    assert "--workers" in run_cli("ota-server", "--help").stdout


def test_a_server_that_cannot_start_is_one_line(tmp_path: Path) -> None:
    campaign = tmp_path / "bad.toml"
    campaign.write_text("not toml [[[\n")
    done = run_cli("fleet", "--cards", "2", "--workers", "1", "--script", str(campaign), "--quiet")
    assert done.returncode == 1 and "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert "did not start" in done.stderr and "bad.toml" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def children_of(pid: int) -> list[int]:
    """The child processes of `pid` (trio starts them from a worker thread: every thread's children count)."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return sorted(int(child) for task in tasks for child in (task / "children").read_text().split())


def test_pool_restarts_a_dead_worker_and_serves_on(tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(keys_toml(fleet_keys(8)))  # what `fleet --export-keys` writes (run by the test above)
    server = subprocess.Popen(
        [*BIPSIM, "ota-server", "--listen", "127.0.0.1:0", "--workers", "2", "--keys", str(keys)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stderr is not None
        line = server.stdout.readline()
        assert line.startswith("listening on "), line
        workers = children_of(server.pid)
        assert len(workers) == 2  # both listen (the line above comes once they do)
        os.kill(workers[0], signal.SIGKILL)
        restarted = server.stderr.readline()  # the parent says so once the worker is started again
        assert "restarted" in restarted, restarted
        done = run_cli("fleet", "--cards", "8", "--workers", "1", "--server", line.split()[2], "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["completed"] == 8
    finally:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=60)
    summary = json.loads(
        next(x for x in out.splitlines() if x.startswith("summary: ")).removeprefix("summary: ")
    )
    assert summary["restarts"] == 1 and summary["cards"] == 8 and summary["completed"] == 8


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ota_server_on_a_port_in_use_is_one_line(workers: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli("ota-server", "--listen", f"127.0.0.1:{port}", "--workers", workers, timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"bipsim: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def test_sigint_stops_the_fleet_and_still_reports() -> None:
    fleet = subprocess.Popen(
        [*BIPSIM, "fleet", "--cards", "10", "--workers", "2", "--duration", "150", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert fleet.stderr is not None
        for line in fleet.stderr:  # the progress lines: wait until sessions have completed
            match = re.search(r"completed (\d+)", line)
            if match and int(match.group(1)) > 0:
                break
        fleet.send_signal(signal.SIGINT)
        out, _ = fleet.communicate(timeout=60)
    finally:
        if fleet.poll() is None:
            fleet.kill()
    assert fleet.returncode == 130
    report = json.loads(out)
    assert report["stopped"] and not report["ok"] and report["completed"] > 0
    assert report["workers_died"] == 0 and WORKER_DIED not in report["failures"]
    assert report["server"]["sessions"] >= report["completed"]  # the own server stopped after the workers
