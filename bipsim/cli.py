"""The `bipsim` command: a click group whose subcommands live in `bipsim.commands.*` and load on first use.

Loading lazily keeps `bipsim --help` fast (scapy and cryptography are slow to import) and lets each subcommand sit
in its own module. README.md's tour and each command's --help are the contract for the names and options. Every
failure is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from bipsim.errors import CliError

# name -> (module under bipsim.commands, attribute, one-line help shown by `bipsim --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("demo", "demo", "Run both patent embodiments end to end (AP, CP, OTA server as processes)."),
    "cp": ("cp", "cp", "Run the modem processor (DCE) on a serial line."),
    "ap": ("ap", "ap", "Run the application processor (DTE, proxy) on a serial line."),
    "omapi": ("omapi", "omapi", "Call OMAPI on a running AP (open a channel to an applet, send APDUs)."),
    "card": ("card", "card", "Serve the simulated UICC to pcscd (vpcd); list PC/SC readers."),
    "ota-server": ("ota_server", "ota_server", "Run the remote OTA (GlobalPlatform SCP81) admin server."),
    "pty-pair": ("pty_pair", "pty_pair", "Create two linked raw pseudo-terminals (a socat replacement)."),
    "hil": ("hil", "hil", "Check a hardware-in-loop bench's serial pair (bytes, rate, RTS/CTS, DTR)."),
    "decode": ("decode", "decode", "Decode CAT/BIP bytes (proactive command, TR, envelope, APDU)."),
    "scenario": ("scenario", "scenario", "List or run named scenarios."),
    "sms": ("sms", "sms", "Inject MT SMS at a running CP's SMSC, list the MO ones (bipsim cp --sms-listen)."),
    "call": (
        "call",
        "call",
        "Offer, end or list voice calls at a running CP's network (bipsim cp --sms-listen).",
    ),
    "soak": ("soak", "soak", "Run OTA sessions with seeded faults and check the card's state."),
    "fleet": ("fleet", "fleet", "Run many simulated cards in worker processes against one OTA server."),
    "trace": ("trace", "trace", "Render, export (pcap), replay or diff traces."),
    "sync-server": (
        "sync_server",
        "sync_server",
        "Run the SIM data sync server (contacts, messages per subscriber).",
    ),
    "publish-server": (
        "publish_server",
        "publish_server",
        "Run the push deployment's publish server (releases, downloads, notices, IP push).",
    ),
    "cloud": (
        "cloud",
        "cloud",
        "Run the cloud store of eUICC profile backups (login website, upload, fetch, delete).",
    ),
    "smdp": (
        "smdp",
        "smdp",
        "Run an SM-DP+ (GSMA SGP.22 ES9+ over HTTPS) serving eUICC profiles, each downloaded once.",
    ),
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, attr, _ = entry
        module = importlib.import_module(f"bipsim.commands.{module_name}")
        command: click.Command = getattr(module, attr)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """--version: the installed distribution's version (read only now: importlib.metadata is slow to import)."""
    if not value or ctx.resilient_parsing:
        return
    import bipsim

    click.echo(f"bipsim, version {bipsim.__version__}")
    ctx.exit()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show the version and exit.",
)
def cli() -> None:
    """bipsim simulates a dual-processor phone: an application processor (AP) and a modem processor (CP) joined
    by a serial line, with a SIM card (UICC) on the CP that opens BIP channels (ETSI TS 102 223) to download OTA
    content from a remote server, following patent CN101594614A.

    Start with `bipsim demo`, then `bipsim <command> --help`.
    """


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: runs the group and turns every failure into one line on stderr."""
    prog = "bipsim"
    try:
        rv: Any = cli.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else prog
        click.echo(f"{where}: error: {exc.format_message()} (see --help)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"{prog}: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except CliError as exc:
        click.echo(f"{prog}: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:
        click.echo(
            f"{prog}: error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", err=True
        )
        sys.exit(1)
    except Exception as exc:
        # A bug, not a user error: still one line, with the traceback on request.
        if os.environ.get("BIPSIM_DEBUG"):
            raise
        click.echo(
            f"{prog}: internal error: {type(exc).__name__}: {exc} (BIPSIM_DEBUG=1 shows the traceback)",
            err=True,
        )
        sys.exit(70)
    sys.exit(rv if isinstance(rv, int) else 0)
