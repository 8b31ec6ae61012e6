"""The push deployment's publish server (ota/publish_server.py, ota/push_channel.py, ota/release_catalogue.py):
every HTTP endpoint in process over memory streams, authentication and its refusals, the lying server's faults,
the IP-push framing and handshake (keep-alive on trio's MockClock), the admin notify through a real SMSC control
socket on loopback, and one download by the standard library's HTTP client over a loopback socket."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from bipsim.cli import cli
from bipsim.ota.publish_server import (
    MAX_BODY,
    NONCE_TTL,
    Fault,
    PublishServer,
    PublishService,
    TerminalAuth,
    TerminalsError,
    load_terminals,
    terminal_mac,
)
from bipsim.ota.push_channel import (
    DEAD_PEER,
    KEEPALIVE,
    MAX_FRAME,
    Close,
    FrameDecoder,
    FrameError,
    PushServer,
    PushServerConnection,
    PushState,
    encode_frame,
)
from bipsim.ota.release_catalogue import (
    Catalogue,
    CatalogueError,
    VersionError,
    load_catalogue,
    make_release,
    newer,
    parse_version,
)
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer
from tests.http_peer import Message, MessageParser, render

IMEI = "490154203237518"
TOKEN = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
OTHER = "356938035643809"  # a well-formed IMEI the server does not know


def catalogue_dir(tmp_path: Path) -> Path:
    (tmp_path / "app-1.9.bin").write_bytes(b"old version " * 10)
    (tmp_path / "app-1.10.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "catalogue.toml").write_text(
        "[[release]]\nname = 'app'\nversion = '1.9'\nfile = 'app-1.9.bin'\ntimestamp = 2026-11-01T10:00:00Z\n"
        "[[release]]\nname = 'app'\nversion = '1.10'\nfile = 'app-1.10.bin'\n"
        "timestamp = '2026-11-30T12:00:00+01:00'\n"
    )
    return tmp_path


class Rig:
    """A publish server in process; each `call` is one request on its own memory-stream connection."""

    def __init__(
        self, tmp_path: Path, faults: frozenset[Fault] = frozenset(), smsc: tuple[str, int] | None = None
    ):
        self.tracer = Tracer(keep=True)
        self.auth = TerminalAuth({IMEI: TOKEN}, reject_all=Fault.REJECT_AUTH in faults)
        self.service = PublishService(
            load_catalogue(catalogue_dir(tmp_path)),
            self.auth,
            advertise="127.0.0.1:18450",
            faults=faults,
            smsc=smsc is not None,
        )
        self.push = PushServer(self.auth, self.tracer)
        self.server = PublishServer(self.service, self.tracer, push=self.push, smsc=smsc)

    async def raw(self, data: bytes, peer: str = "127.0.0.1") -> tuple[list[Message], bytes]:
        """Sends `data`, reads until the server closes; the whole answers and every byte received."""
        client, server = trio.testing.memory_stream_pair()
        received = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.server.handle, server, peer)
            await client.send_all(data)
            while chunk := await client.receive_some(65536):
                received += chunk
        return MessageParser(requests=False).feed(received), bytes(received)

    async def call(
        self,
        method: str,
        target: str,
        body: object = None,
        session: str | None = None,
        peer: str = "127.0.0.1",
    ) -> Message:
        headers = [("Host", "publish"), ("Connection", "close")]
        if session is not None:
            headers.append(("Authorization", f"Bearer {session}"))
        data = b"" if body is None else json.dumps(body).encode()
        if body is not None:
            headers.append(("Content-Type", "application/json"))
        answers, _ = await self.raw(render(f"{method} {target} HTTP/1.1", headers, data), peer)
        assert len(answers) == 1
        return answers[0]

    async def login(self, imei: str = IMEI, token: bytes = TOKEN) -> Message:
        nonce = json.loads((await self.call("POST", "/v1/auth/challenge", {"imei": imei})).body)["nonce"]
        mac = terminal_mac(token, nonce, imei)
        return await self.call("POST", "/v1/auth/response", {"imei": imei, "nonce": nonce, "mac": mac})

    async def session(self) -> str:
        answer = await self.login()
        assert answer.status == 200, answer.body
        return str(json.loads(answer.body)["session"])

    def kinds(self, prefix: str = "publish.") -> list[str]:
        return [e.kind for e in self.tracer.events if e.kind.startswith(prefix)]

    def events(self, kind: Kind) -> list[Any]:
        return [e for e in self.tracer.events if e.kind == kind]


# --- catalogue and versions ------------------------------------------------------------------------------------------


def test_versions_compare_as_dotted_integers() -> None:
    assert newer("1.10", "1.9") and not newer("1.9", "1.10")
    assert parse_version("1.2") == parse_version("1.2.0") and not newer("1.2.0", "1.2")
    assert newer("2", "1.99.99")
    for bad in ("", "1.", "a.b", "1..2", " 1", "1.-2", 3):
        with pytest.raises(VersionError):
            parse_version(bad)


def test_catalogue_holds_size_hash_location_and_utc_timestamp(tmp_path: Path) -> None:
    catalogue = load_catalogue(catalogue_dir(tmp_path))
    latest = catalogue.latest("app")
    assert latest is not None and latest.version == "1.10"  # numerically, not as text
    data = (tmp_path / "app-1.10.bin").read_bytes()
    assert latest.as_json() == {
        "name": "app",
        "version": "1.10",
        "location": "/v1/packages/app/1.10",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "timestamp": "2026-11-30T11:00:00Z",
        "kind": "software",  # no `kind` in its catalogue.toml entry
    }
    assert catalogue.find("/v1/packages/app/1.9") is catalogue.get("app", "1.9")
    assert catalogue.find("/v1/packages/app") is None and catalogue.latest("none") is None


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("name = 'x'\nversion = '1'\nfile = 'missing.bin'\ntimestamp = 2026-01-01T00:00:00Z", "missing.bin"),
        ("name = 'x'\nversion = '1'\nfile = '../outside.bin'\ntimestamp = 2026-01-01T00:00:00Z", "outside"),
        ("name = 'x'\nversion = 'v1'\nfile = 'p.bin'\ntimestamp = 2026-01-01T00:00:00Z", "version"),
        ("name = 'x/y'\nversion = '1'\nfile = 'p.bin'\ntimestamp = 2026-01-01T00:00:00Z", "name"),
        ("name = 'x'\nversion = '1'\nfile = 'p.bin'\ntimestamp = 'yesterday'", "timestamp"),
        ("name = 'x'\nversion = '1'\nfile = 'p.bin'", "missing timestamp"),
    ],
)
def test_a_bad_catalogue_entry_is_named(tmp_path: Path, entry: str, reason: str) -> None:
    (tmp_path / "outside.bin").write_bytes(b"x")
    inner = tmp_path / "cat"
    inner.mkdir()
    (inner / "p.bin").write_bytes(b"p")
    (inner / "catalogue.toml").write_text(f"[[release]]\n{entry}\n")
    with pytest.raises(CatalogueError, match=reason):
        load_catalogue(inner)


def test_terminals_file(tmp_path: Path) -> None:
    path = tmp_path / "terminals.toml"
    path.write_text(f'[terminals]\n"{IMEI}" = "{TOKEN.hex()}"\n')
    assert load_terminals(path) == {IMEI: TOKEN}
    for text, reason in (
        ('[terminals]\n"12" = "00112233445566778899AABBCCDDEEFF"\n', "not an IMEI"),
        (f'[terminals]\n"{IMEI}" = "0011"\n', "16 bytes"),
        (f'[terminals]\n"{IMEI}" = "zz"\n', "16 bytes"),
        ("[other]\n", r"\[terminals\]"),
    ):
        path.write_text(text)
        with pytest.raises(TerminalsError, match=reason):
            load_terminals(path)


# --- authentication --------------------------------------------------------------------------------------------------


def test_the_mac_is_hmac_sha256_of_nonce_and_imei() -> None:
    nonce = "00" * 15 + "01"
    expected = hmac.new(TOKEN, bytes(15) + b"\x01" + IMEI.encode(), hashlib.sha256).hexdigest()
    assert terminal_mac(TOKEN, nonce, IMEI) == expected


def test_nonces_are_single_use_bound_to_the_imei_and_expire() -> None:
    auth = TerminalAuth({IMEI: TOKEN})
    nonce = auth.challenge(IMEI, now=0.0)
    assert len(nonce) == 32 and int(nonce, 16) >= 0
    mac = terminal_mac(TOKEN, nonce, IMEI)
    assert auth.verify(IMEI, nonce, mac, now=1.0) is None
    assert auth.verify(IMEI, nonce, mac, now=1.0) == "unknown or already used nonce"  # a replay
    late = auth.challenge(IMEI, now=0.0)
    assert "expired" in str(auth.verify(IMEI, late, terminal_mac(TOKEN, late, IMEI), now=NONCE_TTL + 1))
    other = auth.challenge(OTHER, now=0.0)
    assert "another IMEI" in str(auth.verify(IMEI, other, terminal_mac(TOKEN, other, IMEI), now=1.0))
    wrong = auth.challenge(IMEI, now=0.0)
    assert (
        auth.verify(IMEI, wrong, terminal_mac(b"\x01" * 16, wrong, IMEI), now=1.0) == "authentication failed"
    )


async def test_authenticated_terminal_reads_catalogue_checks_downloads_and_reports(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    session = await rig.session()
    release = await rig.call("GET", "/v1/catalogue/app", session=session)
    assert release.status == 200
    info = json.loads(release.body)
    assert info["version"] == "1.10" and info["location"] == "/v1/packages/app/1.10"

    check = json.loads((await rig.call("POST", "/v1/check", {"name": "app", "version": "1.9"}, session)).body)
    assert check == {"update": True, "release": info}
    same = json.loads((await rig.call("POST", "/v1/check", {"name": "app", "version": "1.10"}, session)).body)
    assert same == {"update": False}
    unknown = json.loads((await rig.call("POST", "/v1/check", {"name": "zz", "version": "1"}, session)).body)
    assert unknown == {"update": False}

    package = await rig.call("GET", info["location"], session=session)
    assert package.status == 200
    assert package.header("content-type") == "application/octet-stream"
    assert int(package.header("content-length")) == info["size"] == len(package.body)
    assert package.header("x-package-sha256") == info["sha256"] == hashlib.sha256(package.body).hexdigest()
    old = await rig.call("GET", "/v1/packages/app/1.9", session=session)
    assert old.body == (tmp_path / "app-1.9.bin").read_bytes()

    report = {"name": "app", "version": "1.10", "status": 900, "reason": "installed"}
    answer = await rig.call("POST", "/v1/report", report, session)
    assert answer.status == 204 and answer.body == b""
    assert [(r.imei, r.name, r.version, r.status) for r in rig.service.reports] == [
        (IMEI, "app", "1.10", 900)
    ]

    # the access log: challenge, authentication, then the rest, each with its imei once authenticated
    assert rig.kinds() == [
        "publish.challenge",
        "publish.auth",
        "publish.catalogue",
        "publish.check",
        "publish.check",
        "publish.check",
        "publish.download",
        "publish.download",
        "publish.report",
    ]
    auth = rig.events(Kind.PUBLISH_AUTH)[0]
    assert auth.field("ok") is True and auth.step == "001:203" and auth.field("imei") == IMEI
    download = rig.events(Kind.PUBLISH_DOWNLOAD)[0]
    assert download.field("imei") == IMEI and download.field("sha256") == info["sha256"]
    assert download.hex is None  # a package's bytes are not copied into the trace
    assert rig.events(Kind.PUBLISH_REPORT)[0].field("result_name") == "Success"
    assert len(rig.events(Kind.HTTP_REQUEST)) == len(rig.kinds()) == 9


async def test_failed_authentication_gets_403_and_no_download(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    wrong = await rig.login(token=b"\x99" * 16)
    assert wrong.status == 403 and json.loads(wrong.body) == {"error": "authentication failed"}
    # an unknown IMEI gets a nonce all the same (the server does not tell which terminals it knows), then 403
    stranger = await rig.call("POST", "/v1/auth/challenge", {"imei": OTHER})
    assert stranger.status == 200 and len(json.loads(stranger.body)["nonce"]) == 32
    assert (await rig.login(imei=OTHER)).status == 403
    for session in (None, "not-a-session"):
        refused = await rig.call("GET", "/v1/packages/app/1.10", session=session)
        assert refused.status == 401 and refused.header("www-authenticate").startswith("Bearer")
        assert (await rig.call("POST", "/v1/check", {"name": "app", "version": "1"}, session)).status == 401
    assert rig.service.downloads == 0
    assert not [e for e in rig.events(Kind.PUBLISH_DOWNLOAD) if e.field("status") == 200]
    failures = rig.events(Kind.PUBLISH_AUTH)
    assert [e.field("ok") for e in failures] == [False, False] and all(e.error for e in failures)
    assert [e.field("known") for e in failures] == [True, False]


async def test_a_nonce_answered_twice_is_refused(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    nonce = json.loads((await rig.call("POST", "/v1/auth/challenge", {"imei": IMEI})).body)["nonce"]
    answer = {"imei": IMEI, "nonce": nonce, "mac": terminal_mac(TOKEN, nonce, IMEI)}
    first = await rig.call("POST", "/v1/auth/response", answer)
    assert first.status == 200 and json.loads(first.body)["expires"] > 0
    replay = await rig.call("POST", "/v1/auth/response", answer)
    assert replay.status == 403 and "used" in json.loads(replay.body)["error"]


@pytest.mark.parametrize(
    ("method", "target", "body", "status", "reason"),
    [
        ("POST", "/v1/auth/challenge", b"{not json", 400, "not UTF-8 JSON"),
        ("POST", "/v1/auth/challenge", b"[1, 2]", 400, "JSON object"),
        ("POST", "/v1/auth/challenge", b"\xff\xfe", 400, "not UTF-8 JSON"),
        ("POST", "/v1/auth/challenge", b"[" * 5000 + b"]" * 5000, 400, "nested"),
        ("POST", "/v1/auth/challenge", b'{"imei": "12ab"}', 400, "imei"),
        ("POST", "/v1/auth/response", b'{"imei": "490154203237518"}', 400, "nonce"),
        ("GET", "/v1/auth/challenge", b"", 405, "takes POST"),
        ("GET", "/v2/anything", b"", 404, "no resource"),
        ("POST", "/v1/admin/notify", b'{"name": "app", "via": "fax"}', 400, "via"),
        ("POST", "/v1/admin/notify", b'{"name": "none", "via": "ip"}', 404, "no release"),
        ("POST", "/v1/admin/notify", b'{"name": "app", "via": "sms", "msisdn": "123"}', 400, "msisdn"),
        ("POST", "/v1/admin/notify", b'{"name": "app", "via": "sms", "msisdn": "+123"}', 503, "no SMSC"),
    ],
)
async def test_bad_requests_get_4xx_and_a_trace_event(
    tmp_path: Path, method: str, target: str, body: bytes, status: int, reason: str
) -> None:
    rig = Rig(tmp_path)
    answers, _ = await rig.raw(
        render(f"{method} {target} HTTP/1.1", [("Host", "p"), ("Connection", "close")], body)
    )
    assert answers[0].status == status and reason in json.loads(answers[0].body)["error"]
    last = [e for e in rig.tracer.events if e.kind.startswith("publish.")][-1]
    assert last.error and last.field("status") == status and reason in last.field("reason")


async def test_an_oversized_body_gets_413_and_an_http_error(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    body = b'{"imei": "' + b"1" * MAX_BODY + b'"}'
    answers, _ = await rig.raw(render("POST /v1/auth/challenge HTTP/1.1", [("Host", "p")], body))
    assert answers[0].status == 413
    errors = rig.events(Kind.HTTP_ERROR)
    assert errors and errors[0].field("status") == 413 and errors[0].error
    assert not rig.events(Kind.PUBLISH_CHALLENGE)


async def test_requests_share_a_kept_alive_connection(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    challenge = render(
        "POST /v1/auth/challenge HTTP/1.1", [("Host", "p")], json.dumps({"imei": IMEI}).encode()
    )
    client, server = trio.testing.memory_stream_pair()
    parser = MessageParser(requests=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.server.handle, server, "127.0.0.1")
        answers: list[Message] = []
        await client.send_all(challenge)
        while not answers:
            answers += parser.feed(await client.receive_some(65536))
        nonce = json.loads(answers[0].body)["nonce"]
        body = json.dumps({"imei": IMEI, "nonce": nonce, "mac": terminal_mac(TOKEN, nonce, IMEI)}).encode()
        await client.send_all(render("POST /v1/auth/response HTTP/1.1", [("Host", "p")], body))
        while len(answers) < 2:
            answers += parser.feed(await client.receive_some(65536))
        nursery.cancel_scope.cancel()
    assert [a.status for a in answers] == [200, 200] and "session" in json.loads(answers[1].body)


async def test_a_request_left_half_way_gets_408(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    rig = Rig(tmp_path)
    client, server = trio.testing.memory_stream_pair()
    received = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.server.handle, server, "127.0.0.1")
        await client.send_all(b"POST /v1/auth/challenge HTTP/1.1\r\nHost: p\r\nContent-Length: 40\r\n\r\n{")
        while chunk := await client.receive_some(65536):
            received += chunk
    assert MessageParser(requests=False).feed(received)[0].status == 408
    assert rig.events(Kind.HTTP_ERROR)[0].field("status") == 408


async def test_bad_checks_and_reports_are_refused(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    session = await rig.session()
    assert (await rig.call("POST", "/v1/check", {"name": "app", "version": "1.x"}, session)).status == 400
    assert (await rig.call("POST", "/v1/check", {"name": "app"}, session)).status == 400
    for status in (200, "900", True, 1000):
        bad = {"name": "app", "version": "1.10", "status": status}
        assert (await rig.call("POST", "/v1/report", bad, session)).status == 400
    assert (await rig.call("GET", "/v1/packages/app/9.9", session=session)).status == 404
    assert (await rig.call("GET", "/v1/catalogue/none", session=session)).status == 404
    assert not rig.service.reports


async def test_the_admin_api_answers_loopback_only(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    refused = await rig.call("POST", "/v1/admin/notify", {"name": "app", "via": "ip"}, peer="192.0.2.7")
    assert refused.status == 403
    allowed = await rig.call("POST", "/v1/admin/notify", {"name": "app", "via": "ip"}, peer="::1")
    assert allowed.status == 200 and json.loads(allowed.body)["sent"] == 0  # nobody connected


async def test_a_release_published_while_running_is_announced(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.service.source = tmp_path
    rig.service.refresh()  # nothing changed since load: the same catalogue
    (tmp_path / "app-2.0.bin").write_bytes(b"version two")
    with (tmp_path / "catalogue.toml").open("a") as toml:
        toml.write(
            "[[release]]\nname = 'app'\nversion = '2.0'\nfile = 'app-2.0.bin'\ntimestamp = 2026-12-01T00:00:00Z\n"
        )
    answer = await rig.call("POST", "/v1/admin/notify", {"name": "app", "via": "ip"})
    assert answer.status == 200 and json.loads(answer.body)["version"] == "2.0"
    with (tmp_path / "catalogue.toml").open("a") as toml:
        toml.write("[[release]]\nname = 'app'\n")  # half written
    broken = await rig.call("POST", "/v1/admin/notify", {"name": "app", "via": "ip"})
    assert broken.status == 409 and "not valid" in json.loads(broken.body)["error"]
    session = await rig.session()
    still = json.loads((await rig.call("GET", "/v1/catalogue/app", session=session)).body)
    assert still["version"] == "2.0"  # the last good catalogue is served on


# --- the lying server ------------------------------------------------------------------------------------------------


async def test_fault_corrupt_package_serves_bytes_that_miss_the_hash(tmp_path: Path) -> None:
    rig = Rig(tmp_path, frozenset({Fault.CORRUPT_PACKAGE}))
    session = await rig.session()
    package = await rig.call("GET", "/v1/packages/app/1.10", session=session)
    true = (tmp_path / "app-1.10.bin").read_bytes()
    assert len(package.body) == len(true) and package.body != true
    assert package.header("x-package-sha256") == hashlib.sha256(true).hexdigest()
    assert rig.events(Kind.PUBLISH_DOWNLOAD)[0].field("fault") == "corrupt-package"


async def test_fault_wrong_size_advertises_a_size_the_package_has_not(tmp_path: Path) -> None:
    rig = Rig(tmp_path, frozenset({Fault.WRONG_SIZE}))
    session = await rig.session()
    info = json.loads((await rig.call("GET", "/v1/catalogue/app", session=session)).body)
    check = json.loads((await rig.call("POST", "/v1/check", {"name": "app", "version": "1"}, session)).body)
    assert check["release"]["size"] == info["size"]
    package = await rig.call("GET", info["location"], session=session)
    assert len(package.body) == info["size"] - 1
    assert hashlib.sha256(package.body).hexdigest() == info["sha256"]


async def test_fault_drop_download_breaks_the_connection_half_way(tmp_path: Path) -> None:
    rig = Rig(tmp_path, frozenset({Fault.DROP_DOWNLOAD}))
    session = await rig.session()
    request = render(
        "GET /v1/packages/app/1.10 HTTP/1.1", [("Host", "p"), ("Authorization", f"Bearer {session}")]
    )
    answers, received = await rig.raw(request)
    assert answers == []  # never a whole answer
    head, _, body = received.partition(b"\r\n\r\n")
    size = len((tmp_path / "app-1.10.bin").read_bytes())
    assert f"content-length: {size}".encode() in head.lower() and len(body) == size // 2
    dropped = rig.events(Kind.TCP_ERROR)
    assert dropped and dropped[0].field("fault") == "drop-download" and dropped[0].error


async def test_fault_reject_auth_refuses_the_right_mac(tmp_path: Path) -> None:
    rig = Rig(tmp_path, frozenset({Fault.REJECT_AUTH}))
    assert (await rig.login()).status == 403
    assert rig.events(Kind.PUBLISH_AUTH)[0].field("fault") == "reject-auth"
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.push.handle, server)
        terminal = Terminal(client)
        answer = await terminal.login()  # the right token, over IP push
        assert answer is not None and answer["type"] == "rejected"
        assert await terminal.receive() is None
    assert [e.field("fault") for e in rig.events(Kind.PUBLISH_AUTH)] == ["reject-auth", "reject-auth"]


# --- IP push ---------------------------------------------------------------------------------------------------------


def test_frames_decode_whole_split_and_refuse_bad_ones() -> None:
    hello = encode_frame({"type": "hello", "imei": IMEI})
    assert hello[:4] == (len(hello) - 4).to_bytes(4, "big")
    decoder = FrameDecoder()
    decoder.feed(hello[:3])
    assert decoder.next_frame() is None
    decoder.feed(hello[3:] + hello[:7])
    assert decoder.next_frame() == ({"type": "hello", "imei": IMEI}, hello)
    assert decoder.next_frame() is None and decoder.pending == 7
    for bad, reason in (
        ((MAX_FRAME + 1).to_bytes(4, "big"), "length"),  # refused before its body arrives
        (bytes(4), "length"),
        (b"\x00\x00\x00\x03abc", "not JSON"),
        (b"\x00\x00\x00\x02[]", "object"),
        (b'\x00\x00\x00\x0b{"type": 1}', "type"),
        (b"\x00\x00\x00\x02\xff\xfe", "UTF-8"),
    ):
        decoder = FrameDecoder()
        decoder.feed(bad)
        with pytest.raises(FrameError, match=reason):
            decoder.next_frame()
    with pytest.raises(FrameError):
        encode_frame({"type": "x", "pad": "y" * MAX_FRAME})


class Terminal:
    """The terminal's end of one push connection to the rig's PushServer, on memory streams."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.stream.send_all(encode_frame(frame))

    async def receive(self) -> dict[str, Any] | None:
        """The next frame, None at the server's close."""
        while True:
            got = self.decoder.next_frame()
            if got is not None:
                return got[0]
            data = await self.stream.receive_some(8192)
            if not data:
                return None
            self.decoder.feed(data)

    async def login(self, token: bytes = TOKEN) -> dict[str, Any] | None:
        await self.send({"type": "hello", "imei": IMEI})
        challenge = await self.receive()
        assert challenge is not None and challenge["type"] == "challenge"
        await self.send({"type": "auth", "mac": terminal_mac(token, challenge["nonce"], IMEI)})
        return await self.receive()


@pytest.fixture
async def push_rig(tmp_path: Path) -> AsyncIterator[tuple[Rig, Any]]:
    rig = Rig(tmp_path)
    async with trio.open_nursery() as nursery:

        async def connect() -> Terminal:
            client, server = trio.testing.memory_stream_pair()
            nursery.start_soon(rig.push.handle, server)
            return Terminal(client)

        yield rig, connect
        nursery.cancel_scope.cancel()


async def test_ip_push_authenticates_then_carries_releases_and_pings(push_rig: tuple[Rig, Any]) -> None:
    rig, connect = push_rig
    terminal = await connect()
    await terminal.send({"type": "hello", "imei": IMEI})
    challenge = await terminal.receive()
    assert challenge is not None and challenge["type"] == "challenge"
    # before the welcome the server announces nothing, even when told to
    notify = await rig.call("POST", "/v1/admin/notify", {"name": "app", "via": "ip"})
    assert json.loads(notify.body)["sent"] == 0
    changed = rig.push.changed
    await terminal.send({"type": "auth", "mac": terminal_mac(TOKEN, challenge["nonce"], IMEI)})
    assert await terminal.receive() == {"type": "welcome"}
    await changed.wait()  # the connection is among the welcomed ones
    notify = await rig.call("POST", "/v1/admin/notify", {"name": "app", "via": "ip"})
    assert json.loads(notify.body)["sent"] == 1
    release = await terminal.receive()
    assert release == {
        "type": "release",
        "server": "127.0.0.1:18450",
        "location": "/v1/packages/app/1.10",
        "name": "app",
        "version": "1.10",
        "timestamp": "2026-11-30T11:00:00Z",
    }
    await terminal.send({"type": "ping"})
    assert await terminal.receive() == {"type": "pong"}
    pushed = [(e.field("direction"), e.field("type")) for e in rig.events(Kind.PUBLISH_PUSH)]
    assert pushed == [
        ("in", "hello"),
        ("out", "challenge"),
        ("in", "auth"),
        ("out", "welcome"),
        ("out", "release"),
        ("in", "ping"),
        ("out", "pong"),
    ]
    # the access log shows the authentication before the release message
    log = [
        (e.kind, e.field("channel") or e.field("type"))
        for e in rig.tracer.events
        if e.kind in (Kind.PUBLISH_AUTH, Kind.PUBLISH_PUSH)
    ]
    assert log.index(("publish.auth", "push")) < log.index(("publish.push", "release"))
    assert rig.events(Kind.PUBLISH_NOTIFY)[-1].field("sent") == 1


async def test_ip_push_rejected_terminal_is_closed_and_gets_no_release(push_rig: tuple[Rig, Any]) -> None:
    rig, connect = push_rig
    terminal = await connect()
    rejected = await terminal.login(token=b"\x55" * 16)
    assert rejected is not None and rejected["type"] == "rejected" and rejected["reason"]
    assert await terminal.receive() is None  # closed
    assert (
        json.loads((await rig.call("POST", "/v1/admin/notify", {"name": "app", "via": "ip"})).body)["sent"]
        == 0
    )
    assert not rig.push.connections
    auth = rig.events(Kind.PUBLISH_AUTH)
    assert [e.field("ok") for e in auth] == [False] and auth[0].field("channel") == "push"
    assert "release" not in [e.field("type") for e in rig.events(Kind.PUBLISH_PUSH)]


@pytest.mark.parametrize(
    "frames",
    [
        [{"type": "auth", "mac": "00" * 32}],  # auth before hello
        [{"type": "hello", "imei": "x"}],
        [{"type": "hello", "imei": IMEI}, {"type": "hello", "imei": IMEI}],
        [{"type": "ping"}],  # before the welcome
        [{"type": "hello", "imei": IMEI}, {"type": "auth", "mac": "short"}],
        [{"type": "release", "name": "x"}],
    ],
)
async def test_ip_push_bad_frame_gets_error_and_close(
    push_rig: tuple[Rig, Any], frames: list[dict[str, Any]]
) -> None:
    rig, connect = push_rig
    terminal = await connect()
    answer: dict[str, Any] | None = None
    for frame in frames:
        await terminal.send(frame)
        answer = await terminal.receive()
        if answer is not None and answer["type"] == "error":
            break
    assert answer is not None and answer["type"] == "error" and answer["reason"]
    assert await terminal.receive() is None
    assert [e for e in rig.events(Kind.PUBLISH_PUSH) if e.error and e.field("direction") == "in"]


async def test_ip_push_garbage_bytes_get_error_and_close(push_rig: tuple[Rig, Any]) -> None:
    rig, connect = push_rig
    terminal = await connect()
    await terminal.stream.send_all(b"GET / HTTP/1.1\r\n\r\n")  # a length of 1.2 GB
    answer = await terminal.receive()
    assert answer is not None and answer["type"] == "error" and "length" in answer["reason"]
    assert await terminal.receive() is None


async def test_ip_push_connections_past_the_cap_are_refused(push_rig: tuple[Rig, Any]) -> None:
    rig, connect = push_rig
    rig.push.max_connections = 1
    first = await connect()
    assert await first.login() == {"type": "welcome"}
    second = await connect()
    refused = await second.receive()
    assert refused is not None and refused["type"] == "error" and "limit" in refused["reason"]
    assert await second.receive() is None
    await first.send({"type": "ping"})  # the first is served on
    assert await first.receive() == {"type": "pong"}


async def test_ip_push_keepalive_and_dead_peer(
    autojump_clock: trio.testing.MockClock, push_rig: tuple[Rig, Any]
) -> None:
    rig, connect = push_rig
    terminal = await connect()
    assert await terminal.login() == {"type": "welcome"}
    start = trio.current_time()
    assert await terminal.receive() == {"type": "ping"}
    assert trio.current_time() - start == pytest.approx(KEEPALIVE)
    await terminal.send({"type": "pong"})  # alive: the next ping comes 30 s on
    assert await terminal.receive() == {"type": "ping"}
    pinged = trio.current_time()
    assert await terminal.receive() is None  # silent from here: closed when 90 s passed without a word
    assert trio.current_time() - pinged == pytest.approx(DEAD_PEER - KEEPALIVE)
    closes = [e for e in rig.events(Kind.PUBLISH_PUSH) if e.field("type") == "close"]
    assert closes and "gone" in closes[0].field("reason")


async def test_ip_push_handshake_has_a_deadline(
    autojump_clock: trio.testing.MockClock, push_rig: tuple[Rig, Any]
) -> None:
    rig, connect = push_rig
    terminal = await connect()
    await terminal.send({"type": "hello", "imei": IMEI})
    assert (await terminal.receive() or {})["type"] == "challenge"
    assert await terminal.receive() is None  # no auth: closed at the handshake deadline


def test_push_connection_table_never_releases_before_welcome() -> None:
    auth = TerminalAuth({IMEI: TOKEN})
    conn = PushServerConnection(auth)
    release = make_release("app", "2", b"x", "2026-01-01T00:00:00Z").as_json()
    assert conn.release(release, "h:1") is None
    outs = conn.receive(encode_frame({"type": "hello", "imei": IMEI}), 0.0)
    assert conn.state is PushState.CHALLENGED and conn.release(release, "h:1") is None
    nonce = outs[-1].frame["nonce"]
    conn.receive(encode_frame({"type": "auth", "mac": terminal_mac(TOKEN, nonce, IMEI)}), 1.0)
    assert conn.state is PushState.WELCOMED
    sent = conn.release(release, "h:1")
    assert sent is not None and sent.frame["type"] == "release"
    conn.close()
    assert conn.release(release, "h:1") is None


# --- notices through the SMSC ----------------------------------------------------------------------------------------


async def test_admin_notify_sms_and_wap_through_the_smsc_control_socket(tmp_path: Path) -> None:
    from bipsim.net import push_notice as notices
    from bipsim.net.sms_pdu import decode_tpdu
    from bipsim.net.smsc import Smsc, serve_control

    smsc = Smsc()
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(serve_control, smsc, "127.0.0.1", 0)
        rig = Rig(tmp_path, smsc=(host, port))
        sms = await rig.call(
            "POST", "/v1/admin/notify", {"name": "app", "via": "sms", "msisdn": "+15550001234"}
        )
        assert sms.status == 200 and json.loads(sms.body)["sent"] == 1
        wap = await rig.call(
            "POST", "/v1/admin/notify", {"name": "app", "via": "wap", "msisdn": "+15550001234"}
        )
        assert wap.status == 200
        nursery.cancel_scope.cancel()
    text = smsc.mt[0].decoded.text
    notice = notices.parse_sms_notice(text)
    assert notice is not None and notice.url == "http://127.0.0.1:18450/v1/packages/app/1.10"
    assert notice.name == "app" and notice.version == "1.10"
    parts = [m.decoded for m in smsc.mt[1:]]
    assert parts and all(p.dcs == 0x04 for p in parts)
    for part in parts:
        ports = [e for e in part.udh if e.iei == 0x05]
        assert ports and ports[0].data == bytes.fromhex("0B8423F0")  # to 2948 (0B84) from 9200 (23F0)
    pushed = notices.parse_wap_push(b"".join(p.ud for p in parts))
    assert pushed is not None and pushed.url == notice.url
    assert decode_tpdu(smsc.mt[1].tpdu).udh == parts[0].udh
    sent = rig.events(Kind.PUBLISH_NOTIFY)
    assert [(e.field("via"), e.field("msisdn")) for e in sent] == [
        ("sms", "+15550001234"),
        ("wap", "+15550001234"),
    ]


async def test_tshark_decodes_the_wap_push_the_smsc_took(tmp_path: Path, need: Any) -> None:
    """The SMS-DELIVER of a WAP notice, exported as the SMSC's smsc.mt event would be, read by an independent
    decoder: UDH ports 2948/9200, WSP Push of application/vnd.wap.sic, the SI's href the package's URL."""
    import subprocess

    from bipsim.net.smsc import Smsc, serve_control
    from bipsim.trace.pcap import export_pcap

    tshark = need("tshark")
    smsc = Smsc()
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(serve_control, smsc, "127.0.0.1", 0)
        rig = Rig(tmp_path, smsc=(host, port))
        wap = await rig.call(
            "POST", "/v1/admin/notify", {"name": "app", "via": "wap", "msisdn": "+15550001234"}
        )
        assert wap.status == 200 and json.loads(wap.body)["sent"] == 1
        nursery.cancel_scope.cancel()
    tracer = Tracer(keep=True)
    fields = {
        "id": 1,
        "type": "deliver",
        "originator": "+15550008450",
        "data_download": False,
        "smsc": smsc.address,
    }
    tracer.emit("net", "cp", "sms", "offer", smsc.mt[0].tpdu, kind=Kind.SMSC_MT, fields=fields)
    pcap = tmp_path / "wap.pcap"
    assert export_pcap(tracer.events, pcap) == 1
    shown = subprocess.run(
        [tshark, "-r", str(pcap), "-V"], capture_output=True, text=True, timeout=120
    ).stdout
    assert re.search(r"Destination port: .*\(2948\)", shown) and re.search(
        r"Originator port: .*\(9200\)", shown
    )
    assert "Method: Push (0x06), Content-Type: application/vnd.wap.sic" in shown
    assert "href='http://'" in shown and "'127.0.0.1:18450/v1/packages/app/1.10'" in shown
    assert "Malformed" not in shown


async def test_a_wap_push_too_long_for_one_sms_goes_in_concatenated_parts(tmp_path: Path) -> None:
    from bipsim.net import push_notice as notices
    from bipsim.net.smsc import Smsc, serve_control

    name = "a-rather-long-application-name-for-one-short-message-" + "x" * 10
    (tmp_path / "long.bin").write_bytes(b"long")
    smsc = Smsc()
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(serve_control, smsc, "127.0.0.1", 0)
        rig = Rig(tmp_path, smsc=(host, port))
        with (tmp_path / "catalogue.toml").open("a") as toml:
            toml.write(f"[[release]]\nname = '{name}'\nversion = '12.345.6789'\nfile = 'long.bin'\n")
            toml.write("timestamp = 2026-12-01T00:00:00Z\n")
        rig.service.source = tmp_path
        wap = await rig.call(
            "POST", "/v1/admin/notify", {"name": name, "via": "wap", "msisdn": "+15550001234"}
        )
        assert wap.status == 200, wap.body
        nursery.cancel_scope.cancel()
    parts = [m.decoded for m in smsc.mt]
    assert len(parts) >= 2 and json.loads(wap.body)["sent"] == len(parts)
    references = set()
    for number, part in enumerate(parts, 1):
        elements = {e.iei: e.data for e in part.udh}
        assert elements[0x05] == bytes.fromhex("0B8423F0")  # every part to 2948 from 9200
        assert elements[0x00][1:] == bytes((len(parts), number))
        references.add(elements[0x00][0])
    assert len(references) == 1
    pushed = notices.parse_wap_push(b"".join(p.ud for p in parts))
    assert pushed is not None and pushed.url == f"http://127.0.0.1:18450/v1/packages/{name}/12.345.6789"


async def test_admin_notify_with_the_smsc_gone_is_502(tmp_path: Path) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # nobody listens there now
    rig = Rig(tmp_path, smsc=("127.0.0.1", port))
    answer = await rig.call(
        "POST", "/v1/admin/notify", {"name": "app", "via": "sms", "msisdn": "+15550001234"}
    )
    assert answer.status == 502 and "SMSC" in json.loads(answer.body)["error"]
    assert rig.events(Kind.PUBLISH_NOTIFY)[0].error


# --- a real client over loopback, and the command ------------------------------------------------------------------


async def test_stdlib_client_authenticates_and_downloads_over_loopback(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    async with trio.open_nursery() as nursery:
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[
            0
        ]  # as a scenario makes it beforehand
        port = listener.socket.getsockname()[1]
        nursery.start_soon(rig.server.serve_on, listener)
        base = f"http://127.0.0.1:{port}"

        def client() -> tuple[str, bytes]:
            def post(path: str, body: dict[str, Any], session: str = "") -> dict[str, Any]:
                headers = {"Content-Type": "application/json"}
                if session:
                    headers["Authorization"] = f"Bearer {session}"
                req = urllib.request.Request(base + path, json.dumps(body).encode(), headers, method="POST")
                with urllib.request.urlopen(req, timeout=10) as answer:
                    return dict(json.loads(answer.read()))

            nonce = post("/v1/auth/challenge", {"imei": IMEI})["nonce"]
            session = post(
                "/v1/auth/response", {"imei": IMEI, "nonce": nonce, "mac": terminal_mac(TOKEN, nonce, IMEI)}
            )
            req = urllib.request.Request(
                base + "/v1/packages/app/1.10", headers={"Authorization": f"Bearer {session['session']}"}
            )
            with urllib.request.urlopen(req, timeout=10) as answer:
                return answer.headers["X-Package-Sha256"], answer.read()

        digest, data = await trio.to_thread.run_sync(client)
        nursery.cancel_scope.cancel()
    assert data == (tmp_path / "app-1.10.bin").read_bytes() and digest == hashlib.sha256(data).hexdigest()
    peers = {e.field("peer") for e in rig.events(Kind.HTTP_REQUEST)}
    assert peers == {"127.0.0.1"}


def test_command_help_names_every_option_and_bad_files_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    shown = runner.invoke(cli, ["publish-server", "--help"])
    assert shown.exit_code == 0
    for option in (
        "--listen",
        "--push-listen",
        "--catalogue",
        "--terminals",
        "--advertise",
        "--smsc",
        "--sms-from",
        "--fault",
        "--trace",
        "corrupt-package",
        "wrong-size",
        "drop-download",
        "reject-auth",
    ):
        assert option in shown.output
    terminals = tmp_path / "t.toml"
    terminals.write_text("[terminals]\n")
    (tmp_path / "catalogue.toml").write_text("[[release]]\nname = 'x'\n")
    bad = runner.invoke(cli, ["publish-server", "--catalogue", str(tmp_path), "--terminals", str(terminals)])
    assert bad.exit_code != 0 and "missing" in str(bad.exception)
    catalogue_dir(tmp_path)
    terminals.write_text(f'[terminals]\n"{IMEI}" = "{TOKEN.hex()}"\n')
    sender = runner.invoke(
        cli,
        [
            "publish-server",
            "--catalogue",
            str(tmp_path),
            "--terminals",
            str(terminals),
            "--sms-from",
            "+12ab",
        ],
    )
    assert sender.exit_code != 0 and "--sms-from" in str(sender.exception)


def test_publish_server_command_serves_http_and_ip_push(tmp_path: Path) -> None:
    """The command as a process: both listeners on free ports, the notices' address the bound one, a terminal
    over HTTP and over IP push, the trace file in the order of the flow, exit 0 and the summary on SIGTERM."""
    import os
    import select
    import signal
    import socket
    import subprocess
    import sys
    import time

    from bipsim.trace.reader import read_trace

    terminals = tmp_path / "terminals.toml"
    terminals.write_text(f'[terminals]\n"{IMEI}" = "{TOKEN.hex()}"\n')
    trace = tmp_path / "publish.jsonl"
    command = [sys.executable, "-m", "bipsim", "publish-server", "--listen", "127.0.0.1:0"]
    command += ["--push-listen", "127.0.0.1:0", "--catalogue", str(catalogue_dir(tmp_path))]
    command += ["--terminals", str(terminals), "--trace", str(trace)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    printed = b""
    try:
        # readiness is the "push listening" line itself: each wait ends when the process writes (or exits)
        deadline = time.monotonic() + 30
        while not (found := re.search(rb"push listening on 127\.0\.0\.1:(\d+)", printed)):
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no readiness line within 30 s: {printed!r}"
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, f"the server exited before listening: {printed!r}"
            printed += chunk
        http_port = int(re.findall(rb"^listening on 127\.0\.0\.1:(\d+)", printed, re.M)[0])
        base = f"http://127.0.0.1:{http_port}"

        def post(path: str, body: dict[str, Any], session: str = "") -> Any:
            headers = {"Authorization": f"Bearer {session}"} if session else {}
            req = urllib.request.Request(base + path, json.dumps(body).encode(), headers, method="POST")
            with urllib.request.urlopen(req, timeout=10) as answer:
                return json.loads(answer.read())

        with socket.create_connection(("127.0.0.1", int(found.group(1))), timeout=10) as push:
            decoder = FrameDecoder()

            def frame() -> dict[str, Any]:
                while (got := decoder.next_frame()) is None:
                    data = push.recv(8192)
                    assert data, "the server closed the push connection"
                    decoder.feed(data)
                return got[0]

            push.sendall(encode_frame({"type": "hello", "imei": IMEI}))
            nonce = frame()["nonce"]
            push.sendall(encode_frame({"type": "auth", "mac": terminal_mac(TOKEN, nonce, IMEI)}))
            assert frame() == {"type": "welcome"}
            assert post("/v1/admin/notify", {"name": "app", "via": "ip"})["sent"] == 1
            release = frame()
        assert release["type"] == "release" and release["server"] == f"127.0.0.1:{http_port}"
        nonce = post("/v1/auth/challenge", {"imei": IMEI})["nonce"]
        session = post(
            "/v1/auth/response", {"imei": IMEI, "nonce": nonce, "mac": terminal_mac(TOKEN, nonce, IMEI)}
        )
        req = urllib.request.Request(
            base + release["location"], headers={"Authorization": f"Bearer {session['session']}"}
        )
        with urllib.request.urlopen(req, timeout=10) as answer:
            assert answer.read() == (tmp_path / "app-1.10.bin").read_bytes()
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=10)
        printed += rest
    assert proc.returncode == 0, printed
    assert b'"downloads": 1' in printed
    events = read_trace([trace])[0]
    flow = [(e.kind, e.field("channel") or e.field("type")) for e in events if e.kind.startswith("publish.")]
    order = [
        ("publish.auth", "push"),
        ("publish.push", "release"),
        ("publish.notify", None),
        ("publish.auth", "http"),
        ("publish.download", None),
    ]
    assert [step for step in flow if step in order] == order


# --- any bytes from a peer: the protocol's own answer, never an exception ----------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_any_bytes_on_a_push_connection_end_in_frames_or_an_error(chunks: list[bytes]) -> None:
    conn = PushServerConnection(TerminalAuth({IMEI: TOKEN}))
    for chunk in chunks:
        for out in conn.receive(chunk, 0.0):
            if isinstance(out, Close):
                assert conn.state is PushState.CLOSED
    if conn.state is PushState.CLOSED:
        assert conn.receive(b"more", 0.0) == []


_LIVE_NONCE = "0f" * 16

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_TARGETS = st.sampled_from(
    [
        "/v1/auth/challenge",
        "/v1/auth/response",
        "/v1/check",
        "/v1/report",
        "/v1/admin/notify",
        "/v1/catalogue/app",
        "/v1/packages/app/1.10",
        "/v1/packages/app",
        "/",
        "/v1/catalogue/",
    ]
)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["GET", "POST", "PUT"]),
    _TARGETS,
    st.one_of(
        _JSON.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=40),
        # an answer to the live nonce below, with any text as its MAC: the path that reaches compare_digest
        st.text(max_size=70).map(
            lambda mac: json.dumps({"imei": IMEI, "nonce": _LIVE_NONCE, "mac": mac}).encode()
        ),
    ),
    st.sampled_from(["", "Bearer x", "Bearer live"]),
)
def test_any_request_gets_an_answer_below_500(
    method: str, target: str, body: bytes, authorization: str
) -> None:
    from bipsim.ota.http_connection import HttpRequest
    from bipsim.ota.publish_server import Answer

    auth = TerminalAuth({IMEI: TOKEN})
    auth.sessions["live"] = (IMEI, 1e9)
    auth.nonces[_LIVE_NONCE] = (IMEI, 0.0)
    releases = [make_release("app", "1.10", b"package", "2026-11-30T12:00:00Z")]
    service = PublishService(Catalogue(releases), auth, advertise="127.0.0.1:8450", smsc=False)
    request = HttpRequest(method, target, {"authorization": authorization} if authorization else {}, body)
    answer = service.handle(request, loopback=True, now=0.0)
    if isinstance(answer, Answer):
        assert answer.status < 500 or answer.status == 503
        assert answer.kind.value.startswith("publish.") and answer.fields["status"] == answer.status


@pytest.mark.parametrize("mac", ["é" * 64, "g" * 64, "ab", "0" * 63 + "é"])
def test_a_malformed_mac_for_a_live_nonce_is_refused_not_a_crash(mac: str) -> None:
    from bipsim.ota.http_connection import HttpRequest
    from bipsim.ota.publish_server import Answer

    auth = TerminalAuth({IMEI: TOKEN})
    auth.nonces[_LIVE_NONCE] = (IMEI, 0.0)
    service = PublishService(Catalogue([]), auth, advertise="127.0.0.1:8450", smsc=False)
    body = json.dumps({"imei": IMEI, "nonce": _LIVE_NONCE, "mac": mac}).encode()
    answer = service.handle(HttpRequest("POST", "/v1/auth/response", {}, body), loopback=True, now=0.0)
    assert isinstance(answer, Answer) and answer.status == 400
    assert b"64 hex digits" in answer.body
    # the push channel calls verify directly: it says why, and never raises
    auth.nonces[_LIVE_NONCE] = (IMEI, 0.0)
    assert auth.verify(IMEI, _LIVE_NONCE, mac, 0.0) == "the mac is not 64 hex digits"


@pytest.mark.parametrize(
    ("listen", "advertise"),
    [("0.0.0.0:8450", None), ("[::]:8450", None), ("127.0.0.1:8450", "0.0.0.0:8450")],
)
def test_an_any_address_is_never_what_the_notices_carry(
    tmp_path: Path, listen: str, advertise: str | None
) -> None:
    terminals = tmp_path / "t.toml"
    terminals.write_text(f'[terminals]\n"{IMEI}" = "{TOKEN.hex()}"\n')
    args = ["publish-server", "--listen", listen, "--catalogue", str(catalogue_dir(tmp_path))]
    args += ["--terminals", str(terminals), "--push-listen", "none"]
    if advertise is not None:
        args += ["--advertise", advertise]
    refused = CliRunner().invoke(cli, args)
    # refused at the options, before any socket: exit 2 as click's usage errors
    from bipsim.errors import CliError

    assert isinstance(refused.exception, CliError), refused.output
    assert refused.exception.exit_code == 2 and "--advertise" in str(refused.exception)


async def test_a_fault_in_one_push_connection_ends_that_connection_not_the_server() -> None:
    """An unexpected exception while serving one connection (here the authenticator's) closes that connection
    with a traced close; `handle` returns, and the next connection is served as usual."""

    class Faulty(TerminalAuth):
        calls = 0

        def challenge(self, imei: str, now: float) -> str:
            Faulty.calls += 1
            if Faulty.calls == 1:
                raise RuntimeError("injected fault")
            return super().challenge(imei, now)

    tracer = Tracer(keep=True)
    push = PushServer(Faulty({IMEI: TOKEN}), tracer)
    for expected in ("closed", "challenge"):
        client, server = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(push.handle, server)
            await client.send_all(encode_frame({"type": "hello", "imei": IMEI}))
            decoder = FrameDecoder()
            got = None
            while got is None:
                data = await client.receive_some(65536)
                if not data:
                    break
                decoder.feed(data)
                got = decoder.next_frame()
            if expected == "closed":
                assert got is None  # the server closed the connection without an answer
            else:
                assert got is not None and got[0]["type"] == "challenge"
                await client.aclose()
    closes = [e for e in tracer.events if e.kind == Kind.PUBLISH_PUSH and e.field("type") == "close"]
    assert "internal fault" in closes[0].field("reason") and "injected fault" in closes[0].field("reason")
    assert push.active == 0 and push.connections == {}
