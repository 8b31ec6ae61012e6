"""The client side of a running process's control socket, as `bipsim sms`, `bipsim call` and `bipsim omapi` use it:
one JSON request line to HOST:PORT, one JSON answer line back (docs/protocols.md, "SMS and the SMSC" and "Voice
calls without audio"). Every way it can go wrong is one CliError line, never a traceback."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from bipsim.errors import CliError

Request = Callable[..., Awaitable[dict[str, Any]]]
Command = TypeVar("Command", bound=Callable[..., Any])

# where the README's `bipsim cp --sms-listen` serves the network's control socket
DEFAULT_CONNECT = "127.0.0.1:8556"


def connection_options(connect_help: str, peer: str) -> Callable[[Command], Command]:
    """--connect HOST:PORT (help `connect_help`) and --json for a command group of the network's control socket;
    the group gives both to `remember`."""

    def decorate(command: Command) -> Command:
        command = click.option(
            "--json", "as_json", is_flag=True, help=f"Print {peer}'s answer as one JSON object."
        )(command)
        return click.option(
            "--connect", default=DEFAULT_CONNECT, show_default=True, metavar="HOST:PORT", help=connect_help
        )(command)

    return decorate


def remember(ctx: click.Context, connect: str, as_json: bool) -> None:
    """Keeps the group's --connect and --json in its context for its subcommands' `ask_ok`."""
    ctx.ensure_object(dict)
    ctx.obj["connect"] = connect
    ctx.obj["json"] = as_json


def split_connect(connect: str) -> tuple[str, int]:
    """--connect HOST:PORT as (host, port); a usage error (exit 2) otherwise. [v6] loses its brackets."""
    host, sep, port_text = connect.rpartition(":")
    if not sep or not port_text.isdigit():
        raise CliError(f"--connect: give HOST:PORT, not {connect!r}", exit_code=2)
    return host.strip("[]"), int(port_text)


def ask(
    connect: str,
    message: dict[str, Any],
    *,
    timeout: float,
    peer: str,
    socket_name: str,
    request: Request,
) -> dict[str, Any]:
    """Sends `message` through `request` (the peer's own client coroutine) to `connect` and returns the answer.
    `peer` names the other end in the errors ("the SMSC"), `socket_name` its socket ("the SMSC control socket")."""
    import trio

    host, port = split_connect(connect)
    try:
        return trio.run(lambda: request(host, port, message, timeout=timeout))
    except (OSError, ConnectionError) as exc:
        raise CliError(f"cannot reach {socket_name} at {connect}: {exc}") from None
    except trio.TooSlowError:
        raise CliError(f"{peer} at {connect} did not answer within {timeout:g} s") from None
    except ValueError as exc:
        raise CliError(f"{peer}'s answer is not JSON: {exc}") from None


def ask_ok(
    ctx: click.Context, message: dict[str, Any], *, timeout: float, peer: str, socket_name: str
) -> dict[str, Any]:
    """`ask` for a command group whose context holds "connect" and "json" (--connect, --json): prints the answer
    as JSON when asked to, and makes an answer without "ok" a CliError with the peer's reason (exit 1)."""
    from bipsim.net.smsc import request

    answer = ask(
        ctx.obj["connect"], message, timeout=timeout, peer=peer, socket_name=socket_name, request=request
    )
    if ctx.obj["json"]:
        click.echo(json.dumps(answer))
    if not answer.get("ok"):
        raise CliError(f"{peer} refused the request: {answer.get('error', 'no reason given')}")
    return answer
