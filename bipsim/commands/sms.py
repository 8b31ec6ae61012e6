"""`bipsim sms`: drives the simulated network's SMS centre of a running `bipsim cp --sms-listen HOST:PORT` through its
control socket (docs/protocols.md, "SMS and the SMSC"): inject MT messages, read the MO messages the modem sent,
and set the status the SMSC reports for a destination."""

from __future__ import annotations

import json
from typing import Any

import click

from bipsim.commands.common import hex_option
from bipsim.commands.control_client import ask_ok, connection_options, remember
from bipsim.errors import CliError


def _ask(ctx: click.Context, message: dict[str, Any], timeout: float) -> dict[str, Any]:
    return ask_ok(ctx, message, timeout=timeout, peer="the SMSC", socket_name="the SMSC control socket")


def _mt_line(message: dict[str, Any]) -> str:
    what = message["type"].replace("_", " ")
    body = message.get("text")
    if body is None:
        body = f"data {message.get('data', message['hex'])}"
    else:
        body = json.dumps(body, ensure_ascii=False)
    extra = ""
    if message.get("concat"):
        concat = message["concat"]
        extra += f" part {concat['sequence']}/{concat['total']} ref {concat['reference']}"
    if message.get("data_download"):
        extra += " (U)SIM data download"
        if message.get("sw"):  # the card's answer to the SMS-PP DOWNLOAD envelope: its PoR and status word
            extra += f" PoR {message.get('por') or '(none)'} SW {message['sw']}"
    if message.get("cause"):
        extra += f" ({message['cause']})"
    return f"{message['id']} {message['state']} {what} from {message['originator']}: {body}{extra}"


@click.group("sms")
@connection_options(
    "The SMSC's control socket: what `bipsim cp --sms-listen HOST:PORT` printed ('sms listening on ...').",
    "the SMSC",
)
@click.pass_context
def sms(ctx: click.Context, connect: str, as_json: bool) -> None:
    """Inject mobile-terminated SMS at the simulated network's SMSC and read the mobile-originated ones.

    The SMSC lives in the CP process; start it with `bipsim cp --sms-listen 127.0.0.1:8556`. Exit status 0 on
    success, 1 when the SMSC refused the request or an MT message failed, 2 on a usage error."""
    remember(ctx, connect, as_json)


@sms.command("send-mt")
@click.argument("text", required=False)
@click.option(
    "--from",
    "originator",
    default="+15550009999",
    show_default=True,
    help="The originator: '+<digits>' (international), digits, or up to 11 letters (alphanumeric).",
)
@click.option("--class", "message_class", type=click.IntRange(0, 3), help="TP-DCS message class 0..3.")
@click.option(
    "--pid", type=click.IntRange(0, 255), default=0, show_default=True, help="TP-PID (7F: data download)."
)
@click.option(
    "--ucs2",
    is_flag=True,
    help="Code TEXT in UCS2 even if the GSM 7-bit alphabet could carry it (TS 23.038).",
)
@click.option(
    "--hex",
    "tpdu",
    metavar="TPDU",
    help="Deliver this SMS-DELIVER (or SMS-STATUS-REPORT) TPDU as it is, e.g. an OTA (U)SIM data download (PID 7F, "
    "class 2) which the modem hands to the card; the card's PoR is printed.",
)
@click.option("--data", metavar="HEX", help="Deliver 8-bit data (TP-DCS 04) instead of a text.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help="Application port addressing (TS 23.040 9.2.3.24.4, 16-bit) for the text or --data: 2948 is WAP push "
    "(sent from port 9200); --data to a port longer than one SMS goes in concatenated parts.",
)
@click.option(
    "--wait",
    default=10.0,
    show_default=True,
    help="Seconds to wait for the modem's answer to each part (0: queue and return at once).",
)
@click.pass_context
def send_mt(
    ctx: click.Context,
    text: str | None,
    originator: str,
    message_class: int | None,
    pid: int,
    ucs2: bool,
    tpdu: str | None,
    data: str | None,
    port: int | None,
    wait: float,
) -> None:
    """Send TEXT (or --hex TPDU, or --data HEX) to the modem as a mobile-terminated SMS. A long TEXT goes as
    concatenated parts. Prints one line per message: its id, state (delivered, failed, or queued when the modem
    has not subscribed or answered yet), and the PoR of a data download."""
    given = [x for x in (text, tpdu, data) if x is not None]
    if len(given) != 1:
        raise CliError("give one of TEXT, --hex TPDU or --data HEX", exit_code=2)
    if wait < 0:
        raise CliError("--wait: give 0 or more seconds", exit_code=2)
    message: dict[str, Any] = {
        "op": "send-mt",
        "from": originator,
        "pid": pid,
        "class": message_class,
        "port": port,
        "wait": wait,
    }
    if text is not None:
        message["text"] = text
        if ucs2:
            message["alphabet"] = "ucs2"
    elif tpdu is not None:
        message["hex"] = hex_option(tpdu, "--hex")
    else:
        assert data is not None
        message["data"] = hex_option(data, "--data")
    answer = _ask(ctx, message, timeout=wait + 10.0)
    if not ctx.obj["json"]:
        for item in answer["messages"]:
            click.echo(_mt_line(item))
    if any(item["state"] == "failed" for item in answer["messages"]):
        raise CliError("the modem refused the message (RP-ERROR)")


@sms.command("list-mo")
@click.option(
    "--parts", is_flag=True, help="One line per SMS-SUBMIT instead of concatenated messages joined."
)
@click.pass_context
def list_mo(ctx: click.Context, parts: bool) -> None:
    """List the mobile-originated messages the SMSC took from the modem (+CMGS, +CMSS, the card's SEND SHORT
    MESSAGE): origin, destination, TP-MR, the status it reports, and the text (concatenated parts joined)."""
    answer = _ask(ctx, {"op": "list-mo"}, timeout=30.0)
    if ctx.obj["json"]:
        return
    if parts:
        for item in answer["messages"]:
            body = item.get("text")
            shown = json.dumps(body, ensure_ascii=False) if body is not None else f"data {item.get('data')}"
            click.echo(
                f"{item['id']} {item['state']} from {item['origin']} to {item['destination']} mr {item['mr']}: {shown}"
            )
        return
    for group in answer["texts"]:
        ids = ",".join(str(i) for i in group["ids"])
        shown = json.dumps(group["text"], ensure_ascii=False) if group["text"] is not None else "(8-bit data)"
        state = "" if group["complete"] else " (incomplete)"
        click.echo(f"{ids} from {group['origin']} to {group['destination']}{state}: {shown}")


@sms.command("list-mt")
@click.pass_context
def list_mt(ctx: click.Context) -> None:
    """List the mobile-terminated messages (injected ones and status reports) with their states."""
    answer = _ask(ctx, {"op": "list-mt"}, timeout=30.0)
    if not ctx.obj["json"]:
        for item in answer["messages"]:
            click.echo(_mt_line(item))


@sms.command("status")
@click.pass_context
def status(ctx: click.Context) -> None:
    """The SMSC's address, whether the modem is subscribed, and how many messages it holds."""
    answer = _ask(ctx, {"op": "status"}, timeout=30.0)
    if not ctx.obj["json"]:
        click.echo(
            f"SMSC {answer['address']}: modem {'subscribed' if answer['subscribed'] else 'not subscribed'}, "
            f"{answer['mo']} MO, {answer['mt']} MT ({answer['queued']} queued)"
        )


@sms.command("outcome")
@click.argument("destination")
@click.argument("status", required=False, type=click.IntRange(0, 255))
@click.pass_context
def outcome(ctx: click.Context, destination: str, status: int | None) -> None:
    """Make the SMSC report TP-ST STATUS (TS 23.040 9.2.3.15, decimal: 0 received, 70 validity period expired, 65
    incompatible destination...) for MO messages to DESTINATION; without STATUS, back to 0 (received)."""
    answer = _ask(ctx, {"op": "outcome", "destination": destination, "status": status}, timeout=30.0)
    if not ctx.obj["json"]:
        shown = ", ".join(f"{k}={v}" for k, v in answer["outcomes"].items()) or "none"
        click.echo(f"outcomes: {shown}")
