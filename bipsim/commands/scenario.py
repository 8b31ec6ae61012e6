"""`bipsim scenario list|run NAME`: the named scenarios of docs/protocols.md, "The patent's steps"."""

from __future__ import annotations

import shutil
import textwrap
import time
from pathlib import Path

import click

from bipsim.commands.packet_options import packet_plane_options, wlan_option
from bipsim.errors import CliError

MIN_DESCRIPTION = 30  # characters of description per line, however narrow the terminal says it is
# the scenarios whose card may be one behind PC/SC: the others change the card's profile (link mode, trigger...)
PCSC_SCENARIOS = ("embodiment1", "embodiment2")
# the scenarios that take --radio/--network/--seed/--wlan (the others set up their own network faults)
PLANE_SCENARIOS = (
    "embodiment1",
    "embodiment2",
    "radio-lossy",
    "radio-gprs",
    "pdp-drop",
    "radio-outage",
    "bip-udp",
    "bip-server",
    "bip-dns",
)


def check_card_spec(card: str) -> None:
    """A --card other than sim must read as pcsc[:N|:NAME]; the CP checks the reader itself when it starts."""
    from bipsim.uicc.pcsc_card import parse_card_spec

    try:
        parse_card_spec(card)
    except ValueError as exc:
        raise CliError(f"--card {card}: {exc}; use sim, pcsc:N or pcsc:NAME") from exc


@click.group("scenario")
def scenario() -> None:
    """List or run the named scenarios (both patent embodiments, link modes, failures)."""


@scenario.command("list")
def list_cmd() -> None:
    """Print every scenario with the first sentence about it."""
    from bipsim.scenarios.registry import SCENARIOS, describe

    width = max(len(name) for name in SCENARIOS)
    # a description too long for the terminal continues on the next lines, under its own column
    columns = max(shutil.get_terminal_size().columns, width + 2 + MIN_DESCRIPTION)
    indent = " " * (width + 2)
    for name in SCENARIOS:
        # never at a hyphen: scenario names such as push-sms must stay whole to be copied into `scenario run`
        text = textwrap.fill(
            describe(name),
            width=columns,
            initial_indent=name.ljust(width) + "  ",
            subsequent_indent=indent,
            break_on_hyphens=False,
        )
        click.echo(text)


@scenario.command("run")
@click.argument("name")
@click.option(
    "--trace", "trace_path", type=click.Path(dir_okay=False), help="Write the merged JSONL trace here."
)
@click.option("--pcap", "pcap_path", type=click.Path(dir_okay=False), help="Write a pcap of the run here.")
@click.option(
    "--keep",
    "keep_dir",
    type=click.Path(file_okay=False),
    help="Keep the processes' files (traces, logs, card state) in this folder.",
)
@click.option("--port-a", help="Use an existing line pair: the AP's end (with --port-b).")
@click.option("--port-b", help="The CP's end of the existing pair.")
@click.option(
    "--card",
    default="sim",
    show_default=True,
    metavar="sim|pcsc:N|pcsc:NAME",
    help="The CP's card, as `bipsim cp --card` takes it: sim (the simulated UICC with the scenario's profile), "
    "pcsc:N (the card in PC/SC reader N) or pcsc:NAME (the first reader whose name holds NAME). With a PC/SC "
    "card (embodiment1 and embodiment2 only) the OTA server listens at the built-in profile's address, "
    "127.0.0.1:4443, where a card served by `bipsim card serve --vpcd` connects (see --ota-listen).",
)
@click.option(
    "--ota-listen",
    metavar="HOST:PORT",
    help="With a PC/SC --card: where the OTA server listens instead of 127.0.0.1:4443, for a card whose profile "
    "sends it elsewhere (`bipsim card serve --profile F` with ota_host/ota_port in F).",
)
@packet_plane_options
@wlan_option
def run_cmd(
    name: str,
    trace_path: str | None,
    pcap_path: str | None,
    keep_dir: str | None,
    port_a: str | None,
    port_b: str | None,
    card: str,
    ota_listen: str | None,
    radio: str,
    network_mode: str,
    seed: int,
    wlan: str | None,
) -> None:
    """Run scenario NAME; exit 0 when every check passed, 1 with the failed check otherwise."""
    import tempfile

    from bipsim.scenarios.base import ScenarioFailed, ScenarioOptions
    from bipsim.scenarios.harness import HarnessError
    from bipsim.scenarios.registry import SCENARIOS

    if name not in SCENARIOS:
        raise CliError(f"no scenario {name!r}; `bipsim scenario list` shows them")
    if bool(port_a) != bool(port_b):
        raise CliError("--port-a and --port-b go together")
    if card != "sim":
        check_card_spec(card)
        if name not in PCSC_SCENARIOS:
            raise CliError(
                f"--card {card}: scenario {name} sets up the card's profile itself; a PC/SC card runs "
                f"{' and '.join(PCSC_SCENARIOS)}"
            )
    if ota_listen is not None:
        from bipsim.commands.common import host_port

        if card == "sim":
            raise CliError(
                "--ota-listen goes with a PC/SC --card (the simulated card's server port is chosen)"
            )
        host, number = host_port(ota_listen)
        ota_listen = f"{host}:{number}"
    plane = (radio, network_mode, seed, wlan) != ("ideal", "nat", 0, None)
    if plane and name not in PLANE_SCENARIOS:
        raise CliError(
            f"--radio/--network/--seed/--wlan: scenario {name} sets up its own network; they apply to "
            f"{', '.join(PLANE_SCENARIOS)}"
        )
    directory = Path(keep_dir) if keep_dir else Path(tempfile.mkdtemp(prefix=f"bipsim-{name}-"))
    directory.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        options = ScenarioOptions(
            directory, port_a, port_b, card, radio, network_mode, seed, wlan, ota_listen=ota_listen
        )
        result = SCENARIOS[name](options)
    except (ScenarioFailed, HarnessError) as exc:
        raise CliError(f"scenario {name} failed: {exc}") from exc
    finally:
        _export(directory, trace_path, pcap_path)
        if not keep_dir:
            shutil.rmtree(directory, ignore_errors=True)
    notes = f" ({'; '.join(result.notes)})" if result.notes else ""
    click.echo(
        f"scenario {name}: passed in {time.monotonic() - started:.1f} s, {len(result.run.events)} trace events{notes}"
    )


def _export(directory: Path, trace_path: str | None, pcap_path: str | None) -> None:
    from bipsim.trace.reader import read_trace

    files = [directory / f"{n}.jsonl" for n in ("cp", "ap") if (directory / f"{n}.jsonl").exists()]
    files += sorted(directory.glob("cp-boot*.jsonl"))  # a CP booted again after a power loss (power_cycle_cp)
    files += sorted(directory.glob("ota*.jsonl"))  # the OTA server, and any extra ones (ota2, ota3...)
    if not files or not (trace_path or pcap_path):
        return
    events, _ = read_trace(files)
    if trace_path:
        Path(trace_path).write_text("".join(e.to_json() + "\n" for e in events), encoding="utf-8")
    if pcap_path:
        from bipsim.trace.pcap import export_pcap

        export_pcap(events, pcap_path)
