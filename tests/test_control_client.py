"""bipsim/commands/control_client.py, the one client of `bipsim sms`, `bipsim call` and `bipsim omapi`: every way a
request goes wrong is one CliError line naming the peer; a real loopback control socket answers a request."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import click
import pytest
import trio

from bipsim.commands.control_client import ask, ask_ok, split_connect
from bipsim.errors import CliError


def test_split_connect() -> None:
    assert split_connect("127.0.0.1:8556") == ("127.0.0.1", 8556)
    assert split_connect("[::1]:80") == ("::1", 80)
    for bad in ("8556", "host:", "host:port"):
        with pytest.raises(CliError, match="--connect: give HOST:PORT") as caught:
            split_connect(bad)
        assert caught.value.exit_code == 2


def _failing(exc: BaseException) -> Any:
    async def request(host: str, port: int, message: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        raise exc

    return request


@pytest.mark.parametrize(
    ("exc", "said"),
    [
        (ConnectionRefusedError("refused"), "cannot reach the SMSC control socket at 127.0.0.1:1: refused"),
        (trio.TooSlowError(), "the SMSC at 127.0.0.1:1 did not answer within 2.5 s"),
        (ValueError("Expecting value"), "the SMSC's answer is not JSON: Expecting value"),
    ],
)
def test_each_failure_is_one_line_naming_the_peer(exc: BaseException, said: str) -> None:
    with pytest.raises(CliError) as caught:
        ask(
            "127.0.0.1:1",
            {"op": "status"},
            timeout=2.5,
            peer="the SMSC",
            socket_name="the SMSC control socket",
            request=_failing(exc),
        )
    assert str(caught.value) == said


def _serve_once(answer: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """A one-shot control socket on loopback in a thread of its own: the port and what it was asked."""
    server = socket.create_server(("127.0.0.1", 0))
    asked: list[dict[str, Any]] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn, conn.makefile("rb") as lines:
            asked.append(json.loads(lines.readline()))
            conn.sendall(json.dumps(answer).encode() + b"\n")
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1], asked


@pytest.mark.parametrize("ok", [True, False])
def test_ask_ok_prints_json_and_refuses_what_the_peer_refused(
    ok: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    answer: dict[str, Any] = {"ok": True, "calls": []} if ok else {"ok": False, "error": "no such call"}
    port, asked = _serve_once(answer)
    ctx = click.Context(click.Command("call"), obj={"connect": f"127.0.0.1:{port}", "json": True})
    if ok:
        assert (
            ask_ok(ctx, {"op": "calls"}, timeout=10, peer="the network", socket_name="its socket") == answer
        )
    else:
        with pytest.raises(CliError, match="^the network refused the request: no such call$"):
            ask_ok(ctx, {"op": "calls"}, timeout=10, peer="the network", socket_name="its socket")
    assert asked == [{"op": "calls"}]
    assert json.loads(capsys.readouterr().out) == answer
