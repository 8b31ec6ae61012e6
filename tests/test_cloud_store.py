"""The cloud store of the eUICC backup (ota/cloud_store.py; docs/protocols.md, "eUICC and the cloud backup"): the
website, the upload with its limit, fetch and delete, persistence, the access log. In-process over memory streams,
one real loopback socket and one real `bipsim cloud` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from bipsim.ap.lpa.records import decode_record, encode_records, join_records, record_size_limit
from bipsim.ota.cloud_store import (
    CloudClient,
    CloudError,
    CloudServer,
    CloudService,
    NotRegistered,
    StoreError,
)
from bipsim.trace.recorder import Tracer

EID = "89049032123451234512345678901235"
PASSWORD = "s3cret-pass"
ITERATIONS = 1000  # PBKDF2 rounds for tests: the rule is the same, the CPU is not spent


class Cloud:
    """A CloudServer reached over memory streams; `client()` makes a client connected to it."""

    def __init__(self, nursery: trio.Nursery, service: CloudService) -> None:
        self.nursery = nursery
        self.service = service
        self.tracer = Tracer(keep=True)
        self.server = CloudServer(service, self.tracer)

    async def connect(self) -> trio.abc.Stream:
        ours, theirs = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.server.handle, theirs)
        return ours

    def client(self) -> CloudClient:
        return CloudClient("http://127.0.0.1:8470", tracer=self.tracer, connect=self.connect)

    def kinds(self, prefix: str = "cloud.") -> list[str]:
        return [e.kind for e in self.tracer.events if e.kind.startswith(prefix)]

    def last(self, kind: str) -> dict[str, object]:
        event = [e for e in self.tracer.events if e.kind == kind][-1]
        return dict(event.fields or {})


def service(tmp_path: Path | None = None, **kwargs: object) -> CloudService:
    paths = {}
    if tmp_path is not None:
        paths = {"users_path": tmp_path / "users.json", "state_path": tmp_path / "state.json"}
    return CloudService(iterations=ITERATIONS, **paths, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def cloud() -> AsyncIterator[Cloud]:
    async with trio.open_nursery() as nursery:
        yield Cloud(nursery, service())
        nursery.cancel_scope.cancel()


async def logged_in(cloud: Cloud, user: str = "alice") -> CloudClient:
    client = cloud.client()
    await client.register(user, PASSWORD)
    return client


def package(size: int) -> bytes:
    return bytes((i * 13 + i // 1024) % 256 for i in range(size))


async def test_login_of_a_user_never_registered_goes_to_the_registration_page(cloud: Cloud) -> None:
    client = cloud.client()
    assert client.limit is None
    assert await client.logged_in() is None
    assert client.limit == 1024  # the session check tells the single-upload maximum
    with pytest.raises(NotRegistered) as caught:
        await client.login("bob", PASSWORD)
    assert caught.value.status == 303
    assert caught.value.location == "/register?user=bob"
    assert client.cookie is None
    assert cloud.last("cloud.login") | {"ok": False, "status": 303} == cloud.last("cloud.login")
    await client.register("bob", PASSWORD)
    assert await client.logged_in() == "bob"
    fresh = cloud.client()
    await fresh.login("bob", PASSWORD)
    assert await fresh.logged_in() == "bob"
    await fresh.logout()
    assert await fresh.logged_in() is None
    assert cloud.kinds() == [
        "cloud.login",  # the check: not logged in
        "cloud.login",  # unknown user: 303 to /register
        "cloud.register",
        "cloud.login",
        "cloud.login",
        "cloud.login",
        "cloud.login",  # logout
        "cloud.login",
    ]


async def test_wrong_password_duplicate_and_bad_names_are_refused(cloud: Cloud) -> None:
    await logged_in(cloud, "carol")
    client = cloud.client()
    with pytest.raises(CloudError) as caught:
        await client.login("carol", "wrong-password")
    assert (caught.value.status, caught.value.reason) == (401, "Wrong password.")
    with pytest.raises(CloudError) as caught:
        await client.login("carol", PASSWORD + "x" * 300)
    assert caught.value.status == 401
    with pytest.raises(CloudError) as caught:
        await client.register("carol", PASSWORD)
    assert caught.value.status == 409
    for user, password in [("no spaces", PASSWORD), ("dave", "abc"), ("", PASSWORD)]:
        with pytest.raises(CloudError) as caught:
            await client.register(user, password)
        assert caught.value.status == 400
    assert client.cookie is None
    assert [cloud.last("cloud.register")["ok"], cloud.last("cloud.login")["ok"]] == [False, False]


async def test_the_password_never_reaches_the_trace(cloud: Cloud) -> None:
    client = await logged_in(cloud)
    await client.login("alice", PASSWORD)
    secret = PASSWORD.encode().hex().upper()
    for event in cloud.tracer.events:
        assert secret not in (event.hex or ""), event
        assert PASSWORD not in json.dumps(event.fields), event


async def test_website_pages() -> None:
    svc = service()
    from bipsim.ota.http_connection import HttpRequest

    page = svc.handle(HttpRequest("GET", "/login"), 0.0)
    assert page.status == 200 and b'<form method="post" action="/login">' in page.body
    assert b'name="password" type="password"' in page.body and b'href="/register"' in page.body
    page = svc.handle(HttpRequest("GET", "/register?user=%3Cb%3E"), 0.0)
    assert b'value="&lt;b&gt;"' in page.body  # the name is escaped into the form
    home = svc.handle(HttpRequest("GET", "/"), 0.0)
    assert (home.status, dict(home.headers)["location"]) == (303, "/login")
    assert svc.handle(HttpRequest("GET", "/nowhere"), 0.0).status == 404
    wrong = svc.handle(HttpRequest("PUT", "/profiles"), 0.0)
    assert wrong.status == 405 and dict(wrong.headers)["allow"] == "POST, GET, DELETE"
    form = svc.handle(HttpRequest("POST", "/login", {"content-type": "text/plain"}, b"user=a"), 0.0)
    assert form.status == 415
    form = svc.handle(
        HttpRequest("POST", "/login", {"content-type": "application/x-www-form-urlencoded"}, b"user=a"), 0.0
    )
    assert (form.status, form.fields["field"]) == (400, "password")


@pytest.mark.parametrize("size", [1024, 2048, 2049])
async def test_upload_fetch_delete_round_trip(cloud: Cloud, size: int) -> None:
    client = await logged_in(cloud)
    data = package(size)
    records = encode_records(eid=EID, ppr=3, package=data)
    await client.upload(records)
    uploads = [e.fields for e in cloud.tracer.events if e.kind == "cloud.upload"]
    assert [(u["index"], u["count"], u["complete"]) for u in uploads] == [
        (i, len(records), i == len(records) - 1) for i in range(len(records))
    ]
    fetched = await client.fetch(EID, "LPA")
    assert fetched == records
    assert join_records(fetched, limit=1024) == data
    await client.delete(EID, "LPA")
    assert client.deleted == len(records)
    with pytest.raises(CloudError) as caught:
        await client.fetch(EID, "LPA")
    assert caught.value.status == 404
    with pytest.raises(CloudError) as caught:
        await client.delete(EID, "LPA")
    assert caught.value.status == 404
    assert cloud.service.backups == {}


async def test_no_session_no_upload_fetch_or_delete(cloud: Cloud) -> None:
    client = cloud.client()
    records = encode_records(eid=EID, ppr=0, package=b"\xbf\x36\x00")
    with pytest.raises(CloudError) as caught:
        await client.upload(records)
    assert caught.value.status == 401
    for call in (client.fetch, client.delete):
        with pytest.raises(CloudError) as caught:
            await call(EID, "LPA")
        assert caught.value.status == 401
    assert cloud.service.backups == {}
    refused = [e for e in cloud.tracer.events if e.kind == "cloud.refused"]
    assert [e.fields["status"] for e in refused] == [401, 401, 401] and all(e.error for e in refused)


async def test_a_body_over_the_limit_is_413(cloud: Cloud) -> None:
    client = await logged_in(cloud)
    # a record of 2048 package bytes: its body passes the longest 1024-byte record, refused on its length alone
    big = encode_records(eid=EID, ppr=0, package=package(2048), limit=2048)
    assert len(big[0]) > record_size_limit(1024)
    with pytest.raises(CloudError) as caught:
        await client.upload(big)
    assert caught.value.status == 413
    assert cloud.last("http.error")["status"] == 413
    # 1025 bytes: the body is short enough for the connection, the record carries more than the limit
    over = encode_records(eid=EID, ppr=0, package=package(1025), limit=1025)
    assert len(over[0]) <= record_size_limit(1024)
    with pytest.raises(CloudError) as caught:
        await client.upload(over)
    assert caught.value.status == 413
    assert cloud.last("cloud.refused") | {"status": 413, "field": "profile_data"} == cloud.last(
        "cloud.refused"
    )
    assert cloud.service.backups == {}


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.replace("PPR=3", "PPR=7"), "PPR"),
        (lambda r: r.replace("$PPR=3", ""), "PPR"),
        (lambda r: r.replace("profile_len=2049", "profile_len=20x9"), "profile_len"),
        (lambda r: r[:-1], "profile_data"),
        (lambda r: r + "$extra=1", "extra"),
    ],
)
async def test_a_malformed_record_is_400_naming_the_field(cloud: Cloud, mutate: object, field: str) -> None:
    client = await logged_in(cloud)
    records = encode_records(eid=EID, ppr=3, package=package(2049))
    with pytest.raises(CloudError) as caught:
        await client.upload([mutate(records[0]), *records[1:]])  # type: ignore[operator]
    assert caught.value.status == 400
    assert field in caught.value.reason
    assert cloud.last("cloud.refused")["field"] == field
    assert cloud.service.backups == {}


async def test_index_and_count_headers_are_checked(cloud: Cloud) -> None:
    client = await logged_in(cloud)
    records = encode_records(eid=EID, ppr=1, package=package(2049))
    body = records[0].encode()
    cases = [
        ([("x-record-count", "3")], "x-record-index"),
        ([("x-record-index", "0")], "x-record-count"),
        ([("x-record-index", "3"), ("x-record-count", "3")], "x-record-index"),
        ([("x-record-index", "0"), ("x-record-count", "2")], "x-record-count"),  # 2049 bytes need 3
        ([("x-record-index", "0"), ("x-record-count", "4")], "profile_data"),  # 1024-byte chunks make 3
        ([("x-record-index", "-1"), ("x-record-count", "3")], "x-record-index"),
    ]
    for headers, field in cases:
        reply = await client._exchange("POST", "/profiles", body, headers)
        assert reply.status == 400, (headers, reply)
        assert cloud.last("cloud.refused")["field"] == field, headers
    assert cloud.service.backups == {}


async def test_incomplete_backup_is_409_and_a_record_without_its_start_is_refused(cloud: Cloud) -> None:
    client = await logged_in(cloud)
    records = encode_records(eid=EID, ppr=2, package=package(2049))
    with pytest.raises(CloudError) as caught:
        await client.upload(records[1:])  # the client numbers them 0 and 1: a 2-record set is not 2049 bytes
    assert caught.value.status == 400
    headers = [("x-record-index", "1"), ("x-record-count", "3")]
    reply = await client._exchange("POST", "/profiles", records[1].encode(), headers)
    assert reply.status == 409  # index 0 was never stored
    reply = await client._exchange(
        "POST", "/profiles", records[0].encode(), [("x-record-index", "0"), *headers[1:]]
    )
    assert reply.status == 201
    with pytest.raises(CloudError) as caught:
        await client.fetch(EID)
    assert caught.value.status == 409
    fetch = cloud.last("cloud.fetch")
    assert (fetch["status"], fetch["missing"], fetch["count"]) == (409, [1, 2], 3)
    # the same records again complete it, and a new index 0 starts a new backup
    await client.upload(records)
    assert await client.fetch(EID) == records
    again = encode_records(eid=EID, ppr=0, package=b"\x01\x02")
    await client.upload(again)
    assert await client.fetch(EID) == again


async def test_a_last_record_that_does_not_join_is_refused(cloud: Cloud) -> None:
    client = await logged_in(cloud)
    records = encode_records(eid=EID, ppr=0, package=package(2049))
    bad_last = records[2].replace("profile_data=", "profile_data=00")  # 2 bytes where 1 remain
    with pytest.raises(CloudError) as caught:
        await client.upload([*records[:2], bad_last])
    assert caught.value.status == 400 and "profile_len" in caught.value.reason
    fetch_error = None
    try:
        await client.fetch(EID)
    except CloudError as exc:
        fetch_error = exc.status
    assert fetch_error == 409  # the two good records are held, the set is not complete


async def test_another_account_cannot_reach_a_backup(cloud: Cloud) -> None:
    alice = await logged_in(cloud, "alice")
    await alice.upload(encode_records(eid=EID, ppr=0, package=b"\xbf\x36"))
    mallory = await logged_in(cloud, "mallory")
    for call in (mallory.fetch, mallory.delete):
        with pytest.raises(CloudError) as caught:
            await call(EID, "LPA")
        assert caught.value.status == 403
    with pytest.raises(CloudError) as caught:
        await mallory.upload(encode_records(eid=EID, ppr=0, package=b"\x00"))
    assert caught.value.status == 403
    assert await alice.fetch(EID) == encode_records(eid=EID, ppr=0, package=b"\xbf\x36")


async def test_query_is_checked(cloud: Cloud) -> None:
    client = await logged_in(cloud)
    for target, field in [
        ("/profiles?module=LPA", "eid"),
        (f"/profiles?eid={EID}", "module"),
        ("/profiles?eid=1234&module=LPA", "EID"),
        (f"/profiles?eid={EID}&module=L%24A", "module"),
    ]:
        reply = await client._exchange("GET", target)
        assert reply.status == 400
        assert cloud.last("cloud.refused")["field"] == field


async def test_malformed_http_is_400_and_the_server_goes_on(cloud: Cloud) -> None:
    stream = await cloud.connect()
    await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
    answer = b""
    while chunk := await stream.receive_some(4096):
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert cloud.last("http.error")["status"] == 400
    client = await logged_in(cloud)
    assert await client.logged_in() == "alice"


async def test_state_and_users_survive_a_restart(tmp_path: Path) -> None:
    data = package(2049)
    records = encode_records(eid=EID, ppr=3, package=data)
    async with trio.open_nursery() as nursery:
        first = Cloud(nursery, service(tmp_path))
        client = first.client()
        await client.register("alice", PASSWORD)
        await client.upload(records)
        # a restart: a new service reads the files; the session is gone, the client logs in again by itself
        second = Cloud(nursery, service(tmp_path))
        client._connect = second.connect
        assert await client.fetch(EID) == records
        assert [e.fields["status"] for e in second.tracer.events if e.kind.startswith("cloud.")] == [
            401,
            303,
            200,
        ]
        await client.delete(EID)
        assert client.deleted == 3
        third = service(tmp_path)
        assert third.backups == {} and set(third.users) == {"alice"}
        nursery.cancel_scope.cancel()
    saved = json.loads((tmp_path / "users.json").read_text())
    assert PASSWORD not in json.dumps(saved) and saved["users"]["alice"]["iterations"] == ITERATIONS


def test_a_broken_state_file_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"backups": [{"eid": 1}]}')
    with pytest.raises(StoreError):
        service(tmp_path)
    (tmp_path / "state.json").write_text("not json")
    with pytest.raises(StoreError):
        service(tmp_path)
    (tmp_path / "state.json").unlink()
    (tmp_path / "users.json").write_text('{"users": {"x y": {}}}')
    with pytest.raises(StoreError):
        service(tmp_path)


async def test_a_smaller_limit_takes_smaller_records() -> None:
    async with trio.open_nursery() as nursery:
        cloud = Cloud(nursery, service(limit=100))
        client = await logged_in(cloud)
        assert await client.logged_in() == "alice" and client.limit == 100
        data = package(250)
        with pytest.raises(CloudError) as caught:
            await client.upload(encode_records(eid=EID, ppr=0, package=data))  # 1024-byte records
        assert caught.value.status == 413
        records = encode_records(eid=EID, ppr=0, package=data, limit=100)
        await client.upload(records)
        assert join_records(await client.fetch(EID), limit=100) == data
        nursery.cancel_scope.cancel()


async def test_client_over_a_real_loopback_socket() -> None:
    async with trio.open_nursery() as nursery:
        svc = service()
        server = CloudServer(svc)
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        client = CloudClient(f"http://127.0.0.1:{port}")
        await client.register("alice", PASSWORD)
        records = encode_records(eid=EID, ppr=1, package=package(1500))
        await client.upload(records)
        assert await client.fetch(EID) == records
        # a body far over the limit is refused on its length; the server reads and drops the rest before it
        # closes (a lingering close), so the client reads the 413 instead of a connection reset
        huge = encode_records(eid=EID, ppr=1, package=package(500_000), limit=500_000)
        with pytest.raises(CloudError) as caught:
            await client.upload(huge)
        assert caught.value.status == 413
        nursery.cancel_scope.cancel()
    with pytest.raises(CloudError) as caught:
        await CloudClient(f"http://127.0.0.1:{port}", timeout=5).logged_in()
    assert caught.value.status == 0  # nobody listens now: a transport error, not an HTTP status


def test_cloud_url_is_checked() -> None:
    for url in ("https://127.0.0.1", "http://127.0.0.1", "ftp://x:1", "http://h:1/path", "http://h:1?x=1"):
        with pytest.raises(ValueError):
            CloudClient(url)
    assert (CloudClient("127.0.0.1:8470").host, CloudClient("http://localhost:9/").port) == ("127.0.0.1", 9)
    assert (
        CloudClient("http://h:1").ssl_context is None and CloudClient("https://h:1").ssl_context is not None
    )


def test_bipsim_cloud_process_serves_and_keeps_state(tmp_path: Path) -> None:
    """The command itself: listens, seeds a user, writes its trace and state, exits 0 on SIGTERM."""
    trace = tmp_path / "cloud.jsonl"
    state = tmp_path / "state.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bipsim", "cloud", "--listen", "127.0.0.1:0", "--user", f"alice:{PASSWORD}",
         "--state", str(state), "--trace", str(trace), "--limit", "512"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line + (proc.stderr.read() if proc.stderr else "")
        port = int(line.rsplit(":", 1)[1])
        records = encode_records(eid=EID, ppr=2, package=package(1100), limit=512)

        async def use() -> list[str]:
            client = CloudClient(f"http://127.0.0.1:{port}")
            await client.login("alice", PASSWORD)
            await client.upload(records)
            return await client.fetch(EID)

        assert trio.run(use) == records
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().rsplit("summary: ", 1)[1])
    assert summary | {"uploads": 3, "fetches": 1, "backups": 1, "users": 1} == summary
    assert len(json.loads(state.read_text())["backups"][0]["records"]) == 3
    kinds = [json.loads(line)["kind"] for line in trace.read_text().splitlines()]
    assert kinds.count("cloud.upload") == 3 and "cloud.fetch" in kinds


def test_bad_options_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bipsim.cli import main

    def run(*args: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as exited:
            main(["cloud", *args])
        captured = capsys.readouterr()
        return int(exited.value.code or 0), captured.out + captured.err

    code, text = run("--user", "nopassword")
    assert code == 2 and "NAME:PASSWORD" in text and len(text.strip().splitlines()) == 1
    code, text = run("--user", "x:ab")
    assert code == 2 and "password" in text
    bad = tmp_path / "state.json"
    bad.write_text("[]")
    code, text = run("--state", str(bad))
    assert code == 1 and "not a JSON object" in text
    code, text = run("--tls-cert", str(bad))
    assert code == 2 and "--tls-key" in text
    code, text = run("--tls-cert", str(bad), "--tls-key", str(bad))
    assert code == 1 and "--tls-cert/--tls-key" in text
    code, text = run("--help")
    assert code == 0 and "--limit" in text and "X-Record-Index" in text


async def test_https_with_a_certificate_the_client_trusts(tmp_path: Path) -> None:
    """TLS is optional (`--tls-cert`): the test PKI's TLS server certificate for 127.0.0.1, trusted through its CI."""
    from bipsim.uicc.euicc.pki import client_ssl_context, generate_pki, server_ssl_context

    pki = generate_pki(tmp_path / "pki")
    async with trio.open_nursery() as nursery:
        tracer = Tracer(keep=True)
        server = CloudServer(service(), tracer, ssl_context=server_ssl_context(pki))

        async def connect() -> trio.abc.Stream:
            ours, theirs = trio.testing.memory_stream_pair()
            nursery.start_soon(server.handle, theirs)
            return ours

        client = CloudClient("https://127.0.0.1:8470", connect=connect, ssl_context=client_ssl_context(pki))
        await client.register("alice", PASSWORD)
        records = encode_records(eid=EID, ppr=0, package=package(1500))
        await client.upload(records)
        assert await client.fetch(EID) == records
        handshakes = [e.fields for e in tracer.events if e.kind == "tls.handshake"]
        assert handshakes and all(h["ok"] for h in handshakes)
        # a client that does not trust the CI refuses the server; the server traces the failed handshake
        stranger = CloudClient("https://127.0.0.1:8470", connect=connect)
        with pytest.raises(CloudError) as caught:
            await stranger.logged_in()
        assert caught.value.status == 0 and "certificate" in caught.value.reason.lower()
        # plain HTTP to the TLS server: no answer either
        plain = CloudClient("http://127.0.0.1:8470", connect=connect, timeout=5)
        with pytest.raises(CloudError) as caught:
            await plain.logged_in()
        assert caught.value.status == 0
        nursery.cancel_scope.cancel()
    failed = [e for e in tracer.events if e.kind == "tls.handshake" and not e.fields["ok"]]
    assert len(failed) == 2 and all(e.error for e in failed)


def test_a_session_ends_after_its_time_and_a_restart_keeps_what_a_larger_limit_took(tmp_path: Path) -> None:
    from bipsim.ota.cloud_store import COOKIE, SESSION_TTL
    from bipsim.ota.http_connection import HttpRequest

    svc = service(tmp_path, limit=2048)
    svc.add_user("alice", PASSWORD)
    login = svc.handle(
        HttpRequest(
            "POST",
            "/login",
            {"content-type": "application/x-www-form-urlencoded"},
            f"user=alice&password={PASSWORD}".encode(),
        ),
        100.0,
    )
    token = dict(login.headers)["set-cookie"].split(";")[0].split("=", 1)[1]
    cookie = {"cookie": f"other=1; {COOKIE}={token}"}
    assert svc.session_user(HttpRequest("GET", "/", cookie), 100.0 + SESSION_TTL - 1) == "alice"
    records = encode_records(eid=EID, ppr=0, package=package(3000), limit=2048)
    for index, record in enumerate(records):
        headers = {**cookie, "x-record-index": str(index), "x-record-count": "2"}
        assert svc.handle(HttpRequest("POST", "/profiles", headers, record.encode()), 101.0).status == 201
    assert svc.handle(HttpRequest("GET", f"/profiles?eid={EID}&module=LPA", cookie), 200.0).status == 200
    assert svc.session_user(HttpRequest("GET", "/", cookie), 100.0 + SESSION_TTL) is None
    assert svc.handle(HttpRequest("GET", "/session", cookie), 100.0 + SESSION_TTL).status == 401
    # restarted with the default 1024-byte limit: the 2048-byte records it took before are served as they are
    again = service(tmp_path)
    assert set(again.users) == {"alice"}
    login = again.handle(
        HttpRequest(
            "POST",
            "/login",
            {"content-type": "application/x-www-form-urlencoded"},
            f"user=alice&password={PASSWORD}".encode(),
        ),
        0.0,
    )
    token = dict(login.headers)["set-cookie"].split(";")[0].split("=", 1)[1]
    fetched = again.handle(
        HttpRequest("GET", f"/profiles?eid={EID}&module=LPA", {"cookie": f"{COOKIE}={token}"}), 1.0
    )
    assert fetched.status == 200
    assert join_records(fetched.body.decode().splitlines()) == package(3000)


async def test_the_access_log_keeps_pages_out_and_records_in(cloud: Cloud) -> None:
    client = await logged_in(cloud)
    with pytest.raises(CloudError):
        await client.login("alice", "wrong-password")  # answered with the login page (HTML)
    records = encode_records(eid=EID, ppr=0, package=b"\xbf\x36\x01")
    await client.upload(records)
    await client.fetch(EID)
    server_side = [e for e in cloud.tracer.events if e.src.value == "cloud" and e.kind.startswith("cloud.")]
    wrong = [e for e in server_side if e.kind == "cloud.login" and e.fields["status"] == 401]
    assert wrong and wrong[0].hex is None
    fetch = [e for e in server_side if e.kind == "cloud.fetch"][0]
    assert bytes.fromhex(fetch.hex or "").decode() == records[0] + "\n"
    upload_request = [e for e in cloud.tracer.events if e.kind == "http.request" and e.dst.value == "cloud"]
    assert any(e.hex and bytes.fromhex(e.hex).decode() == records[0] for e in upload_request)


def test_the_core_answers_anything_a_client_sends() -> None:
    """Seeded garbage at every endpoint: an HTTP status for each, never an exception, nothing stored."""
    import random

    from bipsim.ota.cloud_store import COOKIE
    from bipsim.ota.http_connection import HttpRequest

    svc = service()
    svc.add_user("alice", PASSWORD)
    login = svc.handle(
        HttpRequest("POST", "/login", {"content-type": "application/x-www-form-urlencoded"},
                    f"user=alice&password={PASSWORD}".encode()),
        0.0,
    )  # fmt: skip
    cookie = f"{COOKIE}=" + dict(login.headers)["set-cookie"].split(";")[0].split("=", 1)[1]
    good = encode_records(eid=EID, ppr=3, package=package(2049))
    rng = random.Random(23)
    paths = [
        "/",
        "/login",
        "/register",
        "/logout",
        "/session",
        "/profiles",
        "/profiles?eid=" + EID + "&module=LPA",
    ]
    statuses = set()
    for _ in range(400):
        record = bytearray(rng.choice(good).encode())
        for _ in range(rng.randrange(4)):
            record[rng.randrange(len(record))] = rng.randrange(256)
        body = rng.choice([bytes(record), rng.randbytes(rng.randrange(64)), b"user=%FF&password=\x00", b""])
        headers = {
            "cookie": rng.choice([cookie, "", f"{COOKIE}=nope", "a=b;;;=="]),
            "content-type": rng.choice(["text/plain", "application/x-www-form-urlencoded", ""]),
            "x-record-index": rng.choice(["0", "1", "2", "-1", "x", "99999999999", ""]),
            "x-record-count": rng.choice(["3", "1", "0", "2, 3", ""]),
        }
        target = rng.choice(paths) + rng.choice(["", "?", "&eid=%00", "?module=" + "A" * 300, "#x"])
        answer = svc.handle(
            HttpRequest(rng.choice(["GET", "POST", "DELETE", "PUT"]), target, headers, body), 1.0
        )
        assert 200 <= answer.status < 600 and answer.fields["status"] == answer.status
        statuses.add(answer.status)
    assert {200, 303, 400, 401, 404, 405} <= statuses
    for (eid, module), backup in svc.backups.items():  # whatever was stored is whole records of the format
        assert all(
            (decode_record(t).eid, decode_record(t).module) == (eid, module) for t in backup.records.values()
        )
