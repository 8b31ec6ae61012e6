"""A fleet of simulated cards against one OTA server, on every core and beyond one machine (docs/performance.md).

N cards (each a SimCard with its GP registry and OTA agent, as ota/loadgen.py makes them: the card's own TLS 1.2 PSK
client and the GlobalPlatform Amendment B POST loop) are split into K workers. A worker is a process running
`trio.run` over its share of the cards (ota/fleet_worker.py); an engine runs the workers: `local` as child processes
of this one, `dask` as tasks of a Dask distributed cluster (ota/fleet_dask.py). Whatever runs them, a worker speaks
the same small event protocol, and the sans-IO `FleetTally` below turns those events into the live progress and the
final report, so the report is the same whatever ran the fleet.

Worker events (JSON objects, one per line on a local worker's stdout):

    {"type": "started", "worker": W, "pid": P}                  the worker runs and starts its cards
    {"type": "sessions", "worker": W, "outcomes": [[S, C], ...]}  finished sessions: S seconds, C null or a cause
    {"type": "done", "worker": W, "cpu_s": C, "wall_s": T}       every card has finished: C CPU s in T s

A worker that ends without "done" died; the sessions it still owed are counted under the cause "worker died" and the
rest of the fleet goes on. Card identities (ICCID, PSK identity, PSK) are derived from the card's index in the whole
fleet, never from the worker, so the server keeps one record per card however the fleet is split.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from bipsim.errors import CliError
from bipsim.ota.loadgen import LoadCard, make_card, new_session, run_card
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.ota_agent import SeededRandom, card_random
from bipsim.uicc.profile import CardProfile, load_profile

Event = dict[str, Any]
Emit = Callable[[Event], None]

# failure causes of the report (docs/performance.md, "The report")
WORKER_DIED = "worker died"
SERVER_REFUSED = "server refused"
TIMEOUT = "session timed out"
TLS_FAILED = "tls failed"
CONNECTION_LOST = "connection lost"
BAD_ANSWER = "bad answer"
INTERNAL = "internal error"
INCOMPLETE = "incomplete"


@dataclass(frozen=True)
class CardIdentity:
    index: int
    iccid: str
    psk_identity: str
    psk: bytes


def card_identity(index: int, seed: int = 0) -> CardIdentity:
    """The identity of card `index` of a fleet: an ICCID of the 89 (telecom) 882 (international) range with the
    index in its digits (ITU-T E.118: at most 19 digits before the check digit), its own PSK identity and a key
    drawn from the seed, so a server given `fleet_keys` knows every card and two seeds give different keys."""
    if not 0 <= index < 10**11:
        raise ValueError(f"card index {index} out of range")
    body = f"89882{seed % 1000:03d}{index:011d}"
    psk = hashlib.sha256(f"bipsim-fleet:{seed}:{index}".encode()).digest()[:16]
    return CardIdentity(index, body + str(luhn_digit(body)), f"fleet-{seed}-{index}", psk)


def luhn_digit(digits: str) -> int:
    """The Luhn check digit ITU-T E.118 puts at the end of an ICCID."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return (10 - total % 10) % 10


def fleet_keys(cards: int, seed: int = 0) -> dict[str, bytes]:
    """PSK identity -> key for cards 0..cards-1: what the server must know (`bipsim ota-server --keys`)."""
    keys = {}
    for index in range(cards):
        identity = card_identity(index, seed)
        keys[identity.psk_identity] = identity.psk
    return keys


def keys_toml(keys: dict[str, bytes]) -> str:
    """The keys file `bipsim ota-server --keys` reads."""
    return "".join(f'"{identity}" = "{key.hex().upper()}"\n' for identity, key in keys.items())


def classify_failure(errors: list[str]) -> str:
    """The report's cause for a failed session, from the errors its agent logged (uicc/ota_agent.py)."""
    if not errors:
        return INCOMPLETE
    last = errors[-1]
    if all(e.startswith("connection lost: connect:") for e in errors):
        return SERVER_REFUSED  # the TCP connection itself was refused, every time
    if last.startswith("server answered "):
        status = last.removeprefix("server answered ").strip()
        return SERVER_REFUSED if status == "503" else f"http {status}"
    if last.startswith("TLS:"):
        return TLS_FAILED
    if last.startswith("connection lost"):
        return CONNECTION_LOST
    if last.startswith("internal:"):
        return INTERNAL
    return BAD_ANSWER


# --- the specification of one worker --------------------------------------------------------------------------


@dataclass
class WorkerSpec:
    """What one worker runs: cards first..first+count-1 of the fleet against host:port."""

    worker: int
    first: int
    count: int
    host: str
    port: int
    sessions: int | None = None  # sessions of this worker in all (None: as many as the duration allows)
    duration: float | None = None  # seconds from the worker's start; None: until `sessions` are done
    seed: int | None = None  # None: the cards draw their TLS randoms from os.urandom
    key_seed: int = 0
    tls: bool = True
    concurrency: int = 100  # sessions of this worker open at once
    session_timeout: float = 60.0
    flush: float = 0.0  # seconds between "sessions" events; 0: one event per session

    def sessions_of(self, offset: int) -> int | None:
        """Sessions card `first + offset` runs: the worker's total spread evenly, the first cards one more."""
        if self.sessions is None:
            return None
        base, extra = divmod(self.sessions, self.count) if self.count else (0, 0)
        return base + (1 if offset < extra else 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerSpec:
        return cls(**data)


def split(cards: int, workers: int) -> list[tuple[int, int]]:
    """(first, count) of each worker: contiguous ranges whose sizes differ by at most one."""
    base, extra = divmod(cards, workers)
    ranges, first = [], 0
    for worker in range(workers):
        count = base + (1 if worker < extra else 0)
        ranges.append((first, count))
        first += count
    return ranges


# --- the worker: trio over its cards --------------------------------------------------------------------------


async def run_worker(spec: WorkerSpec, emit: Emit) -> None:
    """Runs the worker's cards, each its sessions one after the other, at most `concurrency` sessions at once;
    emits the events of the module docstring. Never raises for a peer's fault: a session that fails is an
    outcome with its cause."""
    emit({"type": "started", "worker": spec.worker, "pid": os.getpid()})
    cpu, wall = time.thread_time(), time.monotonic()
    profile = load_profile().with_overrides(ota_host=spec.host, ota_port=spec.port, ota_tls=spec.tls)
    limiter = trio.CapacityLimiter(max(1, spec.concurrency))
    deadline = None if spec.duration is None else trio.current_time() + spec.duration
    pending: list[list[Any]] = []
    last_flush = trio.current_time()

    def flush(force: bool = False) -> None:
        nonlocal last_flush
        now = trio.current_time()
        if pending and (force or now - last_flush >= spec.flush):
            emit({"type": "sessions", "worker": spec.worker, "outcomes": list(pending)})
            pending.clear()
            last_flush = now

    async def card_task(offset: int) -> None:
        index = spec.first + offset
        total = spec.sessions_of(offset)
        load: LoadCard | None = None
        number = 0
        while total is None or number < total:
            if deadline is not None and trio.current_time() >= deadline:
                return
            async with limiter:
                if load is None:
                    load = _make_fleet_card(index, spec, profile)
                else:
                    new_session(load, random=_session_random(spec, index, number))
                started = time.perf_counter()
                cause = await one_session(load, spec)
                pending.append([round(time.perf_counter() - started, 6), cause])
            number += 1
            flush()

    async with trio.open_nursery() as nursery:
        for offset in range(spec.count):
            nursery.start_soon(card_task, offset)
    flush(force=True)
    cpu_s, wall_s = round(time.thread_time() - cpu, 3), round(time.monotonic() - wall, 3)
    emit({"type": "done", "worker": spec.worker, "cpu_s": cpu_s, "wall_s": wall_s})


def _session_random(spec: WorkerSpec, index: int, number: int) -> Callable[[int], bytes]:
    if spec.seed is None:
        return card_random("")
    return SeededRandom(f"{spec.seed}:{index}:{number}".encode())


def _make_fleet_card(index: int, spec: WorkerSpec, profile: CardProfile) -> LoadCard:
    identity = card_identity(index, spec.key_seed)
    return make_card(
        identity.iccid,
        identity=identity.psk_identity,
        psk=identity.psk,
        tls=spec.tls,
        profile=profile,
        random=_session_random(spec, index, 0),
    )


async def one_session(load: LoadCard, spec: WorkerSpec) -> str | None:
    """One admin session of a card: None when it completed (the server's 204), else the failure's cause."""
    with trio.move_on_after(spec.session_timeout) as scope:
        await run_card(load, spec.host, spec.port)
    if scope.cancelled_caught:
        return TIMEOUT
    if load.agent.log.finished:  # a fresh agent per session: finished means this session's 204
        return None
    return classify_failure(load.agent.log.errors)


def worker_main(spec: WorkerSpec, emit: Emit) -> None:
    """The worker as a plain function: what a local child process and a Dask task both call."""
    trio.run(run_worker, spec, emit)


# --- the coordinator's bookkeeping (sans-IO) ------------------------------------------------------------------


class Histogram:
    """Session latencies in logarithmic buckets 1 % wide: merged by adding, percentiles within 1 %, a few hundred
    buckets however many sessions (a fleet of millions reports its p99 from a few kilobytes)."""

    RATIO = 1.01

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()
        self.count = 0

    def add(self, seconds: float) -> None:
        self.buckets[self._bucket(seconds)] += 1
        self.count += 1

    def _bucket(self, seconds: float) -> int:
        return math.floor(math.log(max(seconds, 1e-6)) / math.log(self.RATIO))

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0 < q <= 100) in seconds: the upper edge of the bucket holding it."""
        if not self.count:
            return None
        rank = max(1, math.ceil(self.count * q / 100))
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                return float(self.RATIO ** (bucket + 1))
        raise AssertionError("unreachable: the ranks add up to count")


@dataclass
class WorkerTally:
    spec: WorkerSpec
    pid: int | None = None
    started: bool = False
    done: bool = False
    died: str | None = None  # why, when it died
    ok: int = 0
    failed: int = 0
    cpu_s: float = 0.0  # CPU seconds of the worker's thread, as it reported at its end
    wall_s: float = 0.0  # seconds from its start to its end, by its own clock


@dataclass
class FleetReport:
    """The final report (`bipsim fleet --json` prints `to_dict()`)."""

    engine: str
    cards: int
    workers: int
    elapsed_s: float
    sessions: int  # sessions run to an end (completed or failed), plus those a dead worker still owed
    completed: int
    failed: int
    failures: dict[str, int]
    workers_died: int
    sessions_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    workers_cpu_s: float = 0.0  # the workers' CPU seconds (of those that finished)
    workers_wall_s: float = 0.0  # the longest worker's run, start to end by its own clock
    server: dict[str, Any] = field(default_factory=dict)  # the server's own figures when the fleet ran it
    stopped: bool = False  # ended early on purpose: the sessions that ended until then

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.workers_died == 0 and not self.stopped

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def lines(self) -> list[str]:
        """The report for people."""
        out = [
            f"fleet: {self.cards} cards in {self.workers} workers ({self.engine}), {self.elapsed_s:.2f} s",
            f"sessions: {self.sessions} ({self.completed} completed, {self.failed} failed), "
            f"{self.sessions_per_s:.1f} completed/s",
            f"latency: p50 {_ms(self.p50_ms)}, p99 {_ms(self.p99_ms)}",
        ]
        if self.stopped:
            out.append("stopped before the end (SIGINT/SIGTERM): the sessions that ended until then")
        if self.workers_died:
            out.append(f"workers died: {self.workers_died}")
        for cause, number in sorted(self.failures.items(), key=lambda item: (-item[1], item[0])):
            out.append(f"failed: {number} x {cause}")
        if self.server:
            out.append("server: " + ", ".join(f"{k} {v}" for k, v in self.server.items()))
        return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


class FleetTally:
    """Worker events in, progress and the report out; no I/O, no clock of its own (the caller passes times)."""

    def __init__(self, specs: list[WorkerSpec], *, engine: str, cards: int) -> None:
        self.engine = engine
        self.cards = cards
        self.workers = {spec.worker: WorkerTally(spec) for spec in specs}
        self.histogram = Histogram()
        self.failures: Counter[str] = Counter()
        self.stopped = False  # the run was ended early on purpose (`bipsim fleet` on SIGINT/SIGTERM)

    def feed(self, event: Event) -> None:
        """One worker event; an event of no known worker or type is ignored (a worker's stray line)."""
        tally = self.workers.get(event.get("worker", -1))
        if tally is None:
            return
        kind = event.get("type")
        if kind == "started":
            tally.started = True
            tally.pid = event.get("pid")
        elif kind == "sessions":
            for seconds, cause in event.get("outcomes", []):
                if cause is None:
                    tally.ok += 1
                    self.histogram.add(float(seconds))
                else:
                    tally.failed += 1
                    self.failures[str(cause)] += 1
        elif kind == "done":
            tally.done = True
            tally.cpu_s = float(event.get("cpu_s", 0.0))
            tally.wall_s = float(event.get("wall_s", 0.0))

    def exited(self, worker: int, why: str | None) -> None:
        """The worker is gone: cleanly after "done", else dead (`why` says how), its owed sessions failed."""
        tally = self.workers[worker]
        if (tally.done and why is None) or self.stopped:
            return
        tally.died = why or "ended without finishing"
        owed = tally.spec.sessions - tally.ok - tally.failed if tally.spec.sessions is not None else 0
        # in a timed run a dead worker owed no fixed number: each of its cards lost the session it was running
        owed = (
            owed if tally.spec.sessions is not None else max(1, min(tally.spec.count, tally.spec.concurrency))
        )
        self.failures[WORKER_DIED] += max(0, owed)

    @property
    def completed(self) -> int:
        return sum(t.ok for t in self.workers.values())

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def progress(self, elapsed: float, rate: float) -> str:
        alive = sum(1 for t in self.workers.values() if t.started and not t.done and t.died is None)
        died = sum(1 for t in self.workers.values() if t.died is not None)
        p99 = self.histogram.percentile(99)
        return (
            f"[{elapsed:6.1f} s] completed {self.completed}  failed {self.failed}  {rate:7.1f}/s  "
            f"p99 {_ms(None if p99 is None else p99 * 1000)}  workers {alive} running"
            + (f", {died} died" if died else "")
        )

    def report(
        self, elapsed: float, server: dict[str, Any] | None = None, running: float | None = None
    ) -> FleetReport:
        """The report; `running` is the time the workers ran (sessions/s is over it), `elapsed` the whole run."""
        running = elapsed if running is None else running
        p50, p99 = self.histogram.percentile(50), self.histogram.percentile(99)
        return FleetReport(
            engine=self.engine,
            cards=self.cards,
            workers=len(self.workers),
            elapsed_s=round(elapsed, 3),
            sessions=self.completed + self.failed,
            completed=self.completed,
            failed=self.failed,
            failures=dict(self.failures),
            workers_died=sum(1 for t in self.workers.values() if t.died is not None),
            sessions_per_s=round(self.completed / running, 1) if running > 0 else 0.0,
            p50_ms=None if p50 is None else round(p50 * 1000, 2),
            p99_ms=None if p99 is None else round(p99 * 1000, 2),
            workers_cpu_s=round(sum(t.cpu_s for t in self.workers.values()), 3),
            workers_wall_s=round(max((t.wall_s for t in self.workers.values()), default=0.0), 3),
            server=server or {},
            stopped=self.stopped,
        )


# --- engines: who runs the workers ----------------------------------------------------------------------------

Exited = Callable[[int, str | None], None]


class Engine(Protocol):
    """Runs every worker to its end; feeds their events to `sink` and calls `exited` once per worker (None when it
    ended cleanly, else why it died). Returns when every worker has exited."""

    name: str

    async def run(self, specs: list[WorkerSpec], sink: Emit, exited: Exited) -> None: ...


class LocalEngine:
    """Each worker a child process of this one (ota/fleet_worker.py), its events read from its stdout. A worker
    that dies (killed, crashed) is reported by its exit status, with the last line it wrote on stderr."""

    name = "local"

    async def run(self, specs: list[WorkerSpec], sink: Emit, exited: Exited) -> None:
        async with trio.open_nursery() as nursery:
            for spec in specs:
                nursery.start_soon(self._one, spec, sink, exited)

    async def _one(self, spec: WorkerSpec, sink: Emit, exited: Exited) -> None:
        command = [sys.executable, "-m", "bipsim.ota.fleet_worker", json.dumps(spec.to_dict())]
        process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        errors: list[bytes] = []
        try:
            async with trio.open_nursery() as nursery:
                assert process.stderr is not None and process.stdout is not None
                nursery.start_soon(_collect, process.stderr, errors)
                buffer = b""
                while True:
                    chunk = await process.stdout.receive_some(65536)
                    if not chunk:
                        break
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        event = _parse_event(line, spec.worker)
                        if event is not None:
                            sink(event)
            code = await process.wait()
        finally:
            if process.returncode is None:  # cancelled (Ctrl-C, SIGTERM): the worker goes with us
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
        exited(spec.worker, None if code == 0 else _why(code, b"".join(errors)))


async def _collect(stream: trio.abc.ReceiveStream, into: list[bytes]) -> None:
    while chunk := await stream.receive_some(65536):
        into.append(bytes(chunk))
        if sum(len(c) for c in into) > 65536:  # only the last lines matter
            del into[: len(into) // 2]


def _parse_event(line: bytes, worker: int) -> Event | None:
    """A worker's line as an event of that worker; a line that is not one is ignored (never trusted for another
    worker's number)."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    event["worker"] = worker
    return event


def _why(code: int, stderr: bytes) -> str:
    if code < 0:
        try:
            what = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            what = f"killed by signal {-code}"
    else:
        what = f"exit status {code}"
    last = stderr.decode("utf-8", "replace").strip().splitlines()
    return what + (f": {last[-1]}" if last else "")


# --- the fleet run --------------------------------------------------------------------------------------------


@dataclass
class FleetConfig:
    cards: int
    workers: int = 1
    server: tuple[str, int] | None = None  # None: the fleet starts its own `bipsim ota-server`
    sessions: int | None = None  # in all; None with no duration: one per card
    duration: float | None = None
    seed: int | None = None
    key_seed: int = 0
    tls: bool = True
    concurrency: int = 100  # per worker
    session_timeout: float = 60.0
    server_workers: int = 1
    server_results: str | None = None
    campaign: str | None = None
    flush: float = 0.0

    def specs(self, host: str, port: int) -> list[WorkerSpec]:
        total = self.sessions if self.sessions is not None or self.duration is not None else self.cards
        out = []
        for worker, (first, count) in enumerate(split(self.cards, self.workers)):
            if count == 0:
                continue
            sessions = None
            if total is not None:  # each card of the fleet its share, the first cards one more
                base, extra = divmod(total, self.cards)
                sessions = base * count + max(0, min(extra, first + count) - first)
            out.append(
                WorkerSpec(
                    worker=worker,
                    first=first,
                    count=count,
                    host=host,
                    port=port,
                    sessions=sessions,
                    duration=self.duration,
                    seed=self.seed,
                    key_seed=self.key_seed,
                    tls=self.tls,
                    concurrency=self.concurrency,
                    session_timeout=self.session_timeout,
                    flush=self.flush,
                )
            )
        return out


SERVER_START_TIMEOUT = 30.0


@asynccontextmanager
async def own_server(config: FleetConfig, summary: dict[str, Any]) -> AsyncIterator[tuple[str, int]]:
    """`bipsim ota-server` on 127.0.0.1 (any free port) knowing every card's key, for the fleet's run; on leaving,
    it is stopped (SIGTERM) and `summary` gets the figures it printed on its way out."""
    with tempfile.TemporaryDirectory(prefix="bipsim-fleet-") as directory:
        keys = Path(directory) / "keys.toml"
        keys.write_text(keys_toml(fleet_keys(config.cards, config.key_seed)), encoding="utf-8")
        command = [sys.executable, "-m", "bipsim", "ota-server", "--listen", "127.0.0.1:0"]
        command += ["--keys", str(keys), "--workers", str(config.server_workers)]
        if not config.tls:
            command.append("--no-tls")
        if config.server_results:
            command += ["--results", config.server_results]
        if config.campaign:
            command += ["--script", config.campaign]
        # its own session: a terminal's Ctrl-C reaches the fleet, which stops the workers first, then the server
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        assert process.stdout is not None and process.stderr is not None
        lines = _Lines(process.stdout)
        try:
            address = None
            with trio.move_on_after(SERVER_START_TIMEOUT):
                while (line := await lines.next()) is not None:
                    if line.startswith("listening on "):
                        address = line.split()[2]
                        break
            if address is None:
                errors = (await process.stderr.receive_some(65536)).decode("utf-8", "replace").strip()
                raise CliError(f"the fleet's OTA server did not start: {errors or 'no answer'}")
            host, _, port = address.rpartition(":")
            yield host, int(port)
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                    with trio.move_on_after(15):
                        while (line := await lines.next()) is not None:
                            if line.startswith("summary: "):
                                summary.update(json.loads(line.removeprefix("summary: ")))
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()


class _Lines:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> str | None:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("utf-8", "replace").strip()


async def run_fleet(
    config: FleetConfig,
    engine: Engine,
    *,
    on_event: Emit | None = None,
    progress: Callable[[str], None] | None = None,
    stop: trio.Event | None = None,
    tracer: Tracer = NULL_TRACER,
) -> FleetReport:
    """Runs the fleet on `engine` against config.server (or a server of its own) and returns the report.
    `on_event` sees every worker event, and {"type": "exited", "worker": W, "why": ...} for each worker;
    `progress` gets a line a second. Setting `stop` ends the run early: the workers are stopped, and the report
    (marked `stopped`) holds the sessions that ended until then. `tracer` gets an event per worker started and
    ended (app.error for one that died) and one for the report."""
    summary: dict[str, Any] = {}
    async with AsyncExitStack() as stack:
        if config.server is None:
            host, port = await stack.enter_async_context(own_server(config, summary))
        else:
            host, port = config.server
        specs = config.specs(host, port)
        tally = FleetTally(specs, engine=engine.name, cards=config.cards)

        first_start: list[float] = []

        def sink(event: Event) -> None:
            if event.get("type") == "started":
                if not first_start:
                    first_start.append(trio.current_time())
                _trace_started(tracer, tally, event)
            tally.feed(event)
            if on_event is not None:
                on_event(event)

        def exited(worker: int, why: str | None) -> None:
            tally.exited(worker, why)
            _trace_exited(tracer, tally, worker, why)
            if on_event is not None:
                on_event({"type": "exited", "worker": worker, "why": why})

        start = trio.current_time()

        async def report_progress() -> None:
            assert progress is not None
            last = 0
            while True:
                await trio.sleep(1)
                completed = tally.completed
                progress(tally.progress(trio.current_time() - start, completed - last))
                last = completed

        async with trio.open_nursery() as nursery:
            if progress is not None:
                nursery.start_soon(report_progress)
            with trio.CancelScope() as run_scope:
                if stop is not None:

                    async def stopper() -> None:
                        assert stop is not None
                        await stop.wait()
                        tally.stopped = True  # the workers ended now are stopped, not dead
                        run_scope.cancel()

                    nursery.start_soon(stopper)
                await engine.run(specs, sink, exited)
            nursery.cancel_scope.cancel()
        end = trio.current_time()
    # the rate counts from the first worker's start: the time to start processes is not the fleet's pace
    report = tally.report(
        end - start, server=summary, running=end - (first_start[0] if first_start else start)
    )
    tracer.emit(
        Actor.UICC,
        Actor.OTA,
        Layer.APP,
        f"fleet report: {report.completed} of {report.sessions} sessions completed, {report.failed} failed",
        error=not report.ok,
        kind=Kind.APP_EVENT,
        fields={
            k: v
            for k, v in report.to_dict().items()
            if k in ("sessions", "completed", "failed", "failures", "workers_died", "stopped")
        },
    )
    return report


def _trace_started(tracer: Tracer, tally: FleetTally, event: Event) -> None:
    worker = tally.workers.get(event.get("worker", -1))
    if worker is None:
        return
    tracer.emit(
        Actor.UICC,
        Actor.OTA,
        Layer.APP,
        f"fleet worker {worker.spec.worker} started (pid {event.get('pid')}): cards {worker.spec.first}.."
        f"{worker.spec.first + worker.spec.count - 1}",
        kind=Kind.APP_EVENT,
        fields={"worker": worker.spec.worker, "pid": event.get("pid"), "cards": worker.spec.count},
    )


def _trace_exited(tracer: Tracer, tally: FleetTally, worker: int, why: str | None) -> None:
    state = tally.workers[worker]
    if state.died is None:
        tracer.emit(
            Actor.UICC,
            Actor.OTA,
            Layer.APP,
            f"fleet worker {worker} ended: {state.ok} sessions completed, {state.failed} failed",
            kind=Kind.APP_EVENT,
            fields={"worker": worker, "completed": state.ok, "failed": state.failed},
        )
        return
    tracer.emit(
        Actor.UICC,
        Actor.OTA,
        Layer.APP,
        f"fleet worker {worker} died: {state.died}",
        error=True,
        kind=Kind.APP_ERROR,
        fields={"where": "fleet worker", "error": state.died, "worker": worker},
    )
