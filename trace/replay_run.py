"""Runs a replay (`bipsim trace replay`, docs/protocols.md "Replaying a trace"): the live processes against the recorded side.

trace/replay.py holds the recorded players (RecordedServer, LiveCardCheck, RecordedAp); this module wires them to
live processes and turns what happened into a verdict. All three modes share one skeleton (run_live): listen on the
recorded server's 127.0.0.1 port when there is one, run the live side under a nursery beside the server, and turn a
failure of the live processes into one ReplayError line instead of a traceback.

- card: a live CP (its card the recording) and a live AP through the scenario harness; the recorded server
  answers the CP's TCP connection.
- server: a live CP with its simulated card (seeded as when recorded) and a live AP; the recorded server answers.
- ap: a live CP on a pty pair; the recorded AP plays its AT commands and CMUX frames.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import trio

from bipsim.scenarios.harness import Harness, HarnessError, RunConfig, RunResult
from bipsim.trace.events import Layer, TraceEvent
from bipsim.trace.explain import describe_divergence
from bipsim.trace.reader import read_trace
from bipsim.trace.recorder import T0_ENV
from bipsim.trace.replay import (
    LiveCardCheck,
    RecordedAp,
    RecordedServer,
    ap_tape,
    open_channel_address,
    server_tapes,
)
from bipsim.uicc.ota_agent import SEED_ENV
from bipsim.uicc.profile import CardProfile, dump_profile, load_profile

T = TypeVar("T")


class Echo(Protocol):
    """Where the verdict goes (click.echo): stdout, or stderr with err=True."""

    def __call__(self, message: str, *, err: bool = ...) -> None: ...


class ReplayError(Exception):
    """The replay cannot run: one line for the user; exit code 2 for unusable input, 1 for a live run that failed."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ReplayOptions:
    """What `bipsim trace replay` was asked for, beyond the recording itself."""

    directory: Path  # the live processes' files
    label: str  # the live run's session name
    timeout: float
    trace_path: str | None = None  # write the live run's trace here
    bearer: str | None = None  # the live CP's bearer; None: the recording's
    seed: str | None = None  # the live simulated card's random seed
    profile_path: str | None = None  # the live simulated card's profile
    card_kind: str = "recorded"  # --as ap: "recorded" or "sim"


def replay(role: str, events: list[TraceEvent], options: ReplayOptions, echo: Echo) -> int:
    """Plays the recorded `role` (card, server or ap) against the live rest; prints the verdict; the exit code."""
    if role == "card":
        return replay_card(events, options, echo)
    if role == "server":
        return replay_server(events, options, echo)
    return replay_ap(events, options, echo)


def run_live(
    live: Callable[[], Awaitable[T]], what: str, server: RecordedServer | None = None, port: int | None = None
) -> T:
    """Runs `live` (the live processes, `what` in messages) beside the recorded server listening on `port`."""

    async def main() -> T:
        listeners = None
        if server is not None:
            try:
                listeners = await server.listen()
            except OSError as exc:
                raise ReplayError(
                    f"cannot listen on the recorded server port 127.0.0.1:{port}: {exc}"
                ) from exc
        async with trio.open_nursery() as nursery:
            if server is not None:
                await nursery.start(server.run, listeners)
            result = await live()
            nursery.cancel_scope.cancel()
        return result

    try:
        return trio.run(main)
    except BaseExceptionGroup as group:
        leaf = _unwrap(group)
        if isinstance(leaf, ReplayError):
            raise leaf from group
        if isinstance(leaf, HarnessError | OSError):
            raise ReplayError(f"replay could not run {what}: {leaf}") from group
        raise


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


def run_harness(
    config: RunConfig, directory: Path, server: RecordedServer | None, port: int | None
) -> RunResult:
    """The scenario harness's live CP and AP (config.during watching them) beside the recorded server."""
    return run_live(lambda: Harness(config, directory).run(), "the live processes", server, port)


def write_jsonl(path: Path | str, events: Iterable[TraceEvent]) -> None:
    Path(path).write_text("".join(e.to_json() + "\n" for e in events), encoding="utf-8")


def recorded_bearer(events: list[TraceEvent]) -> str:
    """The bearer the recorded CP was asked for: AT%WEBOPCH means the AP proxy, AT%GETNET its own stack."""
    at = [e.data for e in events if e.layer is Layer.AT and e.hex]
    if any(b"%WEBOPCH" in data for data in at):
        return "ap-proxy"
    if any(b"%GETNET" in data for data in at):
        return "own-stack"
    return "auto"


def _server_port(events: list[TraceEvent], known: int | None) -> int:
    """The recorded server's port: from its connection, else from the card's OPEN CHANNEL."""
    if known is None:
        address = open_channel_address(events)
        known = address[1] if address else None
    if known is None:
        raise ReplayError("the trace's network connection names no server port to listen on", exit_code=2)
    return known


def _load_profile(path: str | None, **overrides: object) -> CardProfile:
    try:
        return load_profile(path).with_overrides(**overrides)
    except (ValueError, OSError) as exc:
        raise ReplayError(f"--profile: {exc}", exit_code=2) from exc


def _stop_cp(harness: Harness) -> None:
    cp = harness.processes.get("cp")
    if cp is not None and cp.returncode is None:
        cp.terminate()


def _cp_failed(result: RunResult, echo: Echo) -> int:
    tail = result.logs.get("cp", "").strip().splitlines()[-1:]
    echo(f"replay failed: the live CP exited with {result.cp_code}: {' '.join(tail)}", err=True)
    return 1


def _steps_seen(result: RunResult) -> str:
    steps = sorted({e.step for e in result.events if e.step})
    return f" (steps {steps[0]}..{steps[-1]} seen)" if steps else ""


def replay_card(events: list[TraceEvent], options: ReplayOptions, echo: Echo) -> int:
    """Runs the live CP and AP against the recorded card and server; prints the verdict; returns the exit code."""
    from bipsim.uicc.recorded_card import exchanges

    recorded = exchanges(events)
    if not recorded:
        raise ReplayError(
            "the trace holds no APDU exchanges between the CP and the card to replay", exit_code=2
        )
    tapes = server_tapes(events)
    port = _server_port(events, next((tape.port for tape in tapes if tape.port), None)) if tapes else None
    tape_file = options.directory / "recorded.jsonl"
    write_jsonl(tape_file, events)
    check = LiveCardCheck(events, options.directory / "cp.jsonl")
    server = RecordedServer(tapes, port or 0) if tapes else None
    order: list[str] = []  # which side diverged first

    def note() -> None:
        check.poll()
        if check.diverged and "card" not in order:
            order.append("card")
        if server is not None and server.divergence is not None and "server" not in order:
            order.append("server")

    async def watch(harness: Harness) -> None:
        while True:
            note()
            if order:
                await trio.sleep(0.2)  # let the CP record what it did with the card's error, then stop it
                _stop_cp(harness)
                return
            await trio.sleep(0.05)

    config = RunConfig(
        session=options.label,
        bearer=options.bearer or recorded_bearer(events),
        server=False,
        cp_args=["--card", f"trace:{tape_file}"],
        timeout=options.timeout,
        during=watch,
    )
    result = run_harness(config, options.directory, server, port)
    note()
    if options.trace_path:
        write_jsonl(options.trace_path, result.events)

    card_divergence = check.divergence()
    if card_divergence is not None and "card" not in order:
        order.append("card")  # the CP stopped before playing the whole recording
    if not order and result.cp_code != 0:
        return _cp_failed(result, echo)
    if not order:
        flights = sum(len(tape.flights) for tape in tapes)
        echo(
            f"replay matches: {len(recorded)} APDU exchanges and {flights} network flights played "
            f"against the live CP{_steps_seen(result)}"
        )
        return 0
    for side in order:
        if side == "card" and card_divergence is not None:
            echo("replay diverged: the live CP sent the card other bytes than the recording")
            echo(describe_divergence(card_divergence).replace("divergence at message", "at APDU exchange"))
            if card_divergence.actual is None:
                # the live run stopped before the recording did: the processes' last words say why
                echo(f"  the live CP exited with {result.cp_code}")
                for name in ("cp", "ap"):
                    tail = " | ".join(result.logs.get(name, "").strip().splitlines()[-3:])
                    echo(f"  {name} log: {tail or '(empty)'}")
        elif side == "server" and server is not None and server.divergence is not None:
            echo("replay diverged: the server received other bytes than the recording")
            echo(server.divergence.describe())
    return 1


def replay_server(events: list[TraceEvent], options: ReplayOptions, echo: Echo) -> int:
    """Runs a live CP (its simulated card seeded) and AP against the recorded server; returns the exit code."""
    tapes = server_tapes(events)
    if not tapes or not any(f.from_server for tape in tapes for f in tape.flights):
        raise ReplayError("the trace holds no bytes from the server to replay", exit_code=2)
    port = _server_port(events, next((tape.port for tape in tapes if tape.port), None))
    profile = _load_profile(options.profile_path, ota_port=port, link_mode="background")
    live_profile = options.directory / "replay-profile.toml"
    live_profile.write_text(dump_profile(profile), encoding="utf-8")
    if options.seed:
        os.environ[SEED_ENV] = options.seed  # the live CP inherits it (Harness passes the environment on)
    elif profile.ota_tls:
        echo(
            "warning: no --card-seed: the live card's TLS randoms are fresh, so its ClientHello cannot match",
            err=True,
        )
    server = RecordedServer(tapes, port, psk=profile.psk)

    async def watch(harness: Harness) -> None:
        await server.done.wait()
        if server.divergence is not None:
            await trio.sleep(0.2)  # let the CP record what the card did, then stop it
            _stop_cp(harness)

    config = RunConfig(
        session=options.label,
        bearer=options.bearer or recorded_bearer(events),
        server=False,
        cp_args=["--profile", str(live_profile)],  # the last --profile wins: the recorded server's port
        timeout=options.timeout,
        during=watch,
    )
    result = run_harness(config, options.directory, server, port)
    if options.trace_path:
        write_jsonl(options.trace_path, result.events)
    flights = sum(len(tape.flights) for tape in tapes)
    if server.divergence is not None:
        echo("replay diverged: the live card sent the recorded server other bytes than the recording")
        echo(server.divergence.describe())
        return 1
    if server.flights_played < flights:
        owed = [f for tape in tapes for f in tape.flights][server.flights_played]
        step = f" [{owed.first.step}]" if owed.first.step else ""
        echo(
            f"replay diverged: the live card stopped after {server.flights_played} of {flights} network "
            f"flights; expected next{step}: {owed.first.src.value}->{owed.first.dst.value} "
            f"{owed.first.summary}\n    bytes: {owed.data.hex().upper()}"
        )
        return 1
    if result.cp_code != 0:
        return _cp_failed(result, echo)
    echo(
        f"replay matches: {flights} network flights of {len(tapes)} connection(s) played against the live "
        f"card{_steps_seen(result)}"
    )
    return 0


def replay_ap(events: list[TraceEvent], options: ReplayOptions, echo: Echo) -> int:
    """Runs a live CP on a pty against the recorded AP (which also plays the network it relayed)."""
    from bipsim.link.pty import PtyStream
    from bipsim.link.pty_relay import PtyPair

    tape = ap_tape(events)
    if not tape.commands and not tape.channels:
        raise ReplayError("the trace holds no AT or CMUX bytes of the AP to replay", exit_code=2)
    directory = options.directory
    tape_file = directory / "recorded.jsonl"
    write_jsonl(tape_file, events)
    address = open_channel_address(events)
    overrides: dict[str, object] = {"link_mode": "background"}
    if address is not None:  # a simulated card must open the channel the recording opened
        overrides["ota_port"] = address[1]
    profile = _load_profile(options.profile_path, **overrides)
    (directory / "profile.toml").write_text(dump_profile(profile), encoding="utf-8")
    card_args = ["--card", f"trace:{tape_file}"] if options.card_kind == "recorded" else []
    env = dict(os.environ)
    env[T0_ENV] = repr(time.monotonic())
    if options.seed:
        env[SEED_ENV] = options.seed
    player = RecordedAp(tape, startup_timeout=options.timeout)

    async def live() -> int | None:
        pair = PtyPair.create()
        async with trio.open_nursery() as nursery:
            await nursery.start(pair.run)
            args = [
                *(sys.executable, "-m", "bipsim", "cp", "--port", pair.paths[1]),
                *("--profile", str(directory / "profile.toml"), "--state", str(directory / "card.json")),
                *("--bearer", "ap-proxy", "--once", "--trace", str(directory / "cp.jsonl")),
                *("--session", options.label, *card_args),
            ]
            with (directory / "cp.log").open("wb") as log:
                cp = await nursery.start(
                    lambda task_status: trio.run_process(
                        args, stdout=log, stderr=log, env=env, check=False, task_status=task_status
                    )
                )
                stream = PtyStream.open(pair.paths[0])
                with trio.move_on_after(options.timeout):
                    await player.run(stream)
                    if player.divergence is None:
                        with trio.move_on_after(5):
                            await cp.wait()
                if cp.returncode is None:
                    cp.terminate()
                    with trio.move_on_after(5):
                        await cp.wait()
                    if cp.returncode is None:
                        cp.kill()
                await stream.aclose()
            nursery.cancel_scope.cancel()
        await pair.aclose()
        code: int | None = cp.returncode
        return code

    cp_code = run_live(live, "the live CP")
    if options.trace_path and (directory / "cp.jsonl").exists():
        live_events, _ = read_trace([directory / "cp.jsonl"])
        write_jsonl(options.trace_path, live_events)
    if player.divergence is not None:
        echo("replay diverged: the live CP sent the recorded AP other bytes than the recording")
        echo(player.divergence.describe())
        return 1
    total = sum(1 for items in tape.channels.values() for item in items if item.from_ap)
    if player.items_played < total:
        echo(f"replay diverged: the run timed out after {player.items_played} of {total} AP sends")
        return 1
    channels = ", ".join(str(dlci) for dlci in sorted(tape.channels))
    echo(
        f"replay matches: {len(tape.commands)} AT commands before CMUX and {total} AP sends on DLCs "
        f"{channels} played against the live CP (its exit code {cp_code})"
    )
    return 0
