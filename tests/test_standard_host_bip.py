"""BIP with a standard host (issue 16 item 9; docs/protocols.md "BIP with a standard host"): `bipsim cp --listen`
driven by a plain AT host that never enters CMUX (no AP, no proxy on DLC 2) still runs the card's BIP session to
the OTA server, on the CP's own stack with the context the host defined by +CGDCONT, without waiting for an AP
that is not coming (the wait for our AP is 60 s; the deadline here is well under it)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from pathlib import Path

import trio

from bipsim.cp.proxy_link import ProxyLink
from tests.cp_process import BIPSIM, start_listening_cp, stop

# under the CP's 60 s wait for our AP: a run that waits for it (or for %GETNET, 30 s per channel) fails here
DEADLINE = 45.0


def _answer(sock: socket.socket, command: bytes) -> bytes:
    """Sends one command line; reads until its final result code."""
    sock.sendall(command + b"\r")
    got = b""
    while not any(final in got for final in (b"\r\nOK\r\n", b"ERROR")):
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


def test_a_plain_at_host_gets_the_cards_bip_session_through(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [*BIPSIM, "ota-server", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True
    )
    cp: subprocess.Popen[bytes] | None = None
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("listening on "), line
        port = int(line.split()[2].rsplit(":", 1)[1])
        profile = tmp_path / "card.toml"
        profile.write_text(f'[ota]\nota_host = "127.0.0.1"\nota_port = {port}\n')
        trace = tmp_path / "cp.jsonl"
        cp, line_port = start_listening_cp(
            tmp_path,
            [
                "--profile",
                str(profile),
                "--state",
                str(tmp_path / "state.json"),
                "--trace",
                str(trace),
                "--once",
            ],
        )
        with socket.create_connection(("127.0.0.1", line_port), timeout=DEADLINE) as host:
            assert b"OK" in _answer(host, b"ATE0")
            assert b"OK" in _answer(host, b'AT+CGDCONT=1,"IP","internet"')
            # --once: the CP exits 0 once the card's first BIP session ended
            assert cp.wait(DEADLINE) == 0
    finally:
        stop(cp)
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=60)
    summary = json.loads(
        next(x for x in out.splitlines() if x.startswith("summary: ")).removeprefix("summary: ")
    )
    assert summary["completed"] == 1, summary
    events = [json.loads(x) for x in trace.read_text().splitlines() if x.strip()]
    standard = [e for e in events if e.get("fields", {}).get("event") == "standard_host"]
    assert standard and standard[0]["fields"]["command"] == "+CGDCONT"
    choices = [e for e in events if e["kind"] == "pdp.choice"]
    assert choices and choices[0]["fields"]["source"] == "host" and choices[0]["fields"]["apn"] == "internet"
    assert not any(e["kind"] == "at.command" and "%GETNET" in e.get("summary", "") for e in events)


async def test_a_proxy_given_up_is_not_waited_for_until_a_line_enters_cmux() -> None:
    """After ap_not_attached (or a standard host's command) a bearer's wait for the proxy answers None at once
    instead of after its 30 s; a line entering CMUX makes the wait real again."""
    proxy = ProxyLink()
    assert proxy.give_up("the AP never attached its proxy")
    assert proxy.settled.is_set() and not proxy.give_up("again")  # once
    with trio.fail_after(5):  # far under the 30 s asked: the wait did not happen
        assert await proxy.wait(30) is None
    proxy.expect()
    with trio.move_on_after(0.01) as waited:
        await proxy.wait(30)
    assert waited.cancelled_caught  # waiting for the proxy again
