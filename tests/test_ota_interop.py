"""Independent TLS peers on both ends of the OTA link (GlobalPlatform Amd B over TLS 1.2 PSK, RFC 4279):

- OpenSSL's `s_client` is the card: it completes a PSK handshake with `bipsim ota-server` (a real process on
  127.0.0.1:0) and runs the whole admin POST loop through it, ending with 204;
- OpenSSL's `s_server -nocert -psk` is the server: our sans-IO card client (uicc/tls_psk_client.py), driven over a
  trio TCP stream, completes a handshake and exchanges application data for each of the three suites;
- the standard library's http.client runs a whole admin session against the server's HTTP framing (h11) on one
  keep-alive connection, one answer posted with chunked coding.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import h11
import pytest
import trio

from bipsim.ota.admin import PROTOCOL, RESPONSE_TYPE, SCRIPT_TYPE
from bipsim.uicc.remote_apdu import decode_command_script, encode_response_script
from bipsim.uicc.tls_psk_client import SUITES, TlsAlert, TlsError, TlsPskClient

PSK_HEX = "00112233445566778899AABBCCDDEEFF"
IDENTITY = "interop-card"
ICCID = "8988211000000000042"

# IANA code -> OpenSSL name (RFC 5487 / RFC 5288 via `openssl ciphers -V PSK`)
OPENSSL_NAMES = {
    0x00AE: "PSK-AES128-CBC-SHA256",
    0x008C: "PSK-AES128-CBC-SHA",
    0x00A8: "PSK-AES128-GCM-SHA256",
}


async def _read_until(stream: trio.abc.ReceiveStream, pattern: bytes, buffer: bytearray) -> re.Match[bytes]:
    """Reads a process pipe until `pattern` matches what was read so far."""
    while True:
        found = re.search(pattern, buffer)
        if found:
            return found
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise AssertionError(f"pipe closed before {pattern!r}; got {bytes(buffer)!r}")
        buffer += chunk


async def start_ota_server(
    nursery: trio.Nursery, tmp_path: Path, *extra: str
) -> tuple[trio.Process, int, Path]:
    results = tmp_path / "results.json"
    process = await nursery.start(
        lambda task_status: trio.run_process(
            [
                sys.executable,
                "-m",
                "bipsim",
                "ota-server",
                "--listen",
                "127.0.0.1:0",
                "--psk-identity",
                IDENTITY,
                "--psk",
                PSK_HEX,
                "--results",
                str(results),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            check=False,
            task_status=task_status,
        )
    )
    assert process.stdout is not None
    seen = bytearray()
    found = await _read_until(process.stdout, rb"listening on 127\.0\.0\.1:(\d+)", seen)
    return process, int(found.group(1)), results


def admin_post(client: h11.Connection, body: bytes, next_uri: str = "/server/adminagent") -> bytes:
    """One admin POST as h11 (the independent HTTP peer of these tests) frames it."""
    headers = [
        ("Host", "127.0.0.1"),
        ("X-Admin-Protocol", PROTOCOL),
        ("X-Admin-From", f"//se-id/iccid/{ICCID}"),
        ("Content-Type", RESPONSE_TYPE),
        ("Content-Length", str(len(body))),
    ]
    if body:
        headers.append(("X-Admin-Script-Status", "ok"))
    if client.our_state is h11.DONE and client.their_state is h11.DONE:
        client.start_next_cycle()
    out = client.send(h11.Request(method="POST", target=next_uri, headers=headers)) or b""
    if body:
        out += client.send(h11.Data(data=body)) or b""
    return out + (client.send(h11.EndOfMessage()) or b"")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str:
        return self.headers.get(name, "")


async def read_response(stdout: trio.abc.ReceiveStream, client: h11.Connection) -> Answer:
    response: h11.Response | None = None
    body = bytearray()
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            chunk = await stdout.receive_some(4096)
            if not chunk:
                raise AssertionError("s_client closed before a full HTTP response")
            client.receive_data(bytes(chunk))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            headers = {k.decode(): v.decode("latin-1") for k, v in response.headers}
            return Answer(response.status_code, headers, bytes(body))


@pytest.mark.needs("openssl")
async def test_openssl_s_client_runs_an_admin_session_against_bipsim_ota_server(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server, port, results = await start_ota_server(nursery, tmp_path)
            client = await trio.lowlevel.open_process(
                [
                    "openssl",
                    "s_client",
                    "-connect",
                    f"127.0.0.1:{port}",
                    "-psk",
                    PSK_HEX,
                    "-psk_identity",
                    IDENTITY,
                    "-cipher",
                    "PSK-AES128-CBC-SHA256",
                    "-tls1_2",
                    "-quiet",
                    "-no_ign_eof",  # stdin EOF ends the session with close_notify (-quiet implies -ign_eof)
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert client.stdin is not None and client.stdout is not None
            http = h11.Connection(h11.CLIENT)
            await client.stdin.send_all(admin_post(http, b""))
            statuses = []
            scripts = 0
            while True:
                answer = await read_response(client.stdout, http)
                statuses.append(answer.status)
                assert answer.header("x-admin-protocol") == PROTOCOL
                if answer.status == 204:
                    break
                assert answer.status == 200, answer
                assert answer.header("content-type") == SCRIPT_TYPE
                apdus = decode_command_script(answer.body)
                assert apdus and all(len(a) >= 4 for a in apdus)
                scripts += 1
                # a card that accepts every command: one R-APDU '90 00' per C-APDU
                body = encode_response_script([b"\x90\x00"] * len(apdus))
                await client.stdin.send_all(admin_post(http, body, answer.header("x-admin-next-uri")))
            await client.stdin.aclose()  # s_client sends close_notify and exits
            assert await client.wait() == 0
            # the built-in campaign: RFM update, RAM load, RAM install, GET STATUS
            assert statuses == [200, 200, 200, 200, 204]
            server.terminate()
        log = json.loads(results.read_text())
        entry = log[f"iccid:{ICCID}"]
        assert entry["completed"] and entry["all_ok"]
        assert [s["kind"] for s in entry["scripts"]] == ["rfm", "ram-load", "ram-install", "ram-status"]


@pytest.mark.needs("openssl")
async def test_openssl_s_client_with_a_wrong_psk_is_refused_and_the_server_keeps_serving(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server, port, results = await start_ota_server(nursery, tmp_path)
            base = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-psk_identity", IDENTITY]
            base += ["-cipher", "PSK-AES128-CBC-SHA256", "-tls1_2", "-quiet"]
            bad = await trio.run_process(
                [*base, "-psk", "FF" * 16],
                stdin=admin_post(h11.Connection(h11.CLIENT), b""),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert bad.returncode != 0 and b"HTTP/1.1" not in bad.stdout
            assert b"alert" in bad.stderr.lower()
            # the server survived: the right key still works
            good = await trio.lowlevel.open_process(
                [*base, "-psk", PSK_HEX, "-no_ign_eof"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert good.stdin is not None and good.stdout is not None
            http = h11.Connection(h11.CLIENT)
            await good.stdin.send_all(admin_post(http, b""))
            answer = await read_response(good.stdout, http)
            assert answer.status == 200
            await good.stdin.aclose()
            await good.wait()
            server.terminate()


# --- our card client against openssl s_server ---------------------------------------------------------------


async def tls_round_trip(stream: trio.abc.Stream, client: TlsPskClient, line: bytes) -> bytes:
    """Handshake, one line of application data out, the answer line back, close_notify."""
    await stream.send_all(client.start())
    while not client.connected:
        data = await stream.receive_some(65536)
        if not data:
            raise AssertionError(f"server closed during the handshake (state {client.state.value})")
        client.receive(bytes(data))
        out = client.data_to_send()
        if out:
            await stream.send_all(out)
    await stream.send_all(client.send(line))
    answer = bytearray()
    while not answer.endswith(b"\n"):
        data = await stream.receive_some(65536)
        if not data:
            raise AssertionError(f"server closed before answering; got {bytes(answer)!r}")
        answer += client.receive(bytes(data))
    await stream.send_all(client.close())
    return bytes(answer)


async def start_s_server(
    nursery: trio.Nursery, suite: int, psk_hex: str = PSK_HEX
) -> tuple[trio.Process, int, bytearray]:
    process = await trio.lowlevel.open_process(
        [
            "openssl",
            "s_server",
            "-nocert",
            "-psk",
            psk_hex,
            "-psk_identity",
            IDENTITY,
            "-cipher",
            OPENSSL_NAMES[suite] + ("" if suite != 0x008C else ":@SECLEVEL=0"),
            "-tls1_2",
            "-accept",
            "127.0.0.1:0",
            "-naccept",
            "1",
            "-rev",  # echo server: answers each line reversed
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    seen = bytearray()
    found = await _read_until(process.stdout, rb"ACCEPT 127\.0\.0\.1:(\d+)", seen)
    return process, int(found.group(1)), seen


@pytest.mark.needs("openssl")
@pytest.mark.parametrize("suite", sorted(OPENSSL_NAMES), ids=lambda s: SUITES[s].name)
async def test_card_client_against_openssl_s_server(suite: int) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server, port, output = await start_s_server(nursery, suite)
            client = TlsPskClient(IDENTITY.encode(), bytes.fromhex(PSK_HEX), suites=(suite,))
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            # long enough to need several SEND DATA rounds on a card, and two CBC blocks per record at least
            line = b"card says " + bytes(range(0x41, 0x5B)) * 40 + b"\n"
            answer = await tls_round_trip(stream, client, line)
            await stream.aclose()
            assert client.suite is not None and client.suite.code == suite
            assert answer == line[:-1][::-1] + b"\n"
            assert await server.wait() == 0
            assert server.stdout is not None
            async for chunk in server.stdout:
                output += chunk
            # s_server saw our identity and (in -rev mode) reports the suite it negotiated
            assert OPENSSL_NAMES[suite].encode() in output, bytes(output)


@pytest.mark.needs("openssl")
async def test_card_client_with_a_wrong_psk_gets_an_alert_from_openssl_s_server() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server, port, _ = await start_s_server(nursery, 0x00AE)
            client = TlsPskClient(IDENTITY.encode(), bytes(16), suites=(0x00AE,))
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            with pytest.raises((TlsAlert, TlsError)) as caught:
                await tls_round_trip(stream, client, b"never sent\n")
            await stream.aclose()
            # OpenSSL detects the wrong key when our Finished does not decrypt: bad_record_mac (20)
            assert isinstance(caught.value, TlsAlert) and caught.value.description == 20
            assert not client.connected
            server.kill()
            await server.wait()


# --- the standard library's HTTP client against the server's h11 framing ------------------------------------------


def _stdlib_session(port: int) -> list[tuple[int, str]]:
    """http.client on one keep-alive connection: an empty POST, its answer posted chunked, then the rest."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {
        "X-Admin-Protocol": PROTOCOL,
        "X-Admin-From": f"//se-id/iccid/{ICCID}",
        "Content-Type": RESPONSE_TYPE,
    }
    seen: list[tuple[int, str]] = []
    connection.request("POST", "/server/adminagent", body=b"", headers=headers)
    chunked = True
    while True:
        response = connection.getresponse()
        body = response.read()
        seen.append((response.status, response.getheader("Connection") or ""))
        if response.status != 200:
            break
        answer = encode_response_script([b"\x90\x00"] * len(decode_command_script(body)))
        target = response.getheader("X-Admin-Next-URI") or "/server/adminagent"
        extra = {"X-Admin-Script-Status": "ok"}
        if chunked:  # the first answer goes chunked: a chunked request body through the server's framing
            connection.request(
                "POST",
                target,
                body=iter([answer[:3], answer[3:]]),
                headers={**headers, **extra},
                encode_chunked=True,
            )
            chunked = False
        else:
            connection.request("POST", target, body=answer, headers={**headers, **extra})
    connection.close()
    return seen


async def test_stdlib_http_client_runs_an_admin_session_on_one_connection(tmp_path: Path) -> None:
    from bipsim.ota.admin import AdminServer
    from bipsim.ota.campaign import Campaign
    from bipsim.ota.server import OtaServer

    admin = AdminServer(Campaign.load())
    server = OtaServer(admin, keys=None)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            seen = await trio.to_thread.run_sync(_stdlib_session, port)
            nursery.cancel_scope.cancel()
    assert [status for status, _ in seen] == [200, 200, 200, 200, 204]
    assert server.connections == 1  # kept alive throughout
    (progress,) = admin.cards.values()
    assert progress.completed and [entry["script"] for entry in progress.log] == [0, 1, 2, 3]
