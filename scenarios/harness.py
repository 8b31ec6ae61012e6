"""Runs the three processes of a scenario (OTA server, CP, AP) on a pty pair and collects what they recorded.

The pair is made in-process (bipsim.link.pty_relay) unless existing ports are given (socat's, or two USB-serial
adapters on a null-modem cable). All processes share one clock origin (BIPSIM_T0) so their traces merge by time.
A run returns a RunResult with exit codes, the merged trace, the server's results log and the card's saved state.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

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
        log = (self.dir / f"{name}.log").open("wb")
        process = await nursery.start(
            lambda task_status: trio.run_process(
                args, stdout=log, stderr=log, env=self._env(), check=False, task_status=task_status
            )
        )
        self.processes[name] = process
        return process

    async def _wait_for_port(self, log: Path, name: str = "ota") -> int:
        with trio.move_on_after(20):
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

    async def wait_for_trace(self, name: str, text: str, timeout: float = 20.0) -> bool:
        """Waits until process `name`'s JSONL trace has an event whose summary contains `text`; False on timeout.

        Fault hooks use it to act at a protocol moment (the AP attached, a channel opened) rather than after a
        fixed delay that a loaded machine would miss.
        """
        path = self.dir / f"{name}.jsonl"
        with trio.move_on_after(timeout):
            while True:
                if path.exists():
                    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                        try:
                            summary = json.loads(line).get("summary", "")
                        except json.JSONDecodeError:
                            continue  # a line being written
                        if text in summary:
                            return True
                await trio.sleep(0.05)
        return False

    async def restart_pair(self) -> None:
        """The serial line goes away and comes back: the relay closes, then a new pair takes the same names."""
        assert self.pair is not None and self._pair_scope is not None
        self._pair_scope.cancel()
        await self._pair_done.wait()
        await trio.sleep(0.5)
        assert self._pair_nursery is not None
        await self._pair_nursery.start(self._run_pair)

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
        stale += [self.dir / "profile.toml"]
        stale += [self.dir / f"{name}.{ext}" for name in names for ext in ("jsonl", "log")]
        stale += list(self.dir.glob("results-ota*.json")) + list(self.dir.glob("ota*.toml"))
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
                await self._start(
                    "ota",
                    self._command(
                        "ota-server",
                        "--listen",
                        "127.0.0.1:0",
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
            profile = load_profile().with_overrides(
                ota_port=port, link_mode=config.link_mode, **config.profile
            )
            (self.dir / "profile.toml").write_text(dump_profile(profile))
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
                    *config.ap_args,
                ),
                nursery,
            )
            cp = await self._start(
                "cp",
                self._command(
                    "cp",
                    "--port",
                    cp_port,
                    "--profile",
                    str(self.dir / "profile.toml"),
                    "--state",
                    str(self.dir / "card.json"),
                    "--bearer",
                    config.bearer,
                    "--once",
                    "--trace",
                    str(self.dir / "cp.jsonl"),
                    "--session",
                    config.session,
                    *extra_args,
                    *config.cp_args,
                ),
                nursery,
            )
            if config.during is not None:
                nursery.start_soon(config.during, self)
            with trio.move_on_after(config.timeout):
                await cp.wait()
            cp_code = cp.returncode
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
        events, _ = read_trace(files)
        results = (
            json.loads((self.dir / "results.json").read_text())
            if (self.dir / "results.json").exists()
            else {}
        )
        state = json.loads((self.dir / "card.json").read_text()) if (self.dir / "card.json").exists() else {}
        logs = {p.stem: p.read_text(errors="replace") for p in self.dir.glob("*.log")}
        extra_results = []
        for name, _ in self._extra_servers():
            path = self.dir / f"results-{name}.json"
            extra_results.append(json.loads(path.read_text()) if path.exists() else {})
        return RunResult(config, cp_code, events, results, state, self.dir, logs, extra_results)

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
