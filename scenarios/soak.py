"""The soak run (`bipsim soak`): many OTA sessions in a row, each with a fault drawn from a seed, and one report.

Each session is a whole scenario run (scenarios/harness.py: OTA server, CP with its card, AP, on a pty pair) of an
applet download of a random size, with the card's connections going through the harness's ServerLink. Its fault
lands at a random offset of the server's stream, inside the load script: the link holds the server's bytes there,
the hook waits for the event that proves the card is mid-download (a Data Available envelope), injects the fault,
and releases the bytes. So every fault lands where the plan says, on a fast machine or a loaded one, and the same
seed gives the same plan. The faults (docs/development.md, "Fault scenarios and the soak run"):

- line-drop: the serial line goes away and comes back (the pty pair is made again);
- server-drop: every connection to the server is closed at once;
- corrupt: one bit of the server's next bytes is flipped (TLS rejects the record: the card's session fails, as
  TLS 1.2 requires, and its state must stay consistent);
- power-loss: the CP and its card are killed with SIGKILL and booted again on the card's saved state;
- slow-peer: the server's bytes come at 2 000 bytes/s from then on;
- none: the bytes are held and released, nothing else.

After each session the card's saved state is checked against the server's results log: every script the server
logged as answered is applied on the card (EF_SPN written, load file present, applet installed), each script is
logged once and answered 90 00 (a script applied twice fails: the load file or applet is already there), a completed
campaign is all there, and the card holds nothing the server did not log. The resident memory and open file
descriptors of every process (the soak's own, the server, the AP and the CP) are sampled from /proc.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import trio

from bipsim.scenarios.campaigns import APPLICATION, LOAD_FILE, SPN_DATA, applet_download
from bipsim.scenarios.faults import DATA_AVAILABLE
from bipsim.scenarios.harness import Harness, HarnessError, RunConfig, RunResult


class Fault(StrEnum):
    NONE = "none"
    LINE_DROP = "line-drop"
    SERVER_DROP = "server-drop"
    CORRUPT = "corrupt"
    POWER_LOSS = "power-loss"
    SLOW_PEER = "slow-peer"


# faults the card recovers from: its campaign must complete anyway (a corrupted TLS record ends the session)
RECOVERABLE = frozenset(Fault) - {Fault.CORRUPT}
SLOW_RATE = 2000.0  # bytes/s of a slow peer
SPN_PATH = "3F00/7FF0/6F46"  # EF_SPN under the USIM ADF, as the card's state file names it
# where a fault may land: past the TLS handshake and the EF_SPN script (about 1 500 bytes), inside the load script
FIRST_OFFSET = 3000
# leak tolerance, from the first session's processes to the last's, and for the soak's own process
FD_TOLERANCE = 4
RSS_TOLERANCE_KIB = 32 * 1024


@dataclass(frozen=True)
class SessionPlan:
    index: int
    fault: Fault
    offset: int  # bytes of the server's stream forwarded before the fault lands
    size: int  # bytes of the applet's load file
    bearer: str  # own-stack (embodiment 1) or ap-proxy (embodiment 2)


def plan_session(seed: int, index: int) -> SessionPlan:
    """Session `index` of the soak with `seed`: the same pair gives the same session, whatever ran before."""
    rng = random.Random(f"bipsim-soak:{seed}:{index}")
    size = rng.randrange(8000, 16001, 100)
    fault = rng.choice(list(Fault))
    offset = rng.randrange(FIRST_OFFSET, FIRST_OFFSET + size // 2)
    bearer = rng.choice(["ap-proxy", "own-stack"])
    return SessionPlan(index, fault, offset, size, bearer)


@dataclass
class Sample:
    rss_kib: int
    fds: int


def sample(pid: int) -> Sample | None:
    """The resident set size and the open file descriptors of process `pid`, or None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), None)
    return Sample(rss, fds) if rss is not None else None  # a zombie has no memory left to count


@dataclass
class Usage:
    """A process's first and last samples."""

    start: Sample
    end: Sample


class Sampler:
    """Samples every process of a session every `interval` seconds from the card's first connection until the CP
    ended; keeps each one's first and last sample (the CP's last when the card's last connection closed, before the
    CP shut down). A CP booted again after a power loss is sampled afresh."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.pids: dict[str, int] = {}
        self.usage: dict[str, Usage] = {}
        self.started = False
        self._cp_idle: Sample | None = None

    def add(self, name: str, pid: int) -> None:
        self.pids[name] = pid
        self.usage.pop(name, None)
        if name == "cp":
            self._cp_idle = None
        self.take()

    def mark_idle(self) -> None:
        """The card's connections are all closed: the CP's sample now is its end, unless the card connects again
        (a resumed session); what it samples while shutting down after its session is not its steady state."""
        now = sample(self.pids["cp"]) if self.started and "cp" in self.pids else None
        if now is not None:
            self._cp_idle = now

    def mark_end(self) -> None:
        """The CP ended: a last sample of the processes still up (the server and the AP, their session over), and
        none after (their shutdown is not their steady state either)."""
        self.take()
        if self._cp_idle is not None and "cp" in self.usage:
            self.usage["cp"].end = self._cp_idle
        self.started = False

    def mark_start(self) -> None:
        """The session proper starts (the card connected): every process is up, its start sample is taken now."""
        self.started = True
        self.usage.clear()
        self.take()

    def take(self) -> None:
        if not self.started:
            return
        for name, pid in self.pids.items():
            now = sample(pid)
            if now is None:
                continue
            if name in self.usage:
                self.usage[name].end = now
            else:
                self.usage[name] = Usage(now, now)

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval)
            self.take()


@dataclass
class SessionReport:
    index: int
    fault: str
    offset: int
    size: int
    bearer: str
    injected: bool
    completed: bool
    cp_code: int | None
    seconds: float
    problems: list[str] = field(
        default_factory=list
    )  # consistency problems, and a recoverable fault not recovered
    usage: dict[str, Usage] = field(default_factory=dict)
    kept: str | None = None  # the session's folder, kept when it failed


def check_consistency(run: RunResult) -> list[str]:
    """What the card's saved state and the server's results log disagree on (empty: consistent)."""
    problems: list[str] = []
    state = run.card_state
    gp = state.get("gp", {})
    spn = bytes.fromhex(state.get("files", {}).get(SPN_PATH, ""))
    applied = {
        "rfm": spn[: len(SPN_DATA) // 2] == bytes.fromhex(SPN_DATA),
        "ram-load": LOAD_FILE.lower() in gp.get("load_files", {}),
        "ram-install": APPLICATION.lower() in gp.get("applications", {}),
    }
    if not state:
        problems.append("the card saved no state")
    logged: set[str] = set()
    for card, entry in run.results.items():
        indices = [script["script"] for script in entry["scripts"]]
        for index in {i for i in indices if indices.count(i) > 1}:
            problems.append(f"{card}: script {index} logged {indices.count(index)} times")
        for script in entry["scripts"]:
            bad = [sw for sw in script["status_words"] if sw != "9000" and not sw.startswith("61")]
            if bad:
                problems.append(
                    f"{card}: script {script['script']} ({script['kind']}) answered {' '.join(bad)}"
                )
            logged.add(script["kind"])
    for kind, on_card in applied.items():
        if kind in logged and not on_card:
            problems.append(f"the server logged the {kind} script as answered; the card does not have it")
        if on_card and kind not in logged:
            problems.append(f"the card has the {kind} script applied; the server never logged its answer")
    if run.completed and not {"rfm", "ram-load", "ram-install"} <= logged:
        problems.append(f"the campaign completed with only {sorted(logged)} logged")
    return problems


async def inject(harness: Harness, plan: SessionPlan, done: list[bool]) -> None:
    """The `during` hook of a soak session: hold the server's bytes at the plan's offset, wait until the card is
    mid-download, inject the fault, release. `done` gets True once the fault was injected."""
    link = harness.link
    assert link is not None
    link.hold_at(plan.offset)
    with trio.move_on_after(60):
        await link.reached(plan.offset)
    if link.stats.to_card < plan.offset:
        return  # the session ended (or failed) before its fault's moment; reported as not injected
    # the held bytes are inside the load script, so the card cannot finish; this proves data reached it
    if await harness.wait_for_event("cp", DATA_AVAILABLE, timeout=30) is None:
        link.hold_at(None)
        return
    if plan.fault is Fault.LINE_DROP:
        await harness.restart_pair()
    elif plan.fault is Fault.SERVER_DROP:
        link.drop()
    elif plan.fault is Fault.CORRUPT:
        link.corrupt_next()
    elif plan.fault is Fault.POWER_LOSS:
        await harness.power_cycle_cp()
    elif plan.fault is Fault.SLOW_PEER:
        link.pace(SLOW_RATE)
    done.append(True)
    link.hold_at(None)


async def run_session(plan: SessionPlan, directory: Path, timeout: float) -> SessionReport:
    sampler = Sampler()
    injected: list[bool] = []

    async def during(harness: Harness) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(inject, harness, plan, injected)
            link = harness.link
            assert link is not None
            await link.connected()
            sampler.mark_start()
            while True:  # the CP's end sample: when the card's last connection closed
                await link.idle()
                sampler.mark_idle()
                count = link.stats.connections
                while link.stats.connections == count:
                    await link.changed()

    config = RunConfig(
        session=f"soak-{plan.index}",
        bearer=plan.bearer,
        campaign=applet_download(plan.size),
        timeout=timeout,
        during=during,
        server_link=True,
        on_process=sampler.add,
        on_cp_end=sampler.mark_end,
    )
    started = time.monotonic()
    run: RunResult | None = None
    problems: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler.run)
        try:
            run = await Harness(config, directory).run()
        except (
            HarnessError,
            OSError,
            ExceptionGroup,
        ) as exc:  # the harness's nursery groups what its tasks raise
            problems.append(f"the session could not run: {exc!r}")
        nursery.cancel_scope.cancel()
    completed = run is not None and run.completed and run.cp_code == 0
    if run is not None:
        problems += check_consistency(run)
    if plan.fault in RECOVERABLE and not completed:
        problems.append(f"the campaign did not complete after a {plan.fault} fault" + _why(run))
    return SessionReport(
        plan.index,
        plan.fault.value,
        plan.offset,
        plan.size,
        plan.bearer,
        bool(injected),
        completed,
        run.cp_code if run is not None else None,
        round(time.monotonic() - started, 2),
        problems,
        sampler.usage,
    )


def _why(run: RunResult | None) -> str:
    return f" ({run.explain()})" if run is not None else ""


@dataclass
class SoakReport:
    seed: int
    sessions: list[SessionReport]
    runner: Usage
    seconds: float

    @property
    def completed(self) -> int:
        return sum(session.completed for session in self.sessions)

    @property
    def faults(self) -> dict[str, int]:
        """Faults injected, by type (a session that ended before its fault's moment injected none)."""
        counts = Counter(session.fault for session in self.sessions if session.injected)
        return {fault.value: counts.get(fault.value, 0) for fault in Fault}

    @property
    def problems(self) -> list[str]:
        return [f"session {s.index} ({s.fault}): {p}" for s in self.sessions for p in s.problems]

    @property
    def leaks(self) -> list[str]:
        """Growth past the tolerance: the soak's own process from start to end, and each kind of session process
        from the first session to the last (each does the same work, so its end state should not climb)."""
        out = []
        if self.runner.end.fds > self.runner.start.fds + FD_TOLERANCE:
            out.append(f"soak process: {self.runner.start.fds} -> {self.runner.end.fds} file descriptors")
        if self.runner.end.rss_kib > self.runner.start.rss_kib + RSS_TOLERANCE_KIB:
            out.append(f"soak process: RSS {self.runner.start.rss_kib} -> {self.runner.end.rss_kib} KiB")
        for name, (first, last) in self.process_usage().items():
            if last.end.fds > first.end.fds + FD_TOLERANCE:
                out.append(f"{name}: {first.end.fds} -> {last.end.fds} file descriptors at a session's end")
            if last.end.rss_kib > first.end.rss_kib + RSS_TOLERANCE_KIB:
                out.append(f"{name}: RSS {first.end.rss_kib} -> {last.end.rss_kib} KiB at a session's end")
        return out

    def process_usage(self) -> dict[str, tuple[Usage, Usage]]:
        """Per process name: its usage in the first session and in the last that sampled it."""
        out: dict[str, tuple[Usage, Usage]] = {}
        for session in self.sessions:
            for name, usage in session.usage.items():
                out[name] = (out[name][0] if name in out else usage, usage)
        return out

    @property
    def passed(self) -> bool:
        return bool(self.sessions) and not self.problems and not self.leaks

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "seed": self.seed,
            "seconds": round(self.seconds, 1),
            "sessions": len(self.sessions),
            "completed": self.completed,
            "faults_injected": self.faults,
            "consistent": not self.problems,
            "problems": self.problems,
            "leaks": self.leaks,
            "tolerance": {"fds": FD_TOLERANCE, "rss_kib": RSS_TOLERANCE_KIB},
            "resources": {
                "soak": asdict(self.runner),
                **{
                    name: {"first_session": asdict(first), "last_session": asdict(last)}
                    for name, (first, last) in self.process_usage().items()
                },
            },
            "runs": [
                {key: value for key, value in asdict(session).items() if key != "usage"}
                for session in self.sessions
            ],
        }

    def lines(self) -> list[str]:
        """The report for people."""
        faults = ", ".join(f"{name} {count}" for name, count in self.faults.items() if count)
        out = [
            f"soak seed {self.seed}: {len(self.sessions)} sessions in {self.seconds:.0f} s, "
            f"{self.completed} completed",
            f"faults injected: {sum(self.faults.values())} ({faults or 'none'})",
            f"card state consistent with the server's log: {'yes' if not self.problems else 'NO'}",
        ]
        out += [f"  {problem}" for problem in self.problems]
        out.append("resources (RSS KiB / open fds, start -> end):")
        runner = self.runner
        out.append(
            f"  soak process  {runner.start.rss_kib}/{runner.start.fds} -> {runner.end.rss_kib}/{runner.end.fds}"
        )
        for name, (first, last) in self.process_usage().items():
            out.append(
                f"  {name:<12}  first session {first.start.rss_kib}/{first.start.fds} -> "
                f"{first.end.rss_kib}/{first.end.fds}, last session {last.start.rss_kib}/{last.start.fds} -> "
                f"{last.end.rss_kib}/{last.end.fds}"
            )
        out.append(
            f"leaks beyond tolerance (+{FD_TOLERANCE} fds, +{RSS_TOLERANCE_KIB // 1024} MiB): "
            + ("none" if not self.leaks else "; ".join(self.leaks))
        )
        out.append("PASSED" if self.passed else "FAILED")
        return out


@dataclass
class SoakOptions:
    seed: int = 1
    sessions: int | None = None  # stop after this many sessions
    duration: float | None = None  # start no session after this many seconds
    keep: Path | None = None  # keep every session's folder here (failed ones are kept anyway)
    session_timeout: float = 90.0


async def soak(options: SoakOptions, progress: Callable[[SessionReport], None] | None = None) -> SoakReport:
    """Runs the soak: sessions until `options.sessions` ran or `options.duration` passed (10 sessions when
    neither is given)."""
    limit = options.sessions if options.sessions is not None or options.duration is not None else 10
    base = options.keep or Path(tempfile.mkdtemp(prefix="bipsim-soak-"))
    base.mkdir(parents=True, exist_ok=True)
    own = os.getpid()
    first = sample(own)
    assert first is not None
    started = time.monotonic()
    reports: list[SessionReport] = []
    index = 0
    while (limit is None or index < limit) and (
        options.duration is None or time.monotonic() - started < options.duration
    ):
        plan = plan_session(options.seed, index)
        directory = base / f"session-{index:04d}"
        directory.mkdir(exist_ok=True)
        report = await run_session(plan, directory, options.session_timeout)
        if report.problems or options.keep is not None:
            report.kept = str(directory)
        else:
            shutil.rmtree(directory, ignore_errors=True)
        reports.append(report)
        if progress is not None:
            progress(report)
        index += 1
    if options.keep is None and not any(report.kept for report in reports):
        shutil.rmtree(base, ignore_errors=True)
    last = sample(own)
    assert last is not None
    return SoakReport(options.seed, reports, Usage(first, last), time.monotonic() - started)
