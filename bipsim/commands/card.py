"""`bipsim card`: the simulated UICC on its own, outside the CP.

`card serve --vpcd HOST:PORT` exports it to a PC/SC daemon through the vsmartcard vpcd reader (docs/protocols.md,
"The card as a PC/SC card (vpcd)"), so pcsc_scan, opensc-tool, scriptor, pyscard and pySim-shell reach it;
`card readers` lists the PC/SC readers pcscd knows, with the ATR of the card in each.
"""

from __future__ import annotations

import click

from bipsim.commands.common import finish_trace, host_port, install_shutdown, make_tracer, trace_option
from bipsim.errors import CliError


@click.group("card")
def card() -> None:
    """The simulated UICC as a PC/SC card, and the PC/SC readers of this machine."""


@card.command("serve")
@click.option(
    "--vpcd",
    "vpcd",
    default="127.0.0.1:35963",
    show_default=True,
    metavar="HOST:PORT",
    help="The vpcd reader to insert the card in: pcscd's vpcd driver listens there (35963 is reader "
    '"Virtual PCD 00 00", 35964 "Virtual PCD 00 01" in the stock /etc/reader.conf.d/vpcd).',
)
@click.option(
    "--profile",
    "profile_path",
    type=click.Path(dir_okay=False),
    metavar="NAME|FILE",
    help="Card profile: a built-in NAME (default, omapi, omapi-no-rules, omapi-empty, omapi-malformed, omapi-arf; "
    "euicc: an eUICC with the SGP.22 ISD-R) or a "
    "TOML/JSON FILE of keys (ICCID, IMSI, OTA server, BIP, applets, ARA-M rules) over the default. "
    "Default: the built-in default profile.",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False),
    help="The card's persistent state file (file contents, GP registry); read at start, written at power off, "
    "when the reader goes away and at exit.",
)
@trace_option
@click.option("--session", help="Session label written into every trace event.")
def serve(
    vpcd: str, profile_path: str | None, state_path: str | None, trace_path: str | None, session: str | None
) -> None:
    """Insert the simulated UICC in a vpcd virtual reader of pcscd and answer its APDUs (ISO 7816-4, TS 102 221,
    the CAT of TS 102 223) until Ctrl-C or SIGTERM. The card is the TCP client: start it before or after pcscd;
    it reconnects whenever pcscd restarts. Every APDU is traced (apdu.*, cat.* kinds) into --trace."""
    import trio

    shutdown = install_shutdown("bipsim card serve")
    from bipsim.cp.modem import simulated_card
    from bipsim.uicc.sim_transport import SimulatedCard
    from bipsim.uicc.vpcd import serve_vpcd

    host, port = host_port(vpcd)
    tracer = make_tracer(trace_path, session)
    transport, _ = simulated_card(profile_path, state_path, tracer)
    assert isinstance(transport, SimulatedCard)
    sim = transport.card

    def status(text: str) -> None:
        click.echo(f"bipsim card serve: {text}", err=True)

    async def main() -> None:
        await serve_vpcd(sim, host, port, tracer=tracer, on_status=status)

    try:
        trio.run(shutdown.until_signalled, main)
    finally:
        sim.save_state()
        finish_trace(tracer, None)


@card.command("readers")
def readers() -> None:
    """List the PC/SC readers pcscd knows (one a line: index, name, and the ATR of the card in it, or "no card").
    The index is what `bipsim cp --card pcsc:N` takes. PCSCLITE_CSOCK_NAME selects another pcscd."""
    try:
        from smartcard.Exceptions import CardConnectionException, NoCardException
        from smartcard.pcsc.PCSCExceptions import EstablishContextException, ListReadersException
        from smartcard.System import readers as list_readers
        from smartcard.util import toHexString

        from bipsim.uicc.pcsc_card import SCARD_LEAVE_CARD
    except ImportError as exc:
        raise CliError(
            f"card readers needs pyscard ({exc}); install bipsim with the pcsc extra: pip install 'bipsim[pcsc]'"
        ) from exc
    try:
        found = list_readers()
    except EstablishContextException as exc:
        raise CliError(
            f"pcscd is not running or not reachable ({exc}); start it: pcscd --foreground"
        ) from exc
    except ListReadersException as exc:
        raise CliError(f"pcscd could not list readers: {exc}") from exc
    if not found:
        click.echo("no PC/SC readers")
        return
    for index, reader in enumerate(found):
        connection = reader.createConnection()
        try:
            # shared, and the card left as it is: a program holding it (bipsim cp --card pcsc) goes on undisturbed
            connection.connect(disposition=SCARD_LEAVE_CARD)
            atr = toHexString(connection.getATR()).replace(" ", "")
            connection.disconnect()
            card_text = f"ATR {atr}"
        except NoCardException:
            card_text = "no card"
        except CardConnectionException as exc:
            card_text = f"card not usable: {exc}"
        finally:
            release = getattr(connection, "release", None)
            if release is not None:
                release()
        click.echo(f"{index}: {reader}  {card_text}")
