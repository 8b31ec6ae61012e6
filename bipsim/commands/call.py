"""`bipsim call`: voice calls of the simulated network (no audio) on a running `bipsim cp --sms-listen HOST:PORT`,
through the network's control socket (docs/protocols.md, "Voice calls without audio"): offer an incoming call to
the modem, end a call from the far end, list the calls."""

from __future__ import annotations

from typing import Any

import click

from bipsim.commands.control_client import ask_ok, connection_options, remember


def _ask(ctx: click.Context, message: dict[str, Any]) -> dict[str, Any]:
    return ask_ok(ctx, message, timeout=10, peer="the network", socket_name="the network's control socket")


def _show(ctx: click.Context, answer: dict[str, Any]) -> None:
    if ctx.obj["json"]:
        return
    for call in answer.get("calls", []):
        click.echo(f"{call['id']} {call['direction']} {call['state']} {call['number']}")


@click.group("call")
@connection_options(
    "The network's control socket: the HOST:PORT given to `bipsim cp --sms-listen`.", "the network"
)
@click.pass_context
def call(ctx: click.Context, connect: str, as_json: bool) -> None:
    """Drive voice calls of the simulated network (call control only, no audio).

    The network lives in the CP process; start it with `bipsim cp --sms-listen 127.0.0.1:8556`. The modem's host
    sees RING/+CLIP for an incoming call, answers with ATA, and gets NO CARRIER when the far end hangs up. Exit
    status 0 on success, 1 when the network refused the request, 2 on a usage error."""
    remember(ctx, connect, as_json)


@call.command("incoming")
@click.argument("number")
@click.pass_context
def incoming(ctx: click.Context, number: str) -> None:
    """Offer the modem an incoming voice call from NUMBER ('+<digits>' or digits); prints the calls."""
    _show(ctx, _ask(ctx, {"op": "call", "from": number}))


@call.command("hangup")
@click.argument("call_id", metavar="[ID]", type=int, required=False)
@click.pass_context
def hangup(ctx: click.Context, call_id: int | None) -> None:
    """The far end ends call ID (every call without one): the host gets NO CARRIER."""
    _show(ctx, _ask(ctx, {"op": "hangup", "id": call_id}))


@call.command("list")
@click.pass_context
def list_calls(ctx: click.Context) -> None:
    """List the calls: id, direction (mo/mt), state, number."""
    _show(ctx, _ask(ctx, {"op": "calls"}))
