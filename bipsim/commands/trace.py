"""`bipsim trace`: turn JSONL traces into ladders (text, svg, html, mermaid), pcap, or compare/replay them."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bipsim.errors import CliError
from bipsim.trace.diff import Divergence
from bipsim.trace.events import Layer, TraceEvent
from bipsim.trace.reader import TraceFormatError, read_trace


def load(paths: tuple[str, ...], strict: bool = False) -> list[TraceEvent]:
    """Reads and merges trace files; reports every bad line on stderr (or fails on the first with --strict)."""
    try:
        events, problems = read_trace(paths, strict=strict)
    except TraceFormatError as exc:
        raise CliError(f"invalid trace line: {exc}", exit_code=2) from exc
    for problem in problems:
        click.echo(f"warning: skipped invalid line {problem}", err=True)
    return events


def explain(event: TraceEvent) -> str:
    """A one-line decoded meaning of an event's bytes, where a decoder for its layer exists."""
    if not event.hex:
        return ""
    if event.layer in (Layer.APDU, Layer.CAT):
        from bipsim.commands.decode_bridge import describe_apdu_bytes

        return describe_apdu_bytes(event.data)
    if event.layer is Layer.AT:
        return repr(event.data.decode("latin-1"))
    return ""


def object_differences(expected: TraceEvent, actual: TraceEvent) -> list[str]:
    """The decoded CAT objects (PROTOCOL.md section 5 names and fields) that differ between two card messages."""
    if (
        expected.layer is not Layer.APDU
        or actual.layer is not Layer.APDU
        or not expected.hex
        or not actual.hex
    ):
        return []
    try:
        from bipsim.uicc.cat_render import decode_as, to_json
    except ImportError:
        return []
    try:
        left, right = (to_json(decode_as(e.data, "auto")) for e in (expected, actual))
    except ValueError:  # TlvError is a ValueError: not a CAT message (status word, file access)
        return []
    out: list[str] = []
    for key in ("command", "device"):
        if left.get(key) != right.get(key):
            out.append(f"{key}: expected {left.get(key)}, actual {right.get(key)}")
    objects_a, objects_b = left.get("objects", []), right.get("objects", [])
    for index in range(max(len(objects_a), len(objects_b))):
        a = objects_a[index] if index < len(objects_a) else None
        b = objects_b[index] if index < len(objects_b) else None
        if a != b:
            name = (a or b or {}).get("name", "object")
            out.append(f"{name}: expected {_object_text(a)}, actual {_object_text(b)}")
    return out


def _object_text(obj: dict[str, object] | None) -> str:
    if obj is None:
        return "(absent)"
    fields = obj.get("fields")
    text = str(fields)
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{text}{'' if obj.get('cr', True) else ' (CR clear)'}"


def describe_divergence(divergence: Divergence) -> str:
    """trace diff's description plus the decoded objects that differ."""
    text = divergence.describe(explain)
    if divergence.expected is not None and divergence.actual is not None:
        for line in object_differences(divergence.expected, divergence.actual):
            text += f"\n  differs in {line}"
    return text


files_argument = click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False)
)
strict_option = click.option(
    "--strict", is_flag=True, help="Fail on the first invalid line instead of skipping it."
)


@click.group("trace")
def trace() -> None:
    """Work with JSONL traces written by --trace (PROTOCOL.md section 4). Several files merge into one timeline
    by their shared clock."""


@trace.command("render")
@files_argument
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "svg", "html", "mermaid"]),
    default="text",
    show_default=True,
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here instead of stdout.")
@click.option("--hex", "show_hex", is_flag=True, help="Text format: show each message's bytes.")
@click.option("--session", help="Only events of this session (e.g. e1, e2).")
@click.option(
    "--layers", help="Only events of these comma-separated layers (e.g. apdu,at,tcp: no CMUX frames)."
)
@strict_option
def render_cmd(
    files: tuple[str, ...],
    fmt: str,
    output: str | None,
    show_hex: bool,
    session: str | None,
    layers: str | None,
    strict: bool,
) -> None:
    """Draw a message sequence chart with one lane per actor (UICC, CP, AP, network, OTA server)."""
    from bipsim.trace.render import render

    events = load(files, strict)
    if session is not None:
        events = [e for e in events if e.session == session]
    if layers is not None:
        try:
            chosen = {Layer(name.strip()) for name in layers.split(",") if name.strip()}
        except ValueError as exc:
            raise CliError(f"--layers: {exc}", exit_code=2) from exc
        events = [e for e in events if e.layer in chosen]
    text = render(events, fmt, show_hex=show_hex, title=" + ".join(Path(f).name for f in files))
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


@trace.command("pcap")
@files_argument
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="The pcap file to write."
)
@strict_option
def pcap_cmd(files: tuple[str, ...], output: str, strict: bool) -> None:
    """Export APDUs as GSMTAP SIM (UDP 4729), network bytes as IP/TCP, AT (UDP 27007) and CMUX (UDP 27010)."""
    from bipsim.trace.pcap import export_pcap

    count = export_pcap(load(files, strict), output)
    click.echo(f"wrote {count} packets to {output}")


@trace.command("diff")
@click.argument("expected", type=click.Path(exists=True, dir_okay=False))
@click.argument("actual", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--layers",
    default="apdu,at,tcp",
    show_default=True,
    help="Comma-separated layers whose messages are compared.",
)
def diff_cmd(expected: str, actual: str, layers: str) -> None:
    """Compare two traces message by message (bytes, direction, layer; not timing). Exit 0 when they match,
    1 at the first divergence, which is printed with both sides' bytes and decoded meaning."""
    from bipsim.trace.diff import first_divergence

    try:
        chosen = frozenset(Layer(name.strip()) for name in layers.split(",") if name.strip())
    except ValueError as exc:
        raise CliError(f"--layers: {exc}", exit_code=2) from exc
    divergence = first_divergence(load((expected,)), load((actual,)), chosen)
    if divergence is None:
        click.echo("traces match")
        return
    click.echo(describe_divergence(divergence))
    sys.exit(1)


REPLAY_HELP = """Play the recorded side of a run against the live other side; stop at the first divergence.

\b
--as card  (the modem under test) runs a live CP (`bipsim cp --card trace:F`) and a live AP on a
           pty pair, exactly as `bipsim scenario run` does. The recorded card answers the CP's APDUs
           and a recorded OTA server on the recorded 127.0.0.1 port answers its TCP connection with the
           server's recorded bytes (a live server cannot continue the recorded card's PSK-TLS session).
           Every APDU the CP sends and every byte that reaches the server is compared with the recording.
--as server  (the card under test) runs a live CP with its simulated card and a live AP; the
           recorded server on the recorded port answers with its recorded bytes once the card's
           bytes match the recording. Needs the card's seed (--card-seed or $BIPSIM_CARD_SEED,
           as when recorded) and the same profile/state; the server's randoms are in its bytes.
           A divergence names the TLS records (decrypted with the profile's PSK: HTTP request
           line and X-Admin headers).
--as ap      (the modem under test) runs a live CP on a pty; the recorded AP sends its AT
           commands, then per CMUX DLC its frames (and the network bytes it relayed) once the
           CP's recorded bytes on that DLC arrived. The CP's payload is compared per DLC as a
           stream (not frames, not the interleaving of DLCs); DLC 0 messages in any order.
           --card recorded (default) or sim (with --card-seed; the simulated card's power-on
           timing can make an early AT+CIMI differ).

\b
Toolkit APDUs (TERMINAL PROFILE, FETCH, TR, ENVELOPE, STATUS) and file access (SELECT, READ ...)
are each compared in their recorded order, not their interleaving (which follows the AP's timing).
How the CP cuts a server flight larger than the card's buffer into Data Available events also
depends on timing, so a trace with such flights may diverge at a Data Available envelope.

Exit 0 when the run matches the recording; 1 at the first divergence (printed with the expected and
actual bytes, their decoded meaning and the patent step) or when the live run cannot start; 2 for
unusable input (nothing to replay, several sessions without --session).
"""


@trace.command("replay", help=REPLAY_HELP)
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--as",
    "role",
    type=click.Choice(["card", "ap", "server"]),
    required=True,
    help="The recorded side to play (the other sides run live).",
)
@click.option("--session", help="The session of the trace to replay (when it holds several, e.g. e1 and e2).")
@click.option(
    "--bearer",
    type=click.Choice(["auto", "own-stack", "ap-proxy"]),
    help="The live CP's bearer; default: the recording's (AT%WEBOPCH: ap-proxy, AT%GETNET: own-stack).",
)
@click.option("--timeout", default=60.0, show_default=True, help="Seconds the live run may take.")
@click.option(
    "--trace", "trace_path", type=click.Path(dir_okay=False), help="Write the live run's merged trace here."
)
@click.option(
    "--keep",
    "keep_dir",
    type=click.Path(file_okay=False),
    help="Keep the live processes' files (traces, logs) in this folder.",
)
@click.option(
    "--card-seed",
    metavar="HEX",
    envvar="BIPSIM_CARD_SEED",
    help="--as server / --as ap --card sim: the live card's random seed, as when recorded "
    "(default: $BIPSIM_CARD_SEED).",
)
@click.option(
    "--profile",
    "profile_path",
    type=click.Path(exists=True, dir_okay=False),
    help="--as server / --as ap --card sim: the live card's profile, as when recorded (default: built-in).",
)
@click.option(
    "--card",
    "card_kind",
    type=click.Choice(["recorded", "sim"]),
    default="recorded",
    show_default=True,
    help="--as ap: the card of the live CP: the recorded one, or a simulated card (needs --card-seed).",
)
def replay_cmd(
    file: str,
    role: str,
    session: str | None,
    bearer: str | None,
    timeout: float,
    trace_path: str | None,
    keep_dir: str | None,
    card_seed: str | None,
    profile_path: str | None,
    card_kind: str,
) -> None:
    import shutil
    import tempfile

    events = load((file,))
    sessions = sorted({e.session for e in events if e.session})
    if session is not None:
        events = [e for e in events if e.session == session]
    elif len(sessions) > 1:
        raise CliError(f"{file} holds sessions {', '.join(sessions)}: choose one with --session", exit_code=2)
    directory = Path(keep_dir) if keep_dir else Path(tempfile.mkdtemp(prefix="bipsim-replay-"))
    directory.mkdir(parents=True, exist_ok=True)
    label = session or (sessions or ["replay"])[0]
    try:
        if role == "card":
            code = replay_card(events, directory, bearer, timeout, trace_path, label)
        elif role == "server":
            code = replay_server(
                events, directory, bearer, timeout, trace_path, label, card_seed, profile_path
            )
        else:
            code = replay_ap(
                events, directory, timeout, trace_path, label, card_kind, card_seed, profile_path
            )
    finally:
        if not keep_dir:
            shutil.rmtree(directory, ignore_errors=True)
    if code:
        sys.exit(code)


def _recorded_bearer(events: list[TraceEvent]) -> str:
    at = [e.data for e in events if e.layer is Layer.AT and e.hex]
    if any(b"%WEBOPCH" in data for data in at):
        return "ap-proxy"
    if any(b"%GETNET" in data for data in at):
        return "own-stack"
    return "auto"


def replay_card(
    events: list[TraceEvent],
    directory: Path,
    bearer: str | None,
    timeout: float,
    trace_path: str | None,
    label: str,
) -> int:
    """Runs the live CP and AP against the recorded card and server; prints the verdict; returns the exit code."""
    import trio

    from bipsim.scenarios.harness import Harness, HarnessError, RunConfig, RunResult
    from bipsim.trace.replay import LiveCardCheck, RecordedServer, open_channel_address, server_tapes
    from bipsim.uicc.recorded_card import exchanges

    recorded = exchanges(events)
    if not recorded:
        raise CliError("the trace holds no APDU exchanges between the CP and the card to replay", exit_code=2)
    tapes = server_tapes(events)
    port = next((tape.port for tape in tapes if tape.port), None)
    if tapes and port is None:
        address = open_channel_address(events)
        port = address[1] if address else None
    if tapes and port is None:
        raise CliError("the trace's network connection names no server port to listen on", exit_code=2)
    tape_file = directory / "recorded.jsonl"
    tape_file.write_text("".join(e.to_json() + "\n" for e in events), encoding="utf-8")
    config = RunConfig(
        session=label,
        bearer=bearer or _recorded_bearer(events),
        server=False,
        cp_args=["--card", f"trace:{tape_file}"],
        timeout=timeout,
    )
    check = LiveCardCheck(events, directory / "cp.jsonl")
    server = RecordedServer(tapes, port or 0) if tapes else None
    order: list[str] = []  # which side diverged first

    async def watch(harness: Harness) -> None:
        while True:
            check.poll()
            if check.diverged and "card" not in order:
                order.append("card")
            if server is not None and server.divergence is not None and "server" not in order:
                order.append("server")
            if order:
                await trio.sleep(0.2)  # let the CP record what it did with the card's error, then stop it
                cp = harness.processes.get("cp")
                if cp is not None and cp.returncode is None:
                    cp.terminate()
                return
            await trio.sleep(0.05)

    async def main() -> RunResult:
        listeners = None
        if server is not None:
            try:
                listeners = await server.listen()
            except OSError as exc:
                raise CliError(f"cannot listen on the recorded server port 127.0.0.1:{port}: {exc}") from exc
        async with trio.open_nursery() as nursery:
            if server is not None:
                await nursery.start(server.run, listeners)
            config.during = watch
            result = await Harness(config, directory).run()
            nursery.cancel_scope.cancel()
        return result

    try:
        result = trio.run(main)
    except BaseExceptionGroup as group:
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        if isinstance(leaf, CliError):
            raise leaf from group
        if isinstance(leaf, HarnessError | OSError):
            raise CliError(f"replay could not run the live processes: {leaf}") from group
        raise
    except HarnessError as exc:
        raise CliError(f"replay could not start the live processes: {exc}") from exc
    check.poll()
    if check.diverged and "card" not in order:
        order.append("card")
    if server is not None and server.divergence is not None and "server" not in order:
        order.append("server")
    if trace_path:
        Path(trace_path).write_text("".join(e.to_json() + "\n" for e in result.events), encoding="utf-8")

    card_divergence = check.divergence()
    if card_divergence is not None and "card" not in order:
        order.append("card")  # the CP stopped before playing the whole recording
    if not order and result.cp_code != 0:
        tail = result.logs.get("cp", "").strip().splitlines()[-1:]
        click.echo(f"replay failed: the live CP exited with {result.cp_code}: {' '.join(tail)}", err=True)
        return 1
    if not order:
        flights = sum(len(tape.flights) for tape in tapes)
        steps = sorted({e.step for e in result.events if e.step})
        shown = f" (steps {steps[0]}..{steps[-1]} seen)" if steps else ""
        click.echo(
            f"replay matches: {len(recorded)} APDU exchanges and {flights} network flights played "
            f"against the live CP{shown}"
        )
        return 0
    for side in order:
        if side == "card" and card_divergence is not None:
            click.echo("replay diverged: the live CP sent the card other bytes than the recording")
            click.echo(
                describe_divergence(card_divergence).replace("divergence at message", "at APDU exchange")
            )
        elif side == "server" and server is not None and server.divergence is not None:
            click.echo("replay diverged: the server received other bytes than the recording")
            click.echo(server.divergence.describe())
    return 1


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


def replay_server(
    events: list[TraceEvent],
    directory: Path,
    bearer: str | None,
    timeout: float,
    trace_path: str | None,
    label: str,
    seed: str | None,
    profile_path: str | None,
) -> int:
    """Runs a live CP (its simulated card seeded) and AP against the recorded server; returns the exit code."""
    import os

    import trio

    from bipsim.scenarios.harness import Harness, HarnessError, RunConfig, RunResult
    from bipsim.trace.replay import RecordedServer, open_channel_address, server_tapes
    from bipsim.uicc.ota_agent import SEED_ENV
    from bipsim.uicc.profile import dump_profile, load_profile

    tapes = server_tapes(events)
    if not tapes or not any(f.from_server for tape in tapes for f in tape.flights):
        raise CliError("the trace holds no bytes from the server to replay", exit_code=2)
    port = next((tape.port for tape in tapes if tape.port), None)
    if port is None:
        address = open_channel_address(events)
        port = address[1] if address else None
    if port is None:
        raise CliError("the trace's network connection names no server port to listen on", exit_code=2)
    try:
        profile = load_profile(profile_path).with_overrides(ota_port=port, link_mode="background")
    except (ValueError, OSError) as exc:
        raise CliError(f"--profile: {exc}", exit_code=2) from exc
    live_profile = directory / "replay-profile.toml"
    live_profile.write_text(dump_profile(profile), encoding="utf-8")
    if seed:
        os.environ[SEED_ENV] = seed  # the live CP inherits it (Harness passes the environment on)
    elif profile.ota_tls:
        click.echo(
            "warning: no --card-seed: the live card's TLS randoms are fresh, so its ClientHello cannot match",
            err=True,
        )
    config = RunConfig(
        session=label,
        bearer=bearer or _recorded_bearer(events),
        server=False,
        cp_args=["--profile", str(live_profile)],  # the last --profile wins: the recorded server's port
        timeout=timeout,
    )
    server = RecordedServer(tapes, port, psk=profile.psk)

    async def watch(harness: Harness) -> None:
        await server.done.wait()
        if server.divergence is not None:
            await trio.sleep(0.2)  # let the CP record what the card did, then stop it
            cp = harness.processes.get("cp")
            if cp is not None and cp.returncode is None:
                cp.terminate()

    async def main() -> RunResult:
        try:
            listeners = await server.listen()
        except OSError as exc:
            raise CliError(f"cannot listen on the recorded server port 127.0.0.1:{port}: {exc}") from exc
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run, listeners)
            config.during = watch
            result = await Harness(config, directory).run()
            nursery.cancel_scope.cancel()
        return result

    try:
        result = trio.run(main)
    except BaseExceptionGroup as group:
        leaf = _unwrap(group)
        if isinstance(leaf, CliError):
            raise leaf from group
        if isinstance(leaf, HarnessError | OSError):
            raise CliError(f"replay could not run the live processes: {leaf}") from group
        raise
    except HarnessError as exc:
        raise CliError(f"replay could not start the live processes: {exc}") from exc
    if trace_path:
        Path(trace_path).write_text("".join(e.to_json() + "\n" for e in result.events), encoding="utf-8")
    flights = sum(len(tape.flights) for tape in tapes)
    if server.divergence is not None:
        click.echo("replay diverged: the live card sent the recorded server other bytes than the recording")
        click.echo(server.divergence.describe())
        return 1
    if server.flights_played < flights:
        owed = [f for tape in tapes for f in tape.flights][server.flights_played]
        step = f" [{owed.first.step}]" if owed.first.step else ""
        click.echo(
            f"replay diverged: the live card stopped after {server.flights_played} of {flights} network "
            f"flights; expected next{step}: {owed.first.src.value}->{owed.first.dst.value} "
            f"{owed.first.summary}\n    bytes: {owed.data.hex().upper()}"
        )
        return 1
    if result.cp_code != 0:
        tail = result.logs.get("cp", "").strip().splitlines()[-1:]
        click.echo(f"replay failed: the live CP exited with {result.cp_code}: {' '.join(tail)}", err=True)
        return 1
    steps = sorted({e.step for e in result.events if e.step})
    shown = f" (steps {steps[0]}..{steps[-1]} seen)" if steps else ""
    click.echo(
        f"replay matches: {flights} network flights of {len(tapes)} connection(s) played against the live "
        f"card{shown}"
    )
    return 0


def replay_ap(
    events: list[TraceEvent],
    directory: Path,
    timeout: float,
    trace_path: str | None,
    label: str,
    card_kind: str,
    seed: str | None,
    profile_path: str | None,
) -> int:
    """Runs a live CP on a pty against the recorded AP (which also plays the network it relayed)."""
    import os
    import sys as system
    import time

    import trio

    from bipsim.link.pty import PtyStream
    from bipsim.link.pty_relay import PtyPair
    from bipsim.trace.reader import read_trace
    from bipsim.trace.recorder import T0_ENV
    from bipsim.trace.replay import RecordedAp, ap_tape, open_channel_address
    from bipsim.uicc.ota_agent import SEED_ENV
    from bipsim.uicc.profile import dump_profile, load_profile

    tape = ap_tape(events)
    if not tape.commands and not tape.channels:
        raise CliError("the trace holds no AT or CMUX bytes of the AP to replay", exit_code=2)
    tape_file = directory / "recorded.jsonl"
    tape_file.write_text("".join(e.to_json() + "\n" for e in events), encoding="utf-8")
    try:
        profile = load_profile(profile_path).with_overrides(link_mode="background")
        address = open_channel_address(events)
        if address is not None:  # a simulated card must open the channel the recording opened
            profile = profile.with_overrides(ota_port=address[1])
    except (ValueError, OSError) as exc:
        raise CliError(f"--profile: {exc}", exit_code=2) from exc
    (directory / "profile.toml").write_text(dump_profile(profile), encoding="utf-8")
    card_args = ["--card", f"trace:{tape_file}"] if card_kind == "recorded" else []
    env = dict(os.environ)
    env[T0_ENV] = repr(time.monotonic())
    if seed:
        env[SEED_ENV] = seed
    player = RecordedAp(tape)
    cp_code: list[int | None] = [None]

    async def main() -> None:
        pair = PtyPair.create()
        async with trio.open_nursery() as nursery:
            await nursery.start(pair.run)
            args = [
                *(system.executable, "-m", "bipsim", "cp", "--port", pair.paths[1]),
                *("--profile", str(directory / "profile.toml"), "--state", str(directory / "card.json")),
                *("--bearer", "ap-proxy", "--once", "--trace", str(directory / "cp.jsonl")),
                *("--session", label, *card_args),
            ]
            with (directory / "cp.log").open("wb") as log:
                cp = await nursery.start(
                    lambda task_status: trio.run_process(
                        args, stdout=log, stderr=log, env=env, check=False, task_status=task_status
                    )
                )
                stream = PtyStream.open(pair.paths[0])
                with trio.move_on_after(timeout):
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
                cp_code[0] = cp.returncode
                await stream.aclose()
            nursery.cancel_scope.cancel()
        await pair.aclose()

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        leaf = _unwrap(group)
        if isinstance(leaf, OSError):
            raise CliError(f"replay could not run the live CP: {leaf}") from group
        raise
    except OSError as exc:
        raise CliError(f"replay could not run the live CP: {exc}") from exc
    if trace_path and (directory / "cp.jsonl").exists():
        live, _ = read_trace([directory / "cp.jsonl"])
        Path(trace_path).write_text("".join(e.to_json() + "\n" for e in live), encoding="utf-8")
    if player.divergence is not None:
        click.echo("replay diverged: the live CP sent the recorded AP other bytes than the recording")
        click.echo(player.divergence.describe())
        return 1
    total = sum(1 for items in tape.channels.values() for item in items if item.from_ap)
    if player.items_played < total:
        click.echo(f"replay diverged: the run timed out after {player.items_played} of {total} AP sends")
        return 1
    channels = ", ".join(str(dlci) for dlci in sorted(tape.channels))
    click.echo(
        f"replay matches: {len(tape.commands)} AT commands before CMUX and {total} AP sends on DLCs "
        f"{channels} played against the live CP (its exit code {cp_code[0]})"
    )
    return 0
