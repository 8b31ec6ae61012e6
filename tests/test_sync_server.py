"""`bipsim sync-server` (ota/sync_server.py; docs/protocols.md, "The sync server"): the sans-IO API rules, bad
requests with their HTTP status, per-terminal tokens, versions and If-Match, and the command as a process against
the standard library's HTTP client on loopback, with its trace."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from bipsim.ap.sync.merge import Contact
from bipsim.ota.sync_server import Request, SyncServer, SyncService, Terminal, parse_terminal
from bipsim.trace.kinds import Kind
from bipsim.trace.reader import read_trace
from bipsim.trace.recorder import Tracer

T1 = Terminal("phone1", "tok1", "001010123456789")
T2 = Terminal("phone2", "tok2", "001010987654321")
PATH = f"/sync/v1/{T1.subscriber}/records"
ALICE = {**Contact("Alice", "+441632960001").to_json(), "changed": 1.5}


def req(method: str, target: str = PATH, body: object = None, token: str = "tok1", **headers: str) -> Request:
    h = {"authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        h["content-type"] = "application/json"
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    raw = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else b"")
    return Request(method, target, h, raw)


def test_get_put_versions_and_if_match(tmp_path: Path) -> None:
    state = tmp_path / "sync.json"
    service = SyncService([T1, T2], state)
    first = service.handle(req("GET"))
    assert first.status == 200 and json.loads(first.body) == {"version": 0, "records": {}}
    assert first.headers["etag"] == '"0"'
    put = service.handle(req("PUT", body={"records": {"c1": ALICE}}, if_match='"0"'))
    assert put.status == 200 and json.loads(put.body) == {"version": 1}
    # a terminal that read version 0 and writes after another one did: 412, it reads and merges again
    stale = service.handle(req("PUT", body={"records": {}}, if_match='"0"'))
    assert stale.status == 412 and stale.headers["etag"] == '"1"'
    same = service.handle(req("PUT", body={"records": {"c1": ALICE}}, if_match='"1"'))
    assert json.loads(same.body) == {"version": 1}  # nothing changed: no new version
    again = SyncService([T1], state)  # the state file carries the store over a restart
    assert json.loads(again.handle(req("GET")).body) == {"version": 1, "records": {"c1": ALICE}}


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (req("GET", token=""), 401),
        (req("GET", token="wrong"), 401),
        (req("GET", token="tok2"), 403),  # phone2 may not reach phone1's subscriber
        (req("GET", "/sync/v1/"), 404),
        (req("GET", "/other"), 404),
        (req("DELETE"), 405),
        (req("PUT", body={"records": {}}), 428),
        (Request("PUT", PATH, {"authorization": "Bearer tok1", "if-match": "*"}, b"{}"), 415),
        (req("PUT", body=b"{not json", if_match="*"), 400),
        (req("PUT", body=[1], if_match="*"), 400),
        (req("PUT", body={"records": {"x": {"type": "contact", "name": "A"}}}, if_match="*"), 400),
        (req("PUT", body={"records": {"x": {**ALICE, "changed": "soon"}}}, if_match="*"), 400),
        (req("PUT", body={"records": {"x": {"type": "message", "status": "NEW"}}}, if_match="*"), 400),
        # issue 20 review: nested deeper than the parser's stack is a bad body, not a RecursionError
        (req("PUT", body=b'{"records": ' + b"[" * 200_000, if_match="*"), 400),
        # non-finite `changed` (Python's json reads NaN and Infinity): no merge can order it
        (
            req(
                "PUT",
                body=b'{"records": {"x": {"type": "contact", "name": "A", "number": "1", "changed": NaN}}}',
                if_match="*",
            ),
            400,
        ),
        (
            req(
                "PUT",
                body=b'{"records": {"x": {"type": "contact", "name": "A", "number": "1", '
                b'"changed": Infinity}}}',
                if_match="*",
            ),
            400,
        ),
    ],
)
def test_bad_requests_get_their_status_and_change_nothing(request_: Request, status: int) -> None:
    service = SyncService([T1, T2])
    answer = service.handle(request_)
    assert answer.status == status, answer.body
    assert "error" in json.loads(answer.body)
    assert service.subscribers == {}
    if status == 401:
        assert answer.headers["www-authenticate"].startswith("Bearer")


def test_parse_terminal() -> None:
    assert parse_terminal("a:b:c") == Terminal("a", "b", "c")
    for bad in ("a:b", "a::c", "a:b:c:d"):
        with pytest.raises(ValueError):
            parse_terminal(bad)


def _client(
    port: int, method: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, PATH, body=body, headers={"Authorization": "Bearer tok1", **headers})
    answer = conn.getresponse()
    out = answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    conn.close()
    return out


async def test_server_over_loopback_with_the_stdlib_client_and_traces() -> None:
    tracer = Tracer(keep=True)
    server = SyncServer(SyncService([T1]), tracer)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        status, headers, body = await trio.to_thread.run_sync(_client, port, "GET")
        assert status == 200 and headers["etag"] == '"0"'
        payload = json.dumps({"records": {"c1": ALICE}}).encode()
        status, _, body = await trio.to_thread.run_sync(
            lambda: _client(port, "PUT", payload, **{"Content-Type": "application/json", "If-Match": '"0"'})
        )
        assert status == 200 and json.loads(body) == {"version": 1}

        def garbage() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
                return sock.recv(4096)

        assert (await trio.to_thread.run_sync(garbage)).startswith(b"HTTP/1.1 400")
        nursery.cancel_scope.cancel()
    kinds = [(e.kind, e.field("status")) for e in tracer.events if e.layer.value == "http"]
    assert kinds == [
        (Kind.HTTP_REQUEST, None),
        (Kind.HTTP_RESPONSE, 200),
        (Kind.HTTP_REQUEST, None),
        (Kind.HTTP_RESPONSE, 200),
        (Kind.HTTP_ERROR, None),
        (Kind.HTTP_RESPONSE, 400),
    ]
    put = tracer.events[3]
    assert put.src.value == "ap" and put.dst.value == "sync" and put.field("method") == "PUT"


def test_sync_server_command(tmp_path: Path) -> None:
    trace = tmp_path / "sync.jsonl"
    err = tmp_path / "out"
    with err.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bipsim",
                "sync-server",
                "--listen",
                "127.0.0.1:0",
                "--terminal",
                "phone1:tok1:001010123456789",
                "--trace",
                str(trace),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(r"listening on 127\.0\.0\.1:(\d+)", err.read_text())):
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status, _, body = _client(int(found.group(1)), "GET")
        assert status == 200 and json.loads(body)["version"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0, err.read_text()
    assert '"requests": 1' in err.read_text()
    assert [e.kind for e in read_trace([trace])[0] if e.layer.value == "http"] == [
        Kind.HTTP_REQUEST,
        Kind.HTTP_RESPONSE,
    ]


def test_sync_server_command_errors() -> None:
    run = [sys.executable, "-m", "bipsim", "sync-server"]
    helped = subprocess.run([*run, "--help"], capture_output=True, text=True, check=True)
    assert "NAME:TOKEN:SUBSCRIBER" in helped.stdout and "If-Match" in helped.stdout
    missing = subprocess.run(run, capture_output=True, text=True)
    assert missing.returncode != 0 and "--terminal" in missing.stderr and "Traceback" not in missing.stderr
    bad = subprocess.run([*run, "--terminal", "x"], capture_output=True, text=True)
    assert bad.returncode != 0 and "NAME:TOKEN:SUBSCRIBER" in bad.stderr and "Traceback" not in bad.stderr


def test_a_failed_save_keeps_the_old_version_served(tmp_path: Path) -> None:
    state = tmp_path / "gone" / "sync.json"  # its folder does not exist: save() raises OSError
    service = SyncService([T1], state)
    answer = service.handle(req("PUT", body={"records": {"c1": ALICE}}, if_match="*"))
    assert answer.status == 500 and "error" in json.loads(answer.body)
    assert service.subscribers == {}
    assert json.loads(service.handle(req("GET")).body) == {"version": 0, "records": {}}


async def test_a_request_that_breaks_the_service_gets_500_and_the_server_goes_on() -> None:
    class Broken(SyncService):
        def handle(self, request: Request):  # type: ignore[no-untyped-def]
            if request.method == "PUT":
                raise RuntimeError("boom")
            return super().handle(request)

    tracer = Tracer(keep=True)
    server = SyncServer(Broken([T1]), tracer)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        payload = b'{"records": {}}'
        status, _, body = await trio.to_thread.run_sync(
            lambda: _client(port, "PUT", payload, **{"Content-Type": "application/json", "If-Match": "*"})
        )
        assert status == 500 and "RuntimeError" in json.loads(body)["error"]
        status, _, _ = await trio.to_thread.run_sync(_client, port, "GET")
        assert status == 200  # the server is still there
        nursery.cancel_scope.cancel()
    errors = [e for e in tracer.events if e.kind == Kind.HTTP_ERROR]
    assert len(errors) == 1 and "RuntimeError" in str(errors[0].field("reason"))


async def test_deeply_nested_put_over_loopback_is_400_and_the_server_goes_on() -> None:
    server = SyncServer(SyncService([T1]))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        payload = b'{"records": ' + b"[" * 200_000
        status, _, _ = await trio.to_thread.run_sync(
            lambda: _client(port, "PUT", payload, **{"Content-Type": "application/json", "If-Match": "*"})
        )
        assert status == 400
        status, _, _ = await trio.to_thread.run_sync(_client, port, "GET")
        assert status == 200
        nursery.cancel_scope.cancel()
