"""`bipsim omapi`: calls the Open Mobile API of a running `bipsim ap --omapi-listen HOST:PORT` as an application
would (docs/protocols.md, "OMAPI on the AP": the control socket), and prints what the applet answered."""

from __future__ import annotations

import json

import click

from bipsim.commands.common import hex_option
from bipsim.commands.control_client import ask, split_connect
from bipsim.errors import CliError

# the test application the built-in `omapi` card profile grants (uicc/profiles/omapi.toml): the SHA-1 of its
# stand-in certificate; test data, nothing secret
DEFAULT_HASH = "80FBFFB49AFF0C7D942F1F5E1D4761780911E205"
ECHO_AID = "A000000476416E64726F696443545331"


@click.command("omapi")
@click.option(
    "--connect",
    default="127.0.0.1:8555",
    show_default=True,
    metavar="HOST:PORT",
    help="The AP's OMAPI control socket (what `bipsim ap --omapi-listen` printed).",
)
@click.option(
    "--reader",
    help="The reader to use (SIM1, SIM2). Without it the AP's chooser dialog picks among the available readers "
    "(its --se-choose policy).",
)
@click.option(
    "--aid", default=ECHO_AID, show_default=True, help="The applet's AID (hex) for openLogicalChannel."
)
@click.option(
    "--apdu",
    "apdus",
    multiple=True,
    metavar="HEX",
    help="A command APDU to transmit on the channel (repeatable, sent in order). MANAGE CHANNEL and SELECT by "
    "AID are the service's own and refused (IllegalArgumentException).",
)
@click.option(
    "--app-hash",
    default=DEFAULT_HASH,
    show_default=True,
    help="The calling application's certificate hash (SHA-1 or SHA-256, hex) that the card's access rules are "
    "checked against; the default is the test application the built-in 'omapi' profile grants.",
)
@click.option(
    "--package", default="org.bipsim.omapi.client", show_default=True, help="The application's package name."
)
@click.option(
    "--basic",
    is_flag=True,
    help="openBasicChannel instead of openLogicalChannel. On the AP's SIM readers it always returns null (exit "
    "1, 'no channel available'): the modem keeps a UICC's basic channel for its USIM session and 27.007 gives "
    "the AP logical channels only, and OMAPI answers null when the basic channel is not available.",
)
@click.option(
    "--select-response", is_flag=True, help="Also print the applet's SELECT answer (getSelectResponse)."
)
@click.option(
    "--status",
    is_flag=True,
    help="Only print the readers, each card's enforceCarrierPrivilege and rules, as the last OMAPI start-up "
    "found them: a card pulled or put back since then shows after --reboot.",
)
@click.option(
    "--reboot", is_flag=True, help="Run the AP's OMAPI start-up again (rules reloaded), then --status."
)
@click.option("--json", "as_json", is_flag=True, help="Print the AP's answer as one JSON object.")
@click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    help="Seconds to wait for the AP's answer. A request waits at most TIMEOUT less 5 s for the AP's modem "
    "session to start; --status and --reboot do not wait: without a modem session the AP answers at once "
    "'no modem session'.",
)
def omapi(
    connect: str,
    reader: str | None,
    aid: str,
    apdus: tuple[str, ...],
    app_hash: str,
    package: str,
    basic: bool,
    select_response: bool,
    status: bool,
    reboot: bool,
    as_json: bool,
    timeout: float,
) -> None:
    """Open a channel to an applet through the AP's OMAPI (SEService -> Reader -> Session -> Channel), transmit
    the APDUs, print each answer exactly as the applet gave it, and close. Exit status 0 on success, 1 when
    OMAPI raised an exception (its name and reason are printed: SecurityException, IOException,
    NoSuchElementException...) or the channel open returned null, 2 on a usage error."""
    from bipsim.ap.omapi.control import request

    split_connect(connect)  # a bad --connect is a usage error before any other
    sent = [hex_option(apdu, "--apdu") for apdu in apdus]
    if status or reboot:
        # the state now: without a modem session the AP says so at once instead of waiting for one
        message: dict[str, object] = {"op": "boot" if reboot else "status", "wait": 0}
    else:
        message = {
            "op": "run",
            "package": package,
            "hash": hex_option(app_hash, "--app-hash"),
            "aid": hex_option(aid, "--aid"),
            "apdus": sent,
            "reader": reader,
            "basic": basic,
            "select_response": select_response,
            # the AP waits for its modem session's start-up at most this long, then answers "no modem session"
            # before this client gives up
            "wait": max(0.0, timeout - 5.0),
        }
    answer = ask(
        connect, message, timeout=timeout, peer="the AP", socket_name="the AP's OMAPI socket", request=request
    )
    if as_json:
        click.echo(json.dumps(answer))
    elif "error" in answer:
        pass
    elif "readers" in answer and message["op"] != "run":
        # the Framework's record of the last start-up: a card pulled or put back since shows at the next one
        click.echo("readers as the last OMAPI start-up found them (--reboot to check again):")
        for item in answer["readers"]:
            click.echo(
                f"{item['name']}: card {'present' if item['present'] else 'absent'} at start-up, "
                f"enforceCarrierPrivilege "
                f"{str(item['variable']).lower()}, {'available' if item['available'] else 'not available'}"
                f" ({item['reason']})"
            )
        click.echo(f"nfc {'present' if answer.get('nfc') else 'absent'}, gate {answer.get('gate')}")
    else:
        if answer.get("reader") is not None:  # null when the chooser picked nothing
            click.echo(f"reader {answer['reader']}")
        if answer.get("select_response") is not None:
            click.echo(f"select response {answer['select_response']}")
        for apdu, response in zip(sent, answer.get("responses", []), strict=False):
            click.echo(f"{apdu} -> {response}")
    if "error" in answer:
        raise CliError(f"the AP refused the request: {answer['error']}")
    if not answer.get("ok"):
        if answer.get("exception"):
            raise click.exceptions.Exit(_fail(f"{answer['exception']}: {answer.get('reason', '')}"))
        raise click.exceptions.Exit(_fail(str(answer.get("reason", "failed"))))


def _fail(text: str) -> int:
    click.echo(f"bipsim omapi: {text}", err=True)
    return 1
