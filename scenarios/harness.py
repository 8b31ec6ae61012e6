"""Runs the three processes of a scenario (OTA server, CP, AP) on a pty pair and collects what they recorded.

The pair is made in-process (bipsim.link.pty_relay) unless existing ports are given (socat's, or two USB-serial
adapters on a null-modem cable). All processes share one clock origin (BIPSIM_T0) so their traces merge by time.
A run returns a RunResult with exit codes, the merged trace, the server's results log and the card's saved state.

Faults are caused, not timed (docs/development.md, "Fault scenarios and the soak run"): a hook waits for the trace
event that proves the moment has come (`wait_for_event`, by kind and fields), and a run with `server_link` puts a
TCP relay (ServerLink) between the card's bearer and the OTA server that can hold the server's bytes at an offset,
so a session cannot finish before its fault lands, then drop, corrupt or pace them. `restart_pair` pulls the line,
`power_cycle_cp` kills the CP (and the card in it) with SIGKILL and boots it again on its saved state.

Cards: `card2` gives the CP a second slot (SIM2: its own profile and state file, or an empty slot), and with
`card_control` the harness can pull a simulated card and put it back mid-run (`remove_card`, `insert_card`, through
the CP's card-control socket, `bipsim cp --card-control`), after the trace event that proves the moment has come.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bipsim.commands.packet_options import cp_packet_args
from bipsim.link.pty_relay import PtyPair
from bipsim.trace.events import TraceEvent
from bipsim.trace.reader import read_trace
from bipsim.trace.recorder import T0_ENV
from bipsim.uicc.profile import dump_profile, load_profile


@dataclass
class RunConfig:
    session: str = "e2"
    bearer: str = "ap-proxy"  # own-stack | ap-proxy | auto
    link_mode: str = "background"
    profile: dict[str, Any] = field(default_factory=dict)
    ap_args: list[str] = field(default_factory=list)
    server_args: list[str] = field(default_factory=list)
    cp_args: list[str] = field(default_factory=list)
    campaign: str | None = None  # TOML text; None: the built-in example
    server: bool = True  # False: nothing listens on the card's server port
    port_a: str | None = None  # existing pair: the AP's end
    port_b: str | None = None  # and the CP's end
    timeout: float = 30.0
    baud: int | None = None  # pace the built-in pty pair like a UART at this rate (8N1: baud/10 bytes/s)
    during: Callable[[Harness], Any] | None = None  # an async hook run while the CP works (fault injection)
    # campaigns (TOML) of more OTA servers ("ota2", "ota3"...); the card runs a session with each on its own
    # BIP channel at the same time as the first (bipsim cp --extra-channel)
    extra_servers: list[str] = field(default_factory=list)
    # put a ServerLink between the card's bearer and the OTA server (Harness.link), for network faults; with
    # `ota_listen` (a card whose profile fixes where it connects) the link listens there and the server elsewhere
    server_link: bool = False
    # called with (process name, pid) once each process started, and again for a CP booted by power_cycle_cp
    on_process: Callable[[str, int], None] | None = None
    # called once the CP ended (or the run timed out), before the other processes are stopped
    on_cp_end: Callable[[], None] | None = None
    # a second card slot in the CP (bipsim cp --card2): "sim" (the default profile with `profile2`'s overrides,
    # its own state file card2.json), "none" (an empty slot); None: one slot, as before
    card2: str | None = None
    profile2: dict[str, Any] = field(default_factory=dict)
    # serve the CP's card-control socket, so that hooks can pull and insert cards (Harness.remove_card)
    card_control: bool = False
    # the CP's card (bipsim cp --card): "sim" builds the simulated one from `profile`; "pcsc:N" / "pcsc:NAME" is
    # a card behind PC/SC whose own profile fixes where it connects, so the OTA server listens at `ota_listen`
    # (HOST:PORT) and the card's saved state, when there is a file of it, is read from `card_state`
    card: str = "sim"
    ota_listen: str | None = None
    card_state: Path | None = None
    # the packet data plane of the CP (bipsim cp --radio/--network/--seed); the defaults add nothing to the
    # command lines
    radio: str = "ideal"
    network: str = "nat"
    seed: int = 0
    wlan: str | None = None  # the AP's Wi-Fi link model (bipsim ap --wlan), with the same seed


FieldTest = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True)
class EventQuery:
    """Selects trace events by `kind` and a test of their `fields` (docs/protocols.md, "Traces"), optionally by
    sender and by how their bytes start; never by the human `summary`."""

    kind: str
    where: FieldTest | None = None
    src: str | None = None
    data_prefix: bytes | None = (
        None  # the event's bytes start with these (an AT command line, an APDU header)
    )

    def matches_dict(self, obj: dict[str, Any]) -> bool:
        if obj.get("kind") != self.kind or (self.src is not None and obj.get("src") != self.src):
            return False
        if self.data_prefix is not None:
            data = obj.get("hex")
            if not isinstance(data, str) or not data.upper().startswith(self.data_prefix.hex().upper()):
                return False
        fields = obj.get("fields")
        return self.where is None or self.where(fields if isinstance(fields, dict) else {})

    def matches(self, event: TraceEvent) -> bool:
        return self.matches_dict(event.to_dict())


def select(events: list[TraceEvent], query: EventQuery) -> list[TraceEvent]:
    """The events `query` matches, in order."""
    return [event for event in events if query.matches(event)]


class TraceTail:
    """Reads a JSONL trace file as it grows: each call returns the objects of the lines completed since the last."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read_new(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        out = []
        for line in lines:
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out


@dataclass
class LinkStats:
    """What a ServerLink carried and did."""

    connections: int = 0
    active: int = 0  # connections open now
    to_card: int = 0  # bytes from the server forwarded to the card, over all connections
    to_server: int = 0
    drops: int = 0
    corrupted: int = 0


class ServerLink:
    """A TCP relay in the harness's process between the card's bearer (the CP's stack or the AP proxy) and the OTA
    server: the network half of fault injection.

    The server's bytes are counted over all connections of the run. `hold_at(n)` forwards them only up to offset
    `n` and keeps the rest until the limit moves (`hold_at(None)` releases), so a fault can land in the middle of
    a download however fast the run is; `reached(n)` waits until exactly that much has been forwarded. `drop()`
    closes every connection at once (what the card sees of a server or network that goes away), `corrupt_next()`
    flips one bit in the next bytes forwarded to the card, `pace(rate)` forwards them at `rate` bytes/s (a slow
    peer).
    """

    def __init__(self, server_host: str, server_port: int) -> None:
        self.server = (server_host, server_port)
        self.stats = LinkStats()
        self._limit: int | None = None
        self._rate: float | None = None
        self._corrupt = 0
        self._changed = trio.Event()
        self._scopes: set[trio.CancelScope] = set()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def hold_at(self, offset: int | None) -> None:
        self._limit = offset
        self._notify()

    def pace(self, rate: float | None) -> None:
        self._rate = rate
        self._notify()

    def corrupt_next(self) -> None:
        self._corrupt += 1

    def drop(self) -> None:
        self.stats.drops += 1
        for scope in list(self._scopes):
            scope.cancel()

    async def connected(self) -> None:
        """Waits until the card made its first connection through the link."""
        while not self.stats.connections:
            await self._changed.wait()

    async def changed(self) -> None:
        """Waits for the next change: a connection opened or closed, bytes forwarded, the hold moved."""
        await self._changed.wait()

    async def reached(self, offset: int) -> None:
        while self.stats.to_card < offset:
            await self._changed.wait()

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        port = int(listeners[0].socket.getsockname()[1])
        async with trio.open_nursery() as nursery:
            task_status.started(port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, card: trio.SocketStream) -> None:
        self.stats.connections += 1
        self.stats.active += 1  # counted at once: `idle` must not see a gap while the server is being reached
        self._notify()
        try:
            try:
                server = await trio.open_tcp_stream(*self.server)
            except OSError:
                await trio.aclose_forcefully(card)
                return
            with trio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._up, card, server, nursery.cancel_scope)
                        nursery.start_soon(self._down, server, card, nursery.cancel_scope)
                finally:
                    self._scopes.discard(scope)
            await trio.aclose_forcefully(card)
            await trio.aclose_forcefully(server)
        finally:
            self.stats.active -= 1
            self._notify()

    async def idle(self) -> None:
        """Waits until no connection is open (the card closed its channel, or a fault closed it)."""
        while self.stats.active:
            await self._changed.wait()

    async def _up(self, src: trio.SocketStream, dst: trio.SocketStream, done: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
                self.stats.to_server += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()  # either end gone: the connection is over for both

    async def _down(self, src: trio.SocketStream, dst: trio.SocketStream, done: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(65536):
                view = bytes(data)
                while view:
                    allowed = len(view) if self._limit is None else self._limit - self.stats.to_card
                    if allowed <= 0:
                        await self._changed.wait()
                        continue
                    piece = view[:allowed]
                    if self._rate is not None:
                        piece = piece[: max(1, math.ceil(self._rate / 20))]  # about 50 ms of bytes at a time
                    if self._corrupt:
                        self._corrupt -= 1
                        self.stats.corrupted += 1
                        middle = len(piece) // 2
                        piece = piece[:middle] + bytes((piece[middle] ^ 0x10,)) + piece[middle + 1 :]
                    await dst.send_all(piece)
                    self.stats.to_card += len(piece)
                    view = view[len(piece) :]
                    self._notify()
                    if self._rate is not None:
                        await trio.sleep(len(piece) / self._rate)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()


@dataclass
class RunResult:
    config: RunConfig
    cp_code: int | None
    events: list[TraceEvent]
    results: dict[str, Any]
    card_state: dict[str, Any]
    directory: Path
    logs: dict[str, str]
    extra_results: list[dict[str, Any]] = field(default_factory=list)  # per extra server, in config order
    # the second slot's simulated card state, when one ran
    card2_state: dict[str, Any] = field(default_factory=dict)

    def events_of(self, layer: str) -> list[TraceEvent]:
        return [e for e in self.events if e.layer.value == layer]

    @property
    def completed(self) -> bool:
        return bool(self.results) and all(
            card.get("completed") and card.get("all_ok") for card in self.results.values()
        )

    def explain(self) -> str:
        tails = {name: text.strip().splitlines()[-3:] for name, text in self.logs.items() if text.strip()}
        return f"cp exit {self.cp_code}; results {json.dumps(self.results)[:300]}; logs {tails}"


class HarnessError(Exception):
    """The scenario's processes could not be set up."""


class Harness:
    def __init__(self, config: RunConfig, directory: Path) -> None:
        self.config = config
        self.dir = directory
        self.pair: PtyPair | None = None
        self.processes: dict[str, trio.Process] = {}
        self.origin = time.monotonic()
        self._pair_scope: trio.CancelScope | None = None
        self._pair_done = trio.Event()
        self._pair_nursery: trio.Nursery | None = None
        self.link: ServerLink | None = (
            None  # with config.server_link: the relay the card's connections go through
        )
        self.traces: dict[str, list[Path]] = {}  # process name -> its trace files, one per boot
        self._tails: dict[Path, TraceTail] = {}
        self._cp_command: list[str] = []
        self._cp_boots = 0
        self._cp_rebooting: trio.Event | None = None
        self._seen: dict[str, list[dict[str, Any]]] = {}
        self._cursors: dict[tuple[str, EventQuery], tuple[int, list[dict[str, Any]]]] = {}

    def _command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "bipsim", *args]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env[T0_ENV] = repr(self.origin)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # a process that crashes leaves its traceback in its kept log, where the failed run is read afterwards
        env.setdefault("BIPSIM_DEBUG", "1")
        return env

    async def _start(self, name: str, args: list[str], nursery: trio.Nursery) -> trio.Process:
        log = (self.dir / f"{name}.log").open("ab")  # a CP booted again adds to its log
        process = await nursery.start(
            lambda task_status: trio.run_process(
                args, stdout=log, stderr=log, env=self._env(), check=False, task_status=task_status
            )
        )
        self.processes[name] = process
        if self.config.on_process is not None:
            self.config.on_process(name, process.pid)
        return process

    async def _wait_for_port(self, log: Path, name: str = "ota") -> int:
        with trio.move_on_after(60):  # a Python start on a loaded machine; a server that fails ends sooner
            while True:
                if self.processes[name].returncode is not None:
                    break
                text = log.read_text() if log.exists() else ""
                for line in text.splitlines():
                    if line.startswith("listening on "):
                        return int(line.split()[2].rsplit(":", 1)[1])
                await trio.sleep(0.05)
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        raise HarnessError(f"the OTA server did not start: {' '.join(tail) or 'no output'}")

    def _trace_path(self, name: str) -> Path:
        """A new trace file for process `name` (a CP booted again writes its own; Tracer.to_file truncates)."""
        paths = self.traces.setdefault(name, [])
        path = self.dir / (f"{name}.jsonl" if not paths else f"{name}-boot{len(paths) + 1}.jsonl")
        paths.append(path)
        return path

    def events_so_far(self, name: str) -> list[dict[str, Any]]:
        """Every event process `name` has traced so far in this run (across its boots), as JSON objects."""
        seen = self._seen.setdefault(name, [])
        for path in self.traces.get(name, [self.dir / f"{name}.jsonl"]):
            seen += self._tails.setdefault(path, TraceTail(path)).read_new()
        return seen

    async def wait_for_event(
        self, name: str, query: EventQuery, *, count: int = 1, timeout: float = 20.0
    ) -> dict[str, Any] | None:
        """Waits until process `name` has traced `count` events matching `query` (counted from the run's start);
        returns the last of them, or None on timeout.

        Hooks act on the event that proves the moment has come (the AP attached, data reached the card), never
        after a fixed delay. The trace file is the only window into another process, so it is read as it grows;
        a hook that must not miss its moment also holds the server's bytes (ServerLink.hold_at), so that the
        moment cannot pass while the file is being read.
        """
        index, matched = self._cursors.get((name, query), (0, []))
        with trio.move_on_after(timeout):
            while True:
                # asked before reading: what the process traced before it exited is in the file by then
                ended = self._ended(name)
                seen = self.events_so_far(name)
                matched += [obj for obj in seen[index:] if query.matches_dict(obj)]
                index = len(seen)
                self._cursors[(name, query)] = (index, matched)
                if len(matched) >= count:
                    return matched[count - 1]
                if ended:
                    return None  # the process exited (a crash, a bad option): the moment cannot come any more
                await trio.sleep(0.02)
        return None

    def _ended(self, name: str) -> bool:
        """Whether process `name` exited for good (a CP being booted again by power_cycle_cp has not)."""
        process = self.processes.get(name)
        if process is None or (name == "cp" and self._cp_rebooting is not None):
            return False
        return process.returncode is not None

    @property
    def card_control_path(self) -> Path:
        """The CP's card-control socket (a UNIX socket path must stay short: a long --keep folder gets a temp one)."""
        path = self.dir / "cards.sock"
        if len(str(path)) > 100:
            path = Path(tempfile.gettempdir()) / f"bipsim-cards-{os.getpid()}-{id(self)}.sock"
        return path

    async def card_control(self, line: str, *, timeout: float = 20.0) -> str:
        """Sends one card-control line to the CP ('remove N', 'insert N', 'slots') and returns its answer after
        'ok'; HarnessError on 'error' or when the CP's socket does not come up within `timeout`."""
        if not self.config.card_control:
            raise HarnessError("card control needs RunConfig(card_control=True)")
        path = str(self.card_control_path)
        stream: trio.SocketStream | None = None
        with trio.move_on_after(timeout):
            # the CP serves the socket once it has started: poll for it, with a deadline
            while stream is None:
                sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
                try:
                    await sock.connect(path)
                    stream = trio.SocketStream(sock)
                except OSError:
                    sock.close()
                    await trio.sleep(0.05)
        if stream is None:
            raise HarnessError(f"the CP's card-control socket {path} did not come up")
        async with stream:
            await stream.send_all(line.encode() + b"\n")
            answer = b""
            with trio.move_on_after(timeout):
                while not answer.endswith(b"\n"):
                    data = await stream.receive_some()
                    if not data:
                        break
                    answer += data
        text = answer.decode(errors="replace").strip()
        if not text.startswith("ok"):
            raise HarnessError(f"card control {line!r}: {text or 'no answer'}")
        return text[2:].strip()

    async def remove_card(self, slot: int = 1) -> None:
        """Pulls the simulated card of `slot` out of the running CP (it answers +CME ERROR: 10 until insert_card)."""
        await self.card_control(f"remove {slot}")

    async def insert_card(self, slot: int = 1) -> None:
        """Puts the card of `slot` back; the CP powers it on again (and restarts the toolkit of slot 1)."""
        await self.card_control(f"insert {slot}")

    async def restart_pair(self) -> None:
        """The serial line goes away and comes back: the relay closes, then a new pair takes the same names."""
        assert self.pair is not None and self._pair_scope is not None
        self._pair_scope.cancel()
        await self._pair_done.wait()
        await trio.sleep(0.5)
        assert self._pair_nursery is not None
        await self._pair_nursery.start(self._run_pair)

    async def power_cycle_cp(self) -> None:
        """The phone loses power under the card: the CP (and the simulated card in it) is killed with SIGKILL, the
        line goes away with it (the AP sees it drop), and the CP boots again on the card's saved state file."""
        assert self._pair_nursery is not None and self._cp_command
        self._cp_rebooting = trio.Event()
        try:
            old = self.processes["cp"]
            if old.returncode is None:
                old.send_signal(signal.SIGKILL)
            await old.wait()
            if self.pair is not None and self._pair_scope is not None:
                await self.restart_pair()
            self._cp_boots += 1
            command = [*self._cp_command, "--trace", str(self._trace_path("cp"))]
            await self._start("cp", command, self._pair_nursery)
        finally:
            self._cp_rebooting.set()
            self._cp_rebooting = None

    async def _run_pair(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        pair = PtyPair.create(baud=self.config.baud)
        self.pair = pair
        self._pair_done = trio.Event()
        links = [self.dir / "ap.tty", self.dir / "cp.tty"]
        for link, target in zip(links, pair.paths, strict=True):
            if link.is_symlink():
                link.unlink()
            link.symlink_to(target)
        with trio.CancelScope() as scope:
            self._pair_scope = scope
            try:
                await pair.run(task_status=task_status)
            finally:
                for link in links:
                    if link.is_symlink():
                        link.unlink()
                # shielded: a cancelled close that left one end open would hide the drop from that process
                with trio.CancelScope(shield=True):
                    await pair.aclose()
                self._pair_done.set()

    def _clear_previous_run(self) -> None:
        """Removes what an earlier run left in the folder (`scenario run --keep DIR` twice): each run starts from a
        fresh card, as the scenarios assume; a card state saved by another run would carry its installed applet
        and counters into this one. Only the files the harness itself writes are touched."""
        names = ["cp", "ap", "ota", *(name for name, _ in self._extra_servers())]
        stale = [self.dir / "card.json", self.dir / "results.json", self.dir / "campaign.toml"]
        stale += [self.dir / "profile.toml", self.dir / "card2.json", self.dir / "profile2.toml"]
        stale += [self.dir / f"{name}.{ext}" for name in names for ext in ("jsonl", "log")]
        stale += list(self.dir.glob("results-ota*.json")) + list(self.dir.glob("ota*.toml"))
        stale += list(self.dir.glob("cp-boot*.jsonl"))
        stale += list(self.dir.glob(".card.json.*")) + list(
            self.dir.glob("card.json.*")
        )  # temporaries, journals
        for path in stale:
            if path.is_file() or path.is_symlink():
                path.unlink()

    async def run(self) -> RunResult:
        config = self.config
        cp_code: int | None = None
        self._clear_previous_run()
        async with trio.open_nursery() as nursery:
            self._pair_nursery = nursery
            if config.port_a and config.port_b:
                ap_port, cp_port = config.port_a, config.port_b
            else:
                await nursery.start(self._run_pair)
                ap_port, cp_port = str(self.dir / "ap.tty"), str(self.dir / "cp.tty")
            port = 9  # discard: nothing listens there when the scenario wants a refusal
            if config.server:
                campaign_args: list[str] = []
                if config.campaign is not None:
                    (self.dir / "campaign.toml").write_text(config.campaign)
                    campaign_args = ["--script", str(self.dir / "campaign.toml")]
                # the card connects to `ota_listen`: the server listens there, or the link does in front of it
                relayed = config.server_link and config.ota_listen is not None
                await self._start(
                    "ota",
                    self._command(
                        "ota-server",
                        "--listen",
                        "127.0.0.1:0" if relayed else config.ota_listen or "127.0.0.1:0",
                        "--results",
                        str(self.dir / "results.json"),
                        "--trace",
                        str(self.dir / "ota.jsonl"),
                        "--session",
                        config.session,
                        *campaign_args,
                        *config.server_args,
                    ),
                    nursery,
                )
                port = await self._wait_for_port(self.dir / "ota.log")
                if config.server_link:
                    self.link = ServerLink("127.0.0.1", port)
                    host, _, at = (config.ota_listen or "127.0.0.1:0").rpartition(":")
                    port = await nursery.start(self.link.serve, host, int(at))
            extra_args: list[str] = []
            for name, campaign in self._extra_servers():
                (self.dir / f"{name}.toml").write_text(campaign)
                await self._start(
                    name,
                    self._command(
                        "ota-server",
                        "--listen",
                        "127.0.0.1:0",
                        "--results",
                        str(self.dir / f"results-{name}.json"),
                        "--trace",
                        str(self.dir / f"{name}.jsonl"),
                        "--session",
                        config.session,
                        "--script",
                        str(self.dir / f"{name}.toml"),
                    ),
                    nursery,
                )
                extra_port = await self._wait_for_port(self.dir / f"{name}.log", name)
                extra_args += ["--extra-channel", f"127.0.0.1:{extra_port}"]
            plane_args = cp_packet_args(config.radio, config.network, config.seed)
            tun_host: dict[str, Any] = {}
            if config.network == "tun" and config.server:
                # the card reaches the server at its address in the CP's namespace (203.0.113.10), where the
                # namespace's kernel accepts and the CP carries the bytes to the server on the host
                tun_host = {"ota_host": "203.0.113.10"}
                plane_args += ["--tun-relay", f"{port}:127.0.0.1:{port}"]
            profile = load_profile().with_overrides(
                ota_port=port, link_mode=config.link_mode, **{**tun_host, **config.profile}
            )
            (self.dir / "profile.toml").write_text(dump_profile(profile))
            slot_args: list[str] = []
            if config.card2 == "sim":
                profile2 = load_profile().with_overrides(ota_port=port, **config.profile2)
                (self.dir / "profile2.toml").write_text(dump_profile(profile2))
                slot_args += ["--card2", "sim", "--profile2", str(self.dir / "profile2.toml")]
                slot_args += ["--state2", str(self.dir / "card2.json")]
            elif config.card2 is not None:
                slot_args += ["--card2", config.card2]
            if config.card_control:
                slot_args += ["--card-control", str(self.card_control_path)]
            await self._start(
                "ap",
                self._command(
                    "ap",
                    "--port",
                    ap_port,
                    "--trace",
                    str(self.dir / "ap.jsonl"),
                    "--session",
                    config.session,
                    *(["--wlan", config.wlan, "--seed", str(config.seed)] if config.wlan else []),
                    *config.ap_args,
                ),
                nursery,
            )
            card_args = ["--profile", str(self.dir / "profile.toml"), "--state", str(self.dir / "card.json")]
            if config.card != "sim":
                card_args = ["--card", config.card]  # the card's own profile and state are behind the reader
            self._cp_command = self._command(
                "cp",
                "--port",
                cp_port,
                *card_args,
                "--bearer",
                config.bearer,
                "--once",
                "--session",
                config.session,
                *extra_args,
                *slot_args,
                *plane_args,
                *config.cp_args,
            )
            cp = await self._start("cp", [*self._cp_command, "--trace", str(self._trace_path("cp"))], nursery)
            if config.during is not None:
                nursery.start_soon(config.during, self)
            with trio.move_on_after(config.timeout):
                while True:
                    await cp.wait()
                    rebooting = self._cp_rebooting
                    if rebooting is None:
                        break
                    await rebooting.wait()  # power_cycle_cp killed it: the run goes on with the next boot
                    cp = self.processes["cp"]
            cp = self.processes["cp"]
            cp_code = cp.returncode
            if config.on_cp_end is not None:
                config.on_cp_end()
            for process in self.processes.values():
                if process.returncode is None:
                    process.terminate()
            with trio.move_on_after(5):
                for process in self.processes.values():
                    await process.wait()
            for process in self.processes.values():
                if process.returncode is None:
                    process.kill()
            nursery.cancel_scope.cancel()
        names = ["cp", "ap", "ota", *(name for name, _ in self._extra_servers())]
        files = [self.dir / f"{name}.jsonl" for name in names if (self.dir / f"{name}.jsonl").exists()]
        files += sorted(path for path in self.traces.get("cp", [])[1:] if path.exists())
        events, _ = read_trace(files)
        results = (
            json.loads((self.dir / "results.json").read_text())
            if (self.dir / "results.json").exists()
            else {}
        )
        state_file = config.card_state or self.dir / "card.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        logs = {p.stem: p.read_text(errors="replace") for p in self.dir.glob("*.log")}
        extra_results = []
        for name, _ in self._extra_servers():
            path = self.dir / f"results-{name}.json"
            extra_results.append(json.loads(path.read_text()) if path.exists() else {})
        state2_path = self.dir / "card2.json"
        state2 = json.loads(state2_path.read_text()) if state2_path.exists() else {}
        return RunResult(config, cp_code, events, results, state, self.dir, logs, extra_results, state2)

    def _extra_servers(self) -> list[tuple[str, str]]:
        return [(f"ota{n}", campaign) for n, campaign in enumerate(self.config.extra_servers, start=2)]


def run_processes(config: RunConfig, directory: Path | None = None) -> RunResult:
    """Runs one scenario's processes to completion (blocking)."""
    target = directory or Path(tempfile.mkdtemp(prefix=f"bipsim-{config.session}-"))
    target.mkdir(parents=True, exist_ok=True)
    try:
        return trio.run(Harness(config, target).run)
    except BaseExceptionGroup as group:
        first = group.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise HarnessError(str(first)) from group
