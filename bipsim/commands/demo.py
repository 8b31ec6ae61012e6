"""`bipsim demo`: both embodiments of CN101594614A end to end, with a live ladder of the patent's steps.

For each embodiment the OTA server, the CP and the AP run as three separate processes joined by a pty pair (the
harness of bipsim.scenarios), the card downloads the built-in campaign (an applet and a new EF_SPN), and the
processes' JSONL traces (docs/protocols.md, "Traces") are followed while they grow, so every patent step (docs/protocols.md, "The patent's steps")
appears as it happens. The summary then checks what scenarios check: every step in order, the campaign completed
with 90 00, the card's registry and file, and the server's closing 204.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import click
import trio
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bipsim.commands.packet_options import packet_plane_options, wlan_option
from bipsim.errors import CliError
from bipsim.scenarios.embodiments import card_settings, embodiment_config
from bipsim.scenarios.harness import Harness, HarnessError, RunResult
from bipsim.trace.events import TraceEvent
from bipsim.trace.kinds import Kind
from bipsim.trace.reader import copy_key
from bipsim.trace.render import describe
from bipsim.trace.steps import embodiment_steps

# the lanes of the ladder, left to right; the server's "net" side is drawn on the server's lane
LANES = ("uicc", "cp", "ap", "ota")
LANE_OF = {"uicc": 0, "cp": 1, "ap": 2, "ota": 3, "net": 3}
LANE_WIDTH = 6


def _lane(actor: str) -> int:
    """An actor's lane; the actors of later sections (pgw, host, ...) are drawn on the network's side."""
    return LANE_OF.get(actor, LANE_OF["net"])


LAYER_STYLE = {
    "apdu": "green",
    "at": "yellow",
    "cmux": "magenta",
    "app": "magenta",
    "tcp": "cyan",
    "ip": "cyan",
    "tls": "blue",
    "http": "blue",
    "gp": "blue",
}
TITLES = {
    1: "Embodiment 1: the CP's own TCP/IP stack (AT%GETNET, then the CP connects; fig. 4, S401..S415)",
    2: "Embodiment 2: the AP proxies over Wi-Fi (AT%WEBOPCH, data over CMUX; fig. 7, S701..S718)",
}
SHORT = {1: "embodiment 1 (CP's own stack)", 2: "embodiment 2 (AP proxy)"}
DUPLICATE_WINDOW = 0.05  # seconds within which the same message seen by both ends counts once
HOLD_BACK = 0.25  # seconds a followed event waits for slower writers so the three files print in time order


@dataclass
class Glyphs:
    lane: str
    line: str
    right: str
    left: str
    origin: str
    repeat: str

    @classmethod
    def for_encoding(cls, encoding: str) -> Glyphs:
        if encoding.lower().replace("-", "").startswith("utf"):
            return cls("│", "─", "▶", "◀", "●", "↻")
        return cls("|", "-", ">", "<", "o", "~")


class TraceFollower:
    """Reads the complete lines that processes have appended to their JSONL traces since the last poll."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self._offsets = {path: 0 for path in paths}
        self._partial = {path: b"" for path in paths}

    def poll(self) -> list[tuple[str, TraceEvent]]:
        """(file stem, event) of every complete new line."""
        events: list[tuple[str, TraceEvent]] = []
        for path in self.paths:
            try:
                with path.open("rb") as handle:
                    handle.seek(self._offsets[path])
                    chunk = handle.read()
            except FileNotFoundError:
                continue
            self._offsets[path] += len(chunk)
            lines = (self._partial[path] + chunk).split(b"\n")
            self._partial[path] = lines.pop()
            for line in lines:
                try:
                    events.append((path.stem, TraceEvent.from_json(line.decode("utf-8"))))
                except (ValueError, KeyError, TypeError, RecursionError):
                    continue  # the final read_trace reports bad lines; the live view just skips them
        return events


class Ladder:
    """Prints one row per patent step as it happens: time, step, an arrow between lanes, and the message.

    Each kind of message (step, sender, receiver, layer, `kind`) gets a row the first time; later repeats (more
    SEND DATA and RECEIVE DATA rounds) are counted and shown as one line before the next new step, unless
    `verbose`. A message both ends recorded is shown once (the copies share trace/reader.py's `copy_key`). Error
    events always get a row.
    """

    def __init__(self, console: Console, embodiment: int, *, verbose: bool) -> None:
        self.console = console
        self.codes = {step.code for step in embodiment_steps(embodiment)}
        self.verbose = verbose
        self.glyphs = Glyphs.for_encoding(console.encoding)
        self._pending: list[tuple[str, TraceEvent]] = []
        self._printed: set[tuple[str, ...]] = set()
        self._recent: dict[tuple[object, ...], tuple[str, float]] = {}
        self._seen_steps: set[str] = set()
        self._repeats: Counter[str] = Counter()
        self.rows = 0

    def header(self) -> None:
        lanes = "".join(name.center(LANE_WIDTH) for name in LANES)
        self._print(Text(f"{'t (s)':>7}  {'step':<5}  {lanes}  message", style="bold"))

    def feed(self, events: list[tuple[str, TraceEvent]]) -> None:
        """Buffers (file stem, event) pairs from the followed traces."""
        self._pending.extend(events)

    def release(self, upto: float | None) -> None:
        """Prints the buffered events up to time `upto` (all of them when None), in time order."""
        self._pending.sort(key=lambda item: item[1].t)
        ready = [item for item in self._pending if upto is None or item[1].t <= upto]
        self._pending = self._pending[len(ready) :]
        for origin, event in ready:
            self._show(origin, event)
        if upto is None:
            self._flush_repeats()

    def _show(self, origin: str, event: TraceEvent) -> None:
        if event.error:
            self._flush_repeats()
            self._row(event, "!!", "bold red")
            return
        if event.step not in self.codes:
            return
        assert event.step is not None
        # the sender and the receiver both record a message crossing the line: show it once
        same = copy_key(event)
        if same is not None:
            last = self._recent.get(same)
            self._recent[same] = (origin, event.t)
            if last is not None and last[0] != origin and event.t - last[1] < DUPLICATE_WINDOW:
                return
        key = (event.step, event.src.value, event.dst.value, event.layer.value, event.kind)
        if self.verbose or key not in self._printed:
            if event.step not in self._seen_steps:
                self._flush_repeats()
            self._printed.add(key)
            self._seen_steps.add(event.step)
            self._row(event, event.step, "bold")
        else:
            self._repeats[event.step] += 1

    def _lanes(self, src: int | None, dst: int | None) -> list[str]:
        g = self.glyphs
        cells = [" "] * (LANE_WIDTH * len(LANES))
        centers = [i * LANE_WIDTH + LANE_WIDTH // 2 for i in range(len(LANES))]
        for center in centers:
            cells[center] = g.lane
        if src is None or dst is None:
            return cells
        a, b = centers[src], centers[dst]
        if a == b:
            cells[a] = g.origin
            return cells
        low, high = min(a, b), max(a, b)
        for x in range(low + 1, high):
            cells[x] = g.line
        cells[a] = g.origin
        if a < b:
            cells[b - 1] = g.right
        else:
            cells[b + 1] = g.left
        return cells

    def _row(self, event: TraceEvent, label: str, label_style: str) -> None:
        style = "red" if event.error else LAYER_STYLE.get(event.layer.value, "")
        text = Text(f"{event.t:7.3f}  ")
        text.append(f"{label:<5}", style=label_style)
        text.append("  ")
        text.append("".join(self._lanes(_lane(event.src.value), _lane(event.dst.value))), style=style)
        text.append("  ")
        text.append(describe(event), style=style)
        self._print(text)
        self.rows += 1

    def _flush_repeats(self) -> None:
        if not self._repeats:
            return
        counts = ", ".join(f"{code} x{n}" for code, n in sorted(self._repeats.items()))
        text = Text(" " * 16 + "".join(self._lanes(None, None)) + "  ")
        text.append(f"{self.glyphs.repeat} repeated: {counts}", style="dim")
        self.console.print(text, soft_wrap=not self.console.is_terminal)  # wraps on a terminal: no cut counts
        self._repeats.clear()

    def _print(self, text: Text) -> None:
        # a terminal gets one row per event cut to its width; a pipe or file gets whole lines, never escape codes
        if self.console.is_terminal:
            self.console.print(text, no_wrap=True, overflow="ellipsis")
        else:
            self.console.print(text, soft_wrap=True)


@dataclass
class Outcome:
    """One embodiment's run and what the checks said about it."""

    embodiment: int
    directory: Path
    wall: float = 0.0
    run: RunResult | None = None
    failure: str | None = None
    line: str = ""
    line_bytes: int | None = None
    facts: dict[str, str] = field(default_factory=dict)


def _short_reason(exc: BaseException) -> str:
    # the scenario checks append the run's details in parentheses; the one-line verdict keeps the check itself
    return str(exc).split(" (cp exit ", 1)[0]


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def _run_embodiment(
    number: int,
    directory: Path,
    origin: float,
    console: Console,
    *,
    port_a: str | None,
    port_b: str | None,
    timeout: float,
    verbose: bool,
    card: str = "sim",
    plane: dict[str, object] | None = None,
) -> Outcome:
    outcome = Outcome(number, directory)
    config = embodiment_config(
        number, port_a=port_a, port_b=port_b, timeout=timeout, **card_settings(card), **(plane or {})
    )
    harness = Harness(config, directory)
    harness.origin = origin  # one clock for the whole demo, so both sessions merge into one trace
    console.print()
    console.print(TITLES[number], style="bold underline", soft_wrap=True)
    ladder = Ladder(console, number, verbose=verbose)
    ladder.header()
    follower = TraceFollower([directory / f"{name}.jsonl" for name in ("cp", "ap", "ota")])
    started = time.monotonic()

    async def follow() -> None:
        while True:
            ladder.feed(follower.poll())
            ladder.release(time.monotonic() - origin - HOLD_BACK)
            await trio.sleep(0.05)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            try:
                outcome.run = await harness.run()
            finally:
                nursery.cancel_scope.cancel()
    except (HarnessError, OSError) as exc:
        outcome.failure = str(exc)
    except BaseExceptionGroup as group:
        leaf = _first_leaf(group)
        if not isinstance(leaf, HarnessError | OSError):
            raise
        outcome.failure = str(leaf)
    outcome.wall = time.monotonic() - started
    ladder.feed(follower.poll())
    ladder.release(None)
    if ladder.rows == 0:
        console.print("  (no patent step was recorded)", style="dim")
    if port_a and port_b:
        outcome.line = f"{port_a} <-> {port_b}"
    elif harness.pair is not None:
        outcome.line = f"built-in pty pair {harness.pair.paths[0]} <-> {harness.pair.paths[1]}"
        outcome.line_bytes = sum(stats.bytes for stats in harness.pair.stats)
    return outcome


def _judge(outcome: Outcome) -> None:
    """Runs the scenario checks on a finished run and fills the summary's facts."""
    from bipsim.scenarios.base import ScenarioFailed, check_ota_completed, check_steps
    from bipsim.trace.steps import check_step_order

    run = outcome.run
    facts = outcome.facts
    facts["line"] = outcome.line or "-"
    facts["time"] = f"{outcome.wall:.1f} s in all"
    if run is None:
        outcome.failure = outcome.failure or "the processes did not run"
        return
    number = outcome.embodiment
    steps = embodiment_steps(number)
    step_events = [e for e in run.events if e.step in {s.code for s in steps}]
    seen = {e.step for e in step_events}
    missing = [s.code for s in steps if s.code not in seen]
    misordered = [p for p in check_step_order(run.events, number) if "comes before" in p]
    if missing:
        order = f"seen; missing {', '.join(missing)}"
    elif misordered:
        order = f"seen, out of order: {'; '.join(misordered)}"
    else:
        order = "in the patent's order"
    facts["steps"] = f"{len(seen)}/{len(steps)} {order} ({len(step_events)} events)"
    if step_events:
        facts["time"] += f", {step_events[-1].t - step_events[0].t:.3f} s from {steps[0].code} to the end"
    down = sum(len(e.data) for e in run.events if e.layer.value == "tcp" and e.src.value == "ota")
    up = sum(len(e.data) for e in run.events if e.layer.value == "tcp" and e.dst.value == "ota")
    facts["bytes"] = f"TCP {down:,} down, {up:,} up"
    if outcome.line_bytes is not None:
        facts["bytes"] += f"; serial line {outcome.line_bytes:,}"
    gp = run.card_state.get("gp", {})
    applets = sorted(gp.get("applications", {}))
    spn_hex = run.card_state.get("files", {}).get("3F00/7FF0/6F46", "")
    if run.card_state:
        spn = bytes.fromhex(spn_hex)[1:].rstrip(b"\xff").decode("ascii", "replace") if spn_hex else "?"
        facts["card"] = f"applet {', '.join(a.upper() for a in applets) or 'none'}; EF_SPN {spn!r}"
    elif run.config.card != "sim":
        facts["card"] = f"{run.config.card}: its state stays behind the reader; checked by its status words"
    else:
        facts["card"] = "no saved card state"
    finals = [
        str(e.field("status")) for e in run.events if e.kind == Kind.HTTP_RESPONSE and e.src.value == "ota"
    ]
    scripts = [s for card in run.results.values() for s in card.get("scripts", [])]
    status = "completed" if run.completed else "not completed"
    facts["server"] = (
        f"campaign {status}, {len(scripts)} scripts, last answer {finals[-1] if finals else '-'}"
    )
    if outcome.failure:
        return
    try:
        check_ota_completed(run)
        check_steps(run, number)
        if not finals or finals[-1] != "204":
            raise ScenarioFailed("the server's last answer was not 204 No Content")
    except ScenarioFailed as exc:
        outcome.failure = _short_reason(exc)
        # the cause is usually the first errors the processes traced (a refused +CIMI, a failed link) or the
        # last thing one of them logged
        errors = list(
            dict.fromkeys(f"{e.summary} ({e.src.value}->{e.dst.value})" for e in run.events if e.error)
        )
        if errors:
            outcome.failure += f"; first errors: {'; '.join(errors[:2])}"
        for name in ("cp", "ap", "ota"):
            tail = run.logs.get(name, "").strip().splitlines()
            if tail and not tail[-1].startswith("listening on "):
                outcome.failure += f"; {name} said: {tail[-1].strip()[:160]}"
                break


def _summary(console: Console, outcomes: list[Outcome]) -> None:
    table = Table(title="Summary", title_justify="left", show_lines=False, expand=False)
    table.add_column("", style="bold", no_wrap=True)
    for outcome in outcomes:
        table.add_column(SHORT[outcome.embodiment], overflow="fold")
    verdicts = []
    for outcome in outcomes:
        verdicts.append(
            "[bold green]PASSED[/]" if outcome.failure is None else f"[bold red]FAILED[/]: {outcome.failure}"
        )
    table.add_row("result", *verdicts)
    for key in ("steps", "bytes", "time", "card", "server", "line"):
        table.add_row(key, *(outcome.facts.get(key, "-") for outcome in outcomes))
    console.print()
    console.print(table)


def _export(outcomes: list[Outcome], trace_path: str | None, pcap_path: str | None) -> int:
    from bipsim.trace.reader import read_trace

    files = [
        o.directory / f"{name}.jsonl"
        for o in outcomes
        for name in ("cp", "ap", "ota")
        if (o.directory / f"{name}.jsonl").exists()
    ]
    events, _ = read_trace(files)
    if trace_path:
        Path(trace_path).write_text("".join(e.to_json() + "\n" for e in events), encoding="utf-8")
    if pcap_path:
        from bipsim.trace.pcap import export_pcap

        export_pcap(events, pcap_path)
    return len(events)


def _check_output(option: str, path: str | None) -> None:
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise CliError(f"{option} {path}: is a directory")
    if not target.parent.is_dir():
        raise CliError(f"{option} {path}: directory {target.parent} does not exist")


@click.command("demo")
@click.option(
    "--embodiment",
    type=click.Choice(["1", "2", "both"]),
    default="both",
    show_default=True,
    help="Which patent embodiment to run: 1 = the CP's own TCP/IP stack, 2 = the AP as proxy over Wi-Fi.",
)
@click.option(
    "--trace",
    "trace_path",
    type=click.Path(dir_okay=False),
    help="Write the merged JSONL trace of every process and session here (docs/protocols.md, Traces).",
)
@click.option(
    "--pcap",
    "pcap_path",
    type=click.Path(dir_okay=False),
    help="Write a pcap here: APDUs as GSMTAP SIM, the network side as IP/TCP (open it in Wireshark).",
)
@click.option(
    "--port-a",
    metavar="LINE",
    help="Use an existing serial line pair instead of the built-in one: the AP's end (a device path or a "
    "pyserial URL).",
)
@click.option(
    "--port-b",
    metavar="LINE",
    help="The CP's end of that pair (socat's ptys, or USB-serial adapters on a null modem).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1.0),
    metavar="SECONDS",
    default=20.0,
    show_default=True,
    help="Seconds one session may take before it counts as failed.",
)
@click.option(
    "--keep",
    "keep_dir",
    type=click.Path(file_okay=False),
    help="Keep each process's trace, log, card state and the server's results in this folder.",
)
@click.option("-v", "--verbose", is_flag=True, help="Show every step event in the ladder, repeats included.")
@click.option(
    "--card",
    default="sim",
    show_default=True,
    metavar="sim|pcsc:N|pcsc:NAME",
    help="The CP's card, as `bipsim cp --card` takes it: sim (the simulated UICC), pcsc:N (the card in PC/SC "
    "reader N) or pcsc:NAME (the first reader whose name holds NAME). With a PC/SC card the OTA server listens "
    "at the built-in profile's address, 127.0.0.1:4443, where a card served by `bipsim card serve --vpcd` "
    "connects; its state stays behind the reader, so the summary checks the card by its status words. A PC/SC "
    "card runs one embodiment per demo (--embodiment 1 or 2).",
)
@packet_plane_options
@wlan_option
def demo(
    embodiment: str,
    trace_path: str | None,
    pcap_path: str | None,
    port_a: str | None,
    port_b: str | None,
    timeout: float,
    keep_dir: str | None,
    verbose: bool,
    card: str,
    radio: str,
    network_mode: str,
    seed: int,
    wlan: str | None,
) -> None:
    """Run the patent's embodiments end to end and show each step as it happens.

    For each embodiment, three processes start: the OTA server (`bipsim ota-server`, TLS-PSK on 127.0.0.1), the
    CP (`bipsim cp`, the modem with the simulated SIM card) and the AP (`bipsim ap`, the application processor),
    the last two joined by a serial line: a built-in pty pair, or the pair given with --port-a/--port-b. The
    card opens a BIP channel to the server and runs the built-in campaign (ota/example_campaign.toml): it updates
    EF_SPN to "BIPSIM-OTA" and loads and installs applet A0000005590010FF01.

    The ladder has one lane per party (uicc = the card, cp, ap, ota = the server) and one row per patent step
    (CN101594614A: S401..S415 for embodiment 1, S701..S718 for embodiment 2); the repeated SEND DATA / RECEIVE
    DATA rounds are counted on one line (-v shows them all). The summary checks that every step occurred in the
    patent's order, that the server completed the campaign with 90 00 and ended with 204 No Content, and that the
    card holds the applet and the new EF_SPN.

    Exit status 0 when every session passed; otherwise 1 with one line on stderr saying what failed (the
    processes' files are then kept and the line says where).

    \b
    Examples:
      bipsim demo
      bipsim demo --embodiment 2 --trace demo.jsonl --pcap demo.pcap
      bipsim trace render demo.jsonl            # the full ladder of a saved trace
      socat -d -d pty,raw,echo=0 pty,raw,echo=0 # prints two ptys, e.g. /dev/pts/3 and /dev/pts/4
      bipsim demo --port-a /dev/pts/3 --port-b /dev/pts/4
      bipsim demo --embodiment 1 --radio gprs,loss=2% --seed 7 --pcap lossy.pcap

    --radio, --network and --seed set embodiment 1's packet data plane (the CP's own stack, its radio bearer and the
    packet gateway); --wlan the AP's Wi-Fi of embodiment 2. Without them the demo runs as it always has.
    """
    if bool(port_a) != bool(port_b):
        raise CliError("--port-a and --port-b go together")
    for option, port in (("--port-a", port_a), ("--port-b", port_b)):
        # device paths are checked now; URLs (socket://, rfc2217://) only when the processes open them
        if port and "://" not in port and not Path(port).exists():
            raise CliError(f"{option} {port}: no such device")
    _check_output("--trace", trace_path)
    _check_output("--pcap", pcap_path)
    if card != "sim":
        from bipsim.commands.scenario import check_card_spec

        check_card_spec(card)
        if embodiment == "both":
            # the simulated card is new for each embodiment; a card behind a reader takes the campaign once
            raise CliError(
                f"--card {card}: a card behind PC/SC runs one embodiment per demo (its campaign is applied "
                "once): give --embodiment 1 or --embodiment 2"
            )
    numbers = [1, 2] if embodiment == "both" else [int(embodiment)]
    if keep_dir:
        root = Path(keep_dir)
        if any(root.glob("e[12]/*")):
            raise CliError(f"--keep {keep_dir}: holds an earlier run (e1/, e2/); give an empty or new folder")
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="bipsim-demo-"))
    console = Console(highlight=False)
    started = time.monotonic()
    origin = time.monotonic()

    async def main() -> list[Outcome]:
        outcomes = []
        for number in numbers:
            directory = root / f"e{number}"
            directory.mkdir(parents=True, exist_ok=True)
            outcomes.append(
                await _run_embodiment(
                    number,
                    directory,
                    origin,
                    console,
                    port_a=port_a,
                    port_b=port_b,
                    timeout=timeout,
                    verbose=verbose,
                    card=card,
                    plane={"radio": radio, "network": network_mode, "seed": seed, "wlan": wlan},
                )
            )
        return outcomes

    try:
        outcomes = trio.run(main)
    except BaseException as exc:
        if not keep_dir:
            shutil.rmtree(root, ignore_errors=True)
        # one cause, not a tree: a closed stdout (`| head`) ends here as SystemExit, Ctrl-C as KeyboardInterrupt
        raise (_first_leaf(exc) if isinstance(exc, BaseExceptionGroup) else exc) from None
    for outcome in outcomes:
        _judge(outcome)
    _summary(console, outcomes)
    written = _export(outcomes, trace_path, pcap_path) if (trace_path or pcap_path) else 0
    failed = [o for o in outcomes if o.failure is not None]
    if failed:
        keep = keep_dir or str(root)
        reasons = "; ".join(f"{SHORT[o.embodiment]}: {o.failure}" for o in failed)
        raise CliError(f"demo failed: {reasons} (traces and logs in {keep})")
    if not keep_dir:
        shutil.rmtree(root, ignore_errors=True)
    outputs = [f"{kind} {path}" for kind, path in (("trace", trace_path), ("pcap", pcap_path)) if path]
    wrote = f"; wrote {', '.join(outputs)} ({written} events)" if outputs else ""
    names = " and ".join(SHORT[n] for n in numbers)
    console.print(
        f"\n[bold green]demo passed[/]: {names} completed in {time.monotonic() - started:.1f} s{wrote}",
        soft_wrap=True,
    )
