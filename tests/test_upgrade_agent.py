"""The AP's upgrade agent in-process (issue 22, points 1-5, 7, 8, 9; docs/protocols.md, "The upgrade agent")
against the real publish server on loopback (ota/publish_server.py, ota/push_channel.py) and a fake 27.005 line."""

from __future__ import annotations

import functools
import hashlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from bipsim.ap.upgrade.agent import (
    DEAD_PEER,
    IMEI_WAIT,
    TRANSITIONS,
    Flow,
    FlowError,
    FlowFailed,
    FlowInput,
    FlowState,
    PublishClient,
    Reassembly,
    ResultCode,
    UpgradeAgent,
    UpgradeOptions,
    check_package,
    check_release,
    classify_tpdu,
    next_backoff,
)
from bipsim.ap.upgrade.policy import Policy, PolicyError
from bipsim.ap.upgrade.registry import Registry, RegistryError
from bipsim.link.at_chat import AtResponse
from bipsim.net.push_notice import Notice, NoticeVia, format_sms_notice, release_notice, wap_push_notice
from bipsim.net.sms_pdu import (
    Address,
    Alphabet,
    PortAddressing,
    SmsDeliver,
    encode_sca,
    make_dcs,
    split_data,
)
from bipsim.net.wap_push import ServiceIndication, encode_push_pdu, encode_si
from bipsim.ota.publish_server import Fault, PublishServer, PublishService, TerminalAuth
from bipsim.ota.push_channel import FrameDecoder, FrameError, PushServer, encode_frame
from bipsim.ota.release_catalogue import Catalogue, CatalogueError, load_catalogue, make_release
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer
from bipsim.trace.steps import STEPS

IMEI = "490154203237518"
TOKEN = bytes(range(16, 48))
OLD, NEW = b"app version one\n" * 40, b"app version two\n" * 50
WHEN = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@dataclass
class Rig:
    agent: UpgradeAgent
    server: PublishServer
    push: PushServer
    address: str  # the HTTP server's host:port
    push_address: tuple[str, int]
    tracer: Tracer  # the agent's
    server_tracer: Tracer
    registry_path: Path
    nursery: trio.Nursery
    accepted: list[int]  # connections the publish server accepted (one number, counted by its handler)
    push_ended: trio.Event  # set when a push connection's server task has ended

    def server_kinds(self) -> list[str]:
        return [str(e.kind) for e in self.server_tracer.events if str(e.kind).startswith("publish.")]

    def agent_events(self, kind: Kind) -> list[Any]:
        return [e for e in self.tracer.events if e.kind == kind]

    def notice(self, via: NoticeVia = NoticeVia.SMS, version: str = "1.1") -> Notice:
        release = self.server.service.catalogue.get("app", version)
        assert release is not None
        return release_notice(self.server.service.advertised(release), self.address, via)


@dataclass
class Setup:
    installed: str | None = "1.0"
    faults: frozenset[Fault] = frozenset()
    token: bytes = TOKEN
    policy: str = "accept"
    ip_push: bool = False
    releases: tuple[str, ...] = ("1.0", "1.1")
    applet: bool = False  # publish the card applet "echo-applet" 1.0 too
    extra: dict[str, Any] = field(default_factory=dict)
    dead_server: bool = (
        False  # the agent's --upgrade-server a dead address; the live one only in its trust list
    )


APPLET = b'kind = "applet"\napplication = "A0000005590010FF01"\ntrigger = "0011223344"\n'


def _catalogue(versions: tuple[str, ...], applet: bool = False) -> Catalogue:
    data = {"1.0": OLD, "1.1": NEW}
    releases = [make_release("app", v, data[v], WHEN) for v in versions]
    return Catalogue(
        releases + ([make_release("echo-applet", "1.0", APPLET, WHEN, kind="applet")] if applet else [])
    )


async def _rig(nursery: trio.Nursery, tmp: Path, setup: Setup) -> Rig:
    server_tracer = Tracer(keep=True)
    auth = TerminalAuth({IMEI: TOKEN}, reject_all=Fault.REJECT_AUTH in setup.faults)
    push = PushServer(auth, server_tracer)
    service = PublishService(
        _catalogue(setup.releases, setup.applet),
        auth,
        advertise="127.0.0.1:0",
        faults=setup.faults,
        smsc=False,
    )
    server = PublishServer(service, server_tracer, push=push)
    accepted = [0]
    push_ended = trio.Event()
    handle, push_handle = server.handle, push.handle

    async def counting(stream: trio.abc.Stream, peer: str | None = None) -> None:
        accepted[0] += 1
        await handle(stream, peer)

    async def push_counting(stream: trio.abc.Stream) -> None:
        try:
            await push_handle(stream)
        finally:
            push_ended.set()

    server.handle = counting  # type: ignore[method-assign]
    push.handle = push_counting  # type: ignore[method-assign]
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    push_port = await nursery.start(push.serve, "127.0.0.1", 0)
    service.advertise = f"127.0.0.1:{port}"  # a port the OS chose: not the default 8450
    registry_path = tmp / "registry.json"
    if setup.installed is not None:
        Registry(registry_path).install("app", setup.installed, OLD, hashlib.sha256(OLD).hexdigest())
    tracer = Tracer(keep=True)
    options = UpgradeOptions(
        registry_path,
        setup.token,
        setup.policy,
        server=("127.0.0.1", _dead_port() if setup.dead_server else port),
        ip_push=("127.0.0.1", push_port) if setup.ip_push else None,
        imei=IMEI,
        trust=(("127.0.0.1", port),) if setup.dead_server else (),
    )
    agent = UpgradeAgent(options, tracer)
    nursery.start_soon(agent.run)
    return Rig(
        agent,
        server,
        push,
        f"127.0.0.1:{port}",
        ("127.0.0.1", push_port),
        tracer,
        server_tracer,
        registry_path,
        nursery,
        accepted,
        push_ended,
    )


def _dead_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _outcome(rig: Rig, count: int = 1) -> None:
    while len(rig.agent.outcomes) < count:
        await rig.agent.changed.wait()


def _sms(text: str) -> bytes:
    (sms,) = SmsDeliver.for_text("+15550008450", text, WHEN)
    return sms.encode()


def run(tmp_path: Path, setup: Setup, body: Callable[[Rig], Any]) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            rig = await _rig(nursery, tmp_path, setup)
            with trio.fail_after(20):
                await body(rig)
            nursery.cancel_scope.cancel()

    trio.run(main)


# ------------------------------------------------------------------------------------------------- sans-IO parts


def test_the_flow_table_takes_only_its_transitions() -> None:
    flow = Flow(Notice(NoticeVia.SMS, "127.0.0.1:1", "/v1/packages/app/1.1", "app", "1.1", WHEN))
    flow.move(FlowInput.ASK)
    with pytest.raises(FlowError):
        flow.move(FlowInput.DOWNLOADED)
    assert flow.move(FlowInput.DECLINED) is FlowState.DONE
    assert all(target in FlowState for target in TRANSITIONS.values())


def test_package_checks_give_size_and_hash_codes() -> None:
    release = {"size": len(NEW), "sha256": hashlib.sha256(NEW).hexdigest()}
    check_package(release, NEW, release["sha256"])
    for data, code in ((NEW + b"x", ResultCode.SIZE_MISMATCH), (NEW[:-1] + b"!", ResultCode.INVALID_PACKAGE)):
        with pytest.raises(Exception) as caught:
            check_package(release, data, None)
        assert caught.value.code is code  # type: ignore[attr-defined]


def test_other_sms_are_not_notices() -> None:
    heard = classify_tpdu(_sms("see you at eight"), Reassembly())
    assert heard.notice is None and heard.error is None
    assert classify_tpdu(b"\x00", Reassembly()).error  # not even an SMS-DELIVER


def test_ip_push_backoff_doubles_to_a_minute_and_restarts_after_a_welcome() -> None:
    waits, wait = [], 0.5
    for _ in range(8):
        wait = next_backoff(wait, welcomed=False)
        waits.append(wait)
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60]
    assert next_backoff(60, welcomed=True) == 1


def _wap_sms(payload: bytes) -> bytes:
    """One 8-bit SMS-DELIVER to WDP port 2948 from 9200 (WAP-259) carrying `payload`."""
    sms = SmsDeliver(
        Address.parse("+15550008450"),
        WHEN,
        dcs=make_dcs(Alphabet.EIGHT_BIT),
        udh=(PortAddressing(2948, 9200).element(),),
        ud=payload,
    )
    return sms.encode()


def test_a_malformed_wap_push_is_a_look_alike_without_a_prompt(tmp_path: Path) -> None:
    """Bad input: a WAP Push whose WBXML body is cut short -> a trace event and 906, nothing asked or fetched; the
    whole push -> the notice."""

    async def body(rig: Rig) -> None:
        push = wap_push_notice(rig.notice(NoticeVia.WAP), si_id="app-1.1", text="app 1.1")
        heard = rig.agent.heard_sms(_wap_sms(push[:-6]))
        assert heard.via is NoticeVia.WAP and heard.notice is None and heard.error
        (event,) = rig.agent_events(Kind.UPGRADE_NOTICE)
        assert event.error and event.field("look_alike") is True and event.field("via") == "wap"
        assert [o.code for o in rig.agent.outcomes] == [ResultCode.INVALID_DESCRIPTOR]
        heard = rig.agent.heard_sms(_wap_sms(push))
        assert heard.notice is not None and heard.notice.location == "/v1/packages/app/1.1"
        await _outcome(rig, 2)
        assert (
            len(rig.agent_events(Kind.UPGRADE_PROMPT)) == 1
            and rig.agent.outcomes[1].code is ResultCode.SUCCESS
        )

    run(tmp_path, Setup(), body)


@pytest.mark.parametrize(
    ("fields", "outcome", "reason"),
    [
        (
            {"si_expires": datetime(2000, 1, 1, tzinfo=UTC)},
            "expired",
            "the SI expired at 2000-01-01T00:00:00Z",
        ),
        ({"action": "delete"}, "delete", "the SI deletes si-id 'app-1.1'"),
        ({"action": "signal-none"}, "postponed", "signal-none: not presented to the user"),
    ],
)
def test_a_wap_push_that_wap_167_discards_is_traced_without_a_prompt(
    tmp_path: Path, fields: dict[str, Any], outcome: str, reason: str
) -> None:
    """Review item 14 of issue 22: an expired SI, a delete SI and a signal-none SI are traced with the reason and
    never prompt; the same notice pushed as a plain SI afterwards prompts once (it was not taken as seen)."""

    async def body(rig: Rig) -> None:
        notice = rig.notice(NoticeVia.WAP)
        si = ServiceIndication(href=notice.url, si_id="app-1.1", created=notice.timestamp, **fields)
        heard = rig.agent.heard_sms(_wap_sms(encode_push_pdu(encode_si(si))))
        assert heard.notice is None and heard.error is None and heard.discarded is not None
        (event,) = rig.agent_events(Kind.UPGRADE_NOTICE)
        assert not event.error and event.field("discarded") == outcome and event.field("reason") == reason
        assert event.field("si_id") == "app-1.1" and event.field("via") == "wap"
        assert rig.agent.outcomes == [] and not rig.agent_events(Kind.UPGRADE_PROMPT)
        heard = rig.agent.heard_sms(_wap_sms(wap_push_notice(notice, si_id="app-1.1", text="app 1.1")))
        assert heard.notice is not None
        await _outcome(rig, 1)
        assert len(rig.agent_events(Kind.UPGRADE_PROMPT)) == 1
        assert not any(e.field("repeated") for e in rig.agent_events(Kind.UPGRADE_NOTICE))

    run(tmp_path, Setup(), body)


def test_a_wap_push_in_concatenated_parts_is_put_together_in_any_order() -> None:
    notice = Notice(NoticeVia.WAP, "127.0.0.1:8450", "/v1/packages/app/1.1", "app", "1.1", WHEN)
    push = wap_push_notice(notice, si_id="app-1.1", text="a long description " * 12)
    parts = split_data(push, reference=7, headers=(PortAddressing(2948, 9200).element(),))
    assert len(parts) >= 2
    tpdus = [
        SmsDeliver(Address.parse("+15550008450"), WHEN, dcs=make_dcs(p.alphabet), udh=p.udh, ud=p.ud).encode()
        for p in parts
    ]
    reassembly = Reassembly()
    heard = [classify_tpdu(tpdu, reassembly) for tpdu in reversed(tpdus)]
    assert all(h.waiting for h in heard[:-1]) and not reassembly.parts
    assert heard[-1].notice is not None and heard[-1].notice.url == notice.url


def test_policy_script(tmp_path: Path) -> None:
    script = tmp_path / "answers"
    script.write_text("# first prompt\nyes\n\ndecline\n")
    policy = Policy.parse(f"script:{script}")
    assert [policy.ask() for _ in range(3)] == [True, False, False]  # past the end: declined
    script.write_text("maybe\n")
    with pytest.raises(PolicyError, match="answers:1"):
        Policy.parse(f"script:{script}")
    with pytest.raises(PolicyError):
        Policy.parse("sometimes")


def test_registry_keeps_the_old_version_on_a_failed_install(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.json")
    registry.install("app", "1.0", OLD, hashlib.sha256(OLD).hexdigest())
    with pytest.raises(RegistryError):
        registry.install("app", "1.1", NEW, hashlib.sha256(OLD).hexdigest())  # bytes that do not hash right
    (tmp_path / "r.json.tmp").mkdir()  # the registry's new file cannot be written
    with pytest.raises(RegistryError):
        registry.install("app", "1.1", NEW, hashlib.sha256(NEW).hexdigest())
    again = Registry(tmp_path / "r.json")
    assert again.version("app") == "1.0" and again.package("app") == OLD
    # review 11: nothing of the failed install stays behind
    assert sorted(p.name for p in again.directory.iterdir()) == ["app-1.0.pkg"]
    (tmp_path / "bad.json").write_text('{"packages": {"app": {"version": "x"}}}')
    with pytest.raises(RegistryError):
        Registry(tmp_path / "bad.json")


# ------------------------------------------------------------------------------------- against the publish server


def test_one_notice_sms_one_prompt_and_declined_no_connection(tmp_path: Path) -> None:
    """Point 1."""

    async def body(rig: Rig) -> None:
        tpdu = _sms(format_sms_notice(rig.notice()))
        rig.agent.heard_sms(tpdu)
        rig.agent.heard_sms(tpdu)  # the same notice again: no second prompt
        await _outcome(rig)
        await trio.testing.wait_all_tasks_blocked()
        assert len(rig.agent_events(Kind.UPGRADE_PROMPT)) == 1 and rig.agent.policy.asked == 1
        assert rig.agent.outcomes[0].code is ResultCode.USER_CANCELLED
        assert rig.server.requests == 0 and rig.server_kinds() == []
        assert rig.accepted == [0] and not rig.agent_events(Kind.TCP_CONNECT)  # no connection at all
        assert rig.agent.registry.version("app") == "1.0"

    run(tmp_path, Setup(policy="decline"), body)


def test_accepted_connects_to_the_notice_address_and_authenticates_first(tmp_path: Path) -> None:
    """Points 2 and 4 (overwrite), and the result reported to the server."""

    async def body(rig: Rig) -> None:
        rig.agent.heard_sms(_sms(format_sms_notice(rig.notice())))
        await _outcome(rig)
        assert rig.agent.outcomes[0].code is ResultCode.SUCCESS
        connects = [e for e in rig.tracer.events if e.kind == Kind.TCP_CONNECT]
        # review 7: the configured server is dead, so every connection made reached the notice's server, and each
        # tcp.connect was traced once its socket was open (its peer is the socket's)
        assert connects and rig.agent.options.server != ("127.0.0.1", int(rig.address.rsplit(":")[1]))
        assert {f"{e.field('host')}:{e.field('port')}" for e in connects} == {rig.address}
        assert rig.address != "127.0.0.1:8450" and len(connects) == rig.accepted[0]
        assert [e.step for e in connects][:1] == ["001:202"]
        peers = {e.field("peer") for e in rig.server_tracer.events if e.kind == Kind.HTTP_REQUEST}
        assert peers == {"127.0.0.1"}
        kinds = rig.server_kinds()
        assert kinds.index("publish.auth") < kinds.index("publish.download")
        registry = Registry(rig.registry_path)
        assert list(registry.entries) == ["app"] and registry.version("app") == "1.1"
        assert registry.package("app") == NEW
        assert [(r.status, r.version) for r in rig.server.service.reports] == [(900, "1.1")]
        labelled = [e for e in rig.tracer.events + rig.server_tracer.events if e.step]
        assert {e.step for e in labelled} >= {"001:201", "001:202", "001:203", "001:204", "001:e1.2"}
        assert all(STEPS[e.step].matches(e) for e in labelled if e.step in STEPS)

    run(tmp_path, Setup(dead_server=True), body)


def test_absent_package_is_a_new_entry(tmp_path: Path) -> None:
    """Point 4 (fresh install)."""

    async def body(rig: Rig) -> None:
        rig.agent.offer(rig.notice(NoticeVia.WAP))
        await _outcome(rig)
        assert rig.agent.outcomes[0].code is ResultCode.SUCCESS
        assert Registry(rig.registry_path).version("app") == "1.1"

    run(tmp_path, Setup(installed=None), body)


def test_authentication_fails_no_download_registry_unchanged(tmp_path: Path) -> None:
    """Point 3 over HTTP."""

    async def body(rig: Rig) -> None:
        before = rig.registry_path.read_bytes()
        rig.agent.offer(rig.notice())
        await _outcome(rig)
        assert rig.agent.outcomes[0].code is ResultCode.AUTHENTICATION_FAILURE
        assert "publish.download" not in rig.server_kinds() and rig.server.service.downloads == 0
        assert rig.registry_path.read_bytes() == before

    run(tmp_path, Setup(token=bytes(32)), body)


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (Fault.CORRUPT_PACKAGE, ResultCode.INVALID_PACKAGE),
        (Fault.WRONG_SIZE, ResultCode.SIZE_MISMATCH),
        (Fault.DROP_DOWNLOAD, ResultCode.LOSS_OF_SERVICE),
    ],
)
def test_a_lying_server_gives_a_reason_and_keeps_version_n(
    tmp_path: Path, fault: Fault, code: ResultCode
) -> None:
    """Point 5: the user always gets a result; a bad package leaves 1.0 intact."""

    async def body(rig: Rig) -> None:
        rig.agent.offer(rig.notice())
        await _outcome(rig)
        outcome = rig.agent.outcomes[0]
        assert outcome.code is code and outcome.reason
        (result,) = rig.agent_events(Kind.UPGRADE_RESULT)
        assert result.field("result") == int(code) and result.error
        registry = Registry(rig.registry_path)
        assert registry.version("app") == "1.0" and registry.package("app") == OLD
        if fault is not Fault.DROP_DOWNLOAD:  # the report goes to the server on a new connection
            assert [r.status for r in rig.server.service.reports] == [int(code)]

    run(tmp_path, Setup(faults=frozenset({fault})), body)


def test_active_check_sends_name_and_version(tmp_path: Path) -> None:
    """Points 7 and 8: the check finds 1.1 (the notice was never sent) and installs it; checked again, "no new
    version" and no download."""

    async def body(rig: Rig) -> None:
        (first,) = await rig.agent.active_check()
        assert first.code is ResultCode.SUCCESS and Registry(rig.registry_path).version("app") == "1.1"
        check = next(e for e in rig.server_tracer.events if e.kind == Kind.PUBLISH_CHECK)
        assert (check.field("name"), check.field("version"), check.field("update")) == ("app", "1.0", True)
        downloads = rig.server.service.downloads
        (second,) = await rig.agent.active_check()
        assert second.code is None and second.reason == "no new version"
        assert rig.server.service.downloads == downloads == 1
        assert not rig.agent_events(Kind.UPGRADE_PROMPT)  # the user started it: no prompt

    run(tmp_path, Setup(), body)


def test_ip_push_authenticated_before_any_release(tmp_path: Path) -> None:
    """Point 9: the connection is welcomed at boot; a release frame then starts the prompt and the install."""

    async def body(rig: Rig) -> None:
        rig.nursery.start_soon(rig.agent.ip_push)
        while not rig.push.connections:
            await rig.push.changed.wait()
        release = rig.server.service.catalogue.latest("app")
        assert release is not None
        assert await rig.push.announce(rig.server.service.advertised(release), rig.address) == 1
        await _outcome(rig)
        assert rig.agent.outcomes[0].code is ResultCode.SUCCESS
        frames = [(e.field("direction"), e.field("type")) for e in rig.agent_events(Kind.UPGRADE_PUSH)]
        assert frames.index(("in", "welcomed")) < frames.index(("in", "release"))
        assert Registry(rig.registry_path).version("app") == "1.1"

    run(tmp_path, Setup(ip_push=True), body)


def test_ip_push_rejected_no_connection_stays_and_no_release(tmp_path: Path) -> None:
    """Points 3 and 9: a rejected authentication closes the connection, the agent does not retry, no release
    reaches it."""

    async def body(rig: Rig) -> None:
        await rig.agent.ip_push()  # returns: rejected
        assert rig.agent.push_rejected and not rig.agent.push_connected
        await rig.push_ended.wait()  # the server's task saw the close: no connection stays open
        assert rig.push.active == 0
        assert not rig.push.connections
        release = rig.server.service.catalogue.latest("app")
        assert release is not None
        assert await rig.push.announce(rig.server.service.advertised(release), rig.address) == 0
        assert [o.code for o in rig.agent.outcomes] == [ResultCode.AUTHENTICATION_FAILURE]
        assert not rig.agent_events(Kind.UPGRADE_PROMPT)

    run(tmp_path, Setup(ip_push=True, faults=frozenset({Fault.REJECT_AUTH})), body)


# ---------------------------------------------------------------------------------------------- the 27.005 line


class FakeLine:
    """What the agent needs of AtChat, answering as 27.005 says (PDU mode, +CMTI, +CMGR, +CMGD)."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.stored: dict[int, bytes] = {}
        self.urc: dict[str, Callable[[str], Any]] = {}
        self.por_status = 0  # the status of the PoR the card answers an SMS-PP download with

    def add_urc_handler(self, prefix: str, handler: Callable[[str], Any]) -> None:
        self.urc[prefix] = handler

    async def command(self, line: str, **_: Any) -> AtResponse:
        self.commands.append(line)
        if line.startswith("AT+CMGR="):
            index = int(line.split("=")[1])
            tpdu = self.stored.get(index)
            if tpdu is None:
                return AtResponse(line, (), "+CMS ERROR: 321")
            pdu = encode_sca("+15550000000") + tpdu
            return AtResponse(line, (f"+CMGR: 0,,{len(tpdu)}", pdu.hex().upper()), "OK")
        if line.startswith("AT%SMSPP="):
            # an unciphered PoR (TS 31.115 4.4): UDH 02 71 00, lengths, TAR, counter, padding, status, then data
            por = (
                bytes.fromhex("027100000E0A000000000000000100") + bytes((self.por_status,)) + b"\x01\x90\x00"
            )
            return AtResponse(line, (f'%SMSPP: "{por.hex().upper()}"',), "OK")
        if line.startswith("AT+CMGD="):
            self.stored.pop(int(line.split("=")[1]), None)
        return AtResponse(line, (), "OK")

    def deliver(self, index: int, tpdu: bytes) -> None:
        self.stored[index] = tpdu
        self.urc["+CMTI:"](f'+CMTI: "SM",{index}')


def test_the_agent_reads_notices_through_27005(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        line = FakeLine()
        rig.nursery.start_soon(rig.agent.listen, line)
        while "+CMTI:" not in line.urc or "AT+CMGL=0" not in line.commands:
            await trio.sleep(0)
        assert line.commands[:2] == ["AT+CMGF=0", "AT+CNMI=2,1,0,0,0"]
        line.deliver(1, _sms("lunch?"))
        notice = format_sms_notice(rig.notice())
        line.deliver(2, _sms(notice[: len(notice) // 2]))  # only looks like a notice
        line.deliver(3, _sms(notice))
        await _outcome(rig, 2)
        kinds = [
            (e.field("ignored"), e.field("look_alike"), e.field("via"))
            for e in rig.agent_events(Kind.UPGRADE_NOTICE)
        ]
        assert kinds[0] == (True, None, "sms") and kinds[1][1] is True and kinds[2] == (None, None, "sms")
        assert len(rig.agent_events(Kind.UPGRADE_PROMPT)) == 1
        assert [o.code for o in rig.agent.outcomes] == [ResultCode.INVALID_DESCRIPTOR, ResultCode.SUCCESS]
        assert {"AT+CMGD=1", "AT+CMGD=2", "AT+CMGD=3"} <= set(line.commands)

    run(tmp_path, Setup(), body)


# ------------------------------------------------------------------------------------------------ bipsim ap options


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--upgrade"], "--upgrade-token"),
        (["--upgrade", "--upgrade-token", "00ff"], "16 bytes"),
        (["--upgrade-token", TOKEN.hex(), "--upgrade-check"], "--upgrade-server"),
        (["--upgrade-token", TOKEN.hex(), "--upgrade-policy", "maybe"], "--upgrade-policy"),
        (["--upgrade-token", TOKEN.hex(), "--upgrade-trust", "host:port"], "HOST:PORT"),
    ],
)
def test_bad_upgrade_options_are_usage_errors(args: list[str], message: str) -> None:
    from click.testing import CliRunner

    from bipsim.cli import cli
    from bipsim.errors import CliError

    # the command line's main() prints a CliError as its one line; here it is the exception itself
    result = CliRunner().invoke(cli, ["ap", "--port", "/nonexistent/line", *args])
    assert isinstance(result.exception, CliError) and result.exception.exit_code == 2
    assert message in str(result.exception)


def test_ap_help_explains_the_upgrade_options() -> None:
    from click.testing import CliRunner

    from bipsim.cli import cli

    text = CliRunner().invoke(cli, ["ap", "--help"]).output
    for option in (
        "--upgrade ",
        "--upgrade-registry",
        "--upgrade-token",
        "--upgrade-server",
        "--upgrade-check",
        "--upgrade-trust",
    ):
        assert option in text
    assert "--upgrade-policy" in text and "--upgrade-ip-push" in text and "JSR-118" in text


@pytest.mark.parametrize(("status", "code"), [(0, ResultCode.SUCCESS), (1, ResultCode.AUTHORIZATION_FAILURE)])
def test_an_applet_release_goes_to_the_card_as_its_push(
    tmp_path: Path, status: int, code: ResultCode
) -> None:
    """A card applet's release: its descriptor's push goes to the card (AT%SMSPP); PoR 00 installs it as an
    applet, another status is 910 and nothing installed."""

    async def body(rig: Rig) -> None:
        line = FakeLine()
        line.por_status = status
        rig.nursery.start_soon(rig.agent.listen, line)
        while "AT+CMGL=0" not in line.commands:
            await trio.sleep(0)
        release = rig.server.service.catalogue.get("echo-applet", "1.0")
        assert release is not None and rig.server.service.advertised(release)["kind"] == "applet"
        rig.agent.offer(release_notice(rig.server.service.advertised(release), rig.address, NoticeVia.SMS))
        await _outcome(rig)
        assert rig.agent.outcomes[0].code is code
        assert 'AT%SMSPP="0011223344"' in line.commands
        (por,) = rig.agent_events(Kind.SMS_POR)
        assert por.field("status") == f"{status:02X}"
        registry = Registry(rig.registry_path)
        entry = registry.get("echo-applet")
        if code is ResultCode.SUCCESS:
            assert entry is not None and entry.kind == "applet" and registry.version("app") == "1.0"
        else:
            assert entry is None and [r.status for r in rig.server.service.reports] == [910]

    run(tmp_path, Setup(applet=True), body)


# ------------------------------------------------------------------------------- the IP push's keep-alive (MockClock)


def _push_agent(tmp_path: Path) -> tuple[UpgradeAgent, Tracer]:
    tracer = Tracer(keep=True, clock=trio.current_time)
    options = UpgradeOptions(tmp_path / "registry.json", TOKEN, "accept", ip_push=("127.0.0.1", 1), imei=IMEI)
    return UpgradeAgent(options, tracer), tracer


def _frames(tracer: Tracer, direction: str, kind: str) -> list[float]:
    return [
        e.t
        for e in tracer.events
        if e.kind == Kind.UPGRADE_PUSH and e.field("direction") == direction and e.field("type") == kind
    ]


def test_ip_push_keeps_a_quiet_connection_alive(tmp_path: Path) -> None:
    """Silence after the welcome: the agent pings after 30 s, the server's pongs keep the connection for hours."""
    agent, tracer = _push_agent(tmp_path)
    server = PushServer(TerminalAuth({IMEI: TOKEN}))

    async def main() -> None:
        ours, theirs = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle, theirs)
            nursery.start_soon(agent.push_session, ours, "memory")
            await trio.sleep(3 * 3600)
            assert agent.push_connected and server.connections  # still up
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(_frames(tracer, "out", "ping")) + len(_frames(tracer, "out", "pong")) >= 100  # ~1 each 30 s


def test_ip_push_takes_a_silent_server_for_gone(tmp_path: Path) -> None:
    """A server that welcomes and then says nothing: one ping at 30 s, the connection given up at 90 s."""
    agent, tracer = _push_agent(tmp_path)

    async def silent_server(stream: trio.abc.Stream) -> None:
        decoder = FrameDecoder()
        for answer in ({"type": "challenge", "nonce": "00" * 16}, {"type": "welcome"}):
            while decoder.next_frame() is None:
                decoder.feed(await stream.receive_some(4096))
            await stream.send_all(encode_frame(answer))
        await trio.sleep_forever()  # reads nothing more, answers nothing

    async def main() -> None:
        ours, theirs = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(silent_server, theirs)
            start = trio.current_time()
            with pytest.raises(trio.TooSlowError):
                await agent.push_session(ours, "memory")
            assert trio.current_time() - start == pytest.approx(DEAD_PEER)  # virtual time
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(_frames(tracer, "out", "ping")) == 1


# ------------------------------------------------------------------------------------ review of issue 22 (fixes)


def _agent(tmp_path: Path, **options: Any) -> tuple[UpgradeAgent, Tracer]:
    tracer = Tracer(keep=True)
    settings: dict[str, Any] = {"server": ("127.0.0.1", 1), "imei": IMEI, **options}
    return UpgradeAgent(UpgradeOptions(tmp_path / "registry.json", TOKEN, **settings), tracer), tracer


def _notice(n: int = 0, server: str = "127.0.0.1:1") -> Notice:
    return Notice(NoticeVia.SMS, server, f"/v1/packages/app/1.{n}", "app", f"1.{n}", WHEN)


class FakePushServer:
    """The server's end of an in-memory IP-push connection: reads the agent's frames, sends what a test says."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream, self.decoder = stream, FrameDecoder()

    async def read(self) -> dict[str, Any]:
        while (got := self.decoder.next_frame()) is None:
            self.decoder.feed(bytes(await self.stream.receive_some(4096)))
        return got[0]

    async def send(self, frame: dict[str, Any]) -> None:
        await self.stream.send_all(encode_frame(frame))


RELEASE_FRAME = {
    "type": "release",
    "server": "127.0.0.1:1",
    "location": "/v1/packages/app/1.1",
    "name": "app",
    "version": "1.1",
    "timestamp": "2026-11-30T12:00:00Z",
}


def test_an_odd_length_push_nonce_is_a_frame_error_and_any_fault_leaves_the_ap_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 1: "abc" is refused as a frame error (it was a ValueError out of bytes.fromhex that ended the AP);
    an unforeseen fault of a push session is an app.error event and a retry, not the end of ip_push."""
    agent, tracer = _agent(tmp_path, ip_push=("127.0.0.1", 1))

    async def main() -> None:
        ours, theirs = trio.testing.memory_stream_pair()
        fake = FakePushServer(theirs)

        async def serve() -> None:
            assert (await fake.read())["type"] == "hello"
            await fake.send({"type": "challenge", "nonce": "abc"})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            with pytest.raises(FrameError):
                await agent.push_session(ours, "fake")

        calls: list[int] = []

        async def failing() -> bool:
            calls.append(1)
            if len(calls) == 1:
                raise ValueError("a fault nobody foresaw")
            agent.push_rejected = True
            return False

        monkeypatch.setattr(agent, "_push_session", failing)
        await agent.ip_push()  # returns (rejected on the second try) instead of raising
        assert len(calls) == 2
        (error,) = [e for e in tracer.events if e.kind == Kind.APP_ERROR]
        assert "ValueError" in str(error.field("error"))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_burst_of_notices_is_dropped_with_903_not_raised(tmp_path: Path) -> None:
    """Review 2: past the 64 queued notices the next one is traced and told 903; offer never raises."""
    agent, tracer = _agent(tmp_path)

    async def main() -> None:
        taken = [agent.offer(_notice(n)) for n in range(70)]
        assert taken == [True] * 64 + [False] * 6
        assert [o.code for o in agent.outcomes] == [ResultCode.LOSS_OF_SERVICE] * 6
        dropped = [e for e in tracer.events if e.kind == Kind.UPGRADE_NOTICE and e.field("dropped")]
        assert len(dropped) == 6 and len(agent._seen) == 64  # a dropped notice is no repeat later

    trio.run(main)


def test_an_unknown_imei_ends_the_flow_with_903(tmp_path: Path) -> None:
    """Review 3: the modem never gives the IMEI: the flow ends 903 "IMEI unknown" and the next one runs."""
    agent, tracer = _agent(tmp_path, imei=None)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.run)
            agent.offer(_notice(1))
            agent.offer(_notice(2))
            with trio.fail_after(3 * IMEI_WAIT):  # the clock jumps: a hang shows as TooSlowError
                while len(agent.outcomes) < 2:
                    await agent.changed.wait()
            nursery.cancel_scope.cancel()
        assert [o.code for o in agent.outcomes] == [ResultCode.LOSS_OF_SERVICE] * 2
        assert all("IMEI unknown" in o.reason for o in agent.outcomes)
        assert not [e for e in tracer.events if e.kind == Kind.TCP_CONNECT]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_notice_re_sent_after_a_failure_is_taken_again(tmp_path: Path) -> None:
    """Review 4: the same notice after a failed flow (909 here) gets a new prompt and a new attempt."""

    async def body(rig: Rig) -> None:
        notice = rig.notice()
        assert rig.agent.offer(notice)
        await _outcome(rig)
        assert rig.agent.offer(notice)  # the server's re-notice: not "repeated"
        await _outcome(rig, 2)
        assert [o.code for o in rig.agent.outcomes] == [ResultCode.AUTHENTICATION_FAILURE] * 2
        assert len(rig.agent_events(Kind.UPGRADE_PROMPT)) == 2

    run(tmp_path, Setup(token=bytes(32)), body)


def test_a_notice_for_an_untrusted_server_gets_909_and_no_connection(tmp_path: Path) -> None:
    """Review 9: a notice naming a server neither configured nor trusted is refused before the prompt."""

    async def body(rig: Rig) -> None:
        real = rig.notice()
        host, port = rig.address.rsplit(":", 1)
        forged = Notice(real.via, f"{host}:{int(port) + 1}", real.location, real.name, real.version, WHEN)
        assert not rig.agent.offer(forged)
        assert [o.code for o in rig.agent.outcomes] == [ResultCode.AUTHENTICATION_FAILURE]
        (refused,) = [e for e in rig.agent_events(Kind.UPGRADE_NOTICE) if e.field("untrusted")]
        assert refused.error and refused.field("server") == forged.server
        assert not rig.agent_events(Kind.UPGRADE_PROMPT) and not rig.agent_events(Kind.TCP_CONNECT)
        assert rig.accepted == [0]

    run(tmp_path, Setup(), body)


async def _fake_http(stream: trio.SocketStream, heard: list[bytes], answer: bytes) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(4096)
    heard.append(data)
    await stream.send_all(answer)
    await trio.sleep_forever()  # the body never comes: only the headers can stop the client


def test_a_download_larger_than_announced_stops_at_the_headers_and_the_host_header_brackets_ipv6() -> None:
    """Reviews 12 and 20: a Content-Length over the limit is refused at once with the code asked for (904 for a
    download); an IPv6 server's Host header is [addr]:port (RFC 7230 5.4)."""
    heard: list[bytes] = []
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789"

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            family = socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET
            host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
            try:
                listeners = await nursery.start(
                    functools.partial(trio.serve_tcp, host=host), lambda s: _fake_http(s, heard, answer), 0
                )
            except OSError:
                host = "127.0.0.1"
                listeners = await nursery.start(
                    functools.partial(trio.serve_tcp, host=host), lambda s: _fake_http(s, heard, answer), 0
                )
            port = listeners[0].socket.getsockname()[1]
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            client = PublishClient(address)
            with trio.fail_after(10), pytest.raises(FlowFailed) as failed:
                await client.request(
                    "GET", "/v1/packages/app/1.1", limit=100, too_large=ResultCode.SIZE_MISMATCH
                )
            assert failed.value.code is ResultCode.SIZE_MISMATCH
            host_line = next(line for line in heard[0].split(b"\r\n") if line.lower().startswith(b"host:"))
            assert host_line.split(b":", 1)[1].strip().decode() == address
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_registry_refusals_get_their_own_codes(tmp_path: Path) -> None:
    """Review 13: a bad name is 906, bytes that are not the release's 907, only a write failure 901."""
    agent, _ = _agent(tmp_path)
    good = hashlib.sha256(NEW).hexdigest()

    async def code(name: str, sha256: str) -> ResultCode:
        with pytest.raises(FlowFailed) as failed:
            await agent._install({"name": name, "version": "1.1", "sha256": sha256}, NEW)
        return failed.value.code

    async def main() -> None:
        assert await code("../app", good) is ResultCode.INVALID_DESCRIPTOR
        assert await code("app", hashlib.sha256(OLD).hexdigest()) is ResultCode.INVALID_PACKAGE
        agent.registry.path = tmp_path / "missing" / "deeper" / "registry.json"
        agent.registry.directory = tmp_path / "registry.json"  # a file where the package directory should be
        agent.registry.directory.write_text("not a directory")
        assert await code("app", good) is ResultCode.INSUFFICIENT_MEMORY

    trio.run(main)


@pytest.mark.parametrize("early", ["before the welcome", "after the rejection"])
def test_a_release_outside_the_welcomed_connection_is_never_taken(tmp_path: Path, early: str) -> None:
    """Review 17: a server sending a release before its welcome, or after a rejection, gets no notice, no
    prompt, no install."""
    agent, tracer = _agent(tmp_path, ip_push=("127.0.0.1", 1))

    async def main() -> None:
        ours, theirs = trio.testing.memory_stream_pair()
        fake = FakePushServer(theirs)

        async def serve() -> None:
            assert (await fake.read())["type"] == "hello"
            await fake.send({"type": "challenge", "nonce": "00" * 16})
            assert (await fake.read())["type"] == "auth"
            rejected = encode_frame({"type": "rejected", "reason": "no"})
            # the release in the same write as the rejection: the agent holds its bytes and must still ignore them
            await fake.stream.send_all(
                (rejected if early == "after the rejection" else b"") + encode_frame(RELEASE_FRAME)
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            welcomed = await agent.push_session(ours, "fake")
            nursery.cancel_scope.cancel()
        assert not welcomed
        kinds = {e.kind for e in tracer.events}
        assert Kind.UPGRADE_NOTICE not in kinds and Kind.UPGRADE_PROMPT not in kinds
        assert agent._receive.statistics().current_buffer_used == 0
        assert agent.registry.version("app") is None

    trio.run(main)


def test_no_bearer_up_is_903_without_a_connection(tmp_path: Path) -> None:
    """Review 5 (in part): the agent asks the AP's network (ap/network.py) first: with Wi-Fi and cellular data
    off, or the server outside the AP's allowlist, the flow ends 903 and nothing connects."""
    from bipsim.ap.network import AllowRule, ApNetwork

    async def body(rig: Rig) -> None:
        rig.agent.network = ApNetwork(wifi=False, cellular=False)
        rig.agent.offer(rig.notice())
        await _outcome(rig)
        rig.agent.network = ApNetwork(allow=[AllowRule.parse("10.0.0.0/8")])
        rig.agent.offer(rig.notice(version="1.0"))  # another notice (another location): not a repeat
        await _outcome(rig, 2)
        assert [o.code for o in rig.agent.outcomes] == [ResultCode.LOSS_OF_SERVICE] * 2
        assert "no bearer" in rig.agent.outcomes[0].reason and "allowlist" in rig.agent.outcomes[1].reason
        assert rig.accepted == [0] and not rig.agent_events(Kind.TCP_CONNECT)
        rig.agent.network = ApNetwork()  # Wi-Fi up, loopback allowed: the same notice goes through
        rig.agent.offer(rig.notice())
        await _outcome(rig, 3)
        assert rig.agent.outcomes[2].code is ResultCode.SUCCESS

    run(tmp_path, Setup(), body)


def test_a_release_is_an_applet_by_its_kind_not_by_its_first_bytes(tmp_path: Path) -> None:
    """Review item 10 of issue 22: a software release whose package happens to begin like an applet descriptor is
    installed as software (no push to the card); the release JSON says `kind`."""

    async def body(rig: Rig) -> None:
        line = FakeLine()
        rig.nursery.start_soon(rig.agent.listen, line)
        while "AT+CMGL=0" not in line.commands:
            await trio.sleep(0)
        release = make_release("lookalike", "1.0", APPLET, WHEN)
        rig.server.service.catalogue.releases[("lookalike", "1.0")] = release
        advertised = rig.server.service.advertised(release)
        assert advertised["kind"] == "software"
        rig.agent.offer(release_notice(advertised, rig.address, NoticeVia.SMS))
        await _outcome(rig)
        assert rig.agent.outcomes[0].code is ResultCode.SUCCESS
        assert not any(c.startswith("AT%SMSPP") for c in line.commands) and not rig.agent_events(Kind.SMS_PP)
        entry = Registry(rig.registry_path).get("lookalike")
        assert entry is not None and entry.kind == "app"

    run(tmp_path, Setup(), body)


def test_the_release_kind_is_checked_and_software_by_default() -> None:
    """A server without `kind` (before it existed) sends software; a kind the agent does not know is 906."""
    release = make_release("app", "1.1", NEW, WHEN).as_json()
    notice = release_notice(release, "127.0.0.1:8450", NoticeVia.SMS)
    del release["kind"]
    assert check_release(dict(release), notice)["kind"] == "software"
    for kind in ("firmware", 1, None):
        with pytest.raises(FlowFailed) as failed:
            check_release({**release, "kind": kind}, notice)
        assert failed.value.code is ResultCode.INVALID_DESCRIPTOR and "kind" in failed.value.reason


def test_the_catalogue_kind_is_optional_software_or_applet(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(APPLET)
    (tmp_path / "s.bin").write_bytes(OLD)
    entries = [
        ("s", "1.0", "s.bin", None),
        ("a", "1.0", "a.bin", "applet"),
        ("b", "1.0", "a.bin", "software"),
    ]
    text = "".join(
        f'[[release]]\nname = "{n}"\nversion = "{v}"\nfile = "{f}"\ntimestamp = 2026-11-30T12:00:00Z\n'
        + (f'kind = "{k}"\n' if k else "")
        for n, v, f, k in entries
    )
    (tmp_path / "catalogue.toml").write_text(text)
    catalogue = load_catalogue(tmp_path)
    kinds = {name: catalogue.get(name, "1.0").kind for name in ("s", "a", "b")}  # type: ignore[union-attr]
    assert kinds == {"s": "software", "a": "applet", "b": "software"}
    assert catalogue.get("a", "1.0").as_json()["kind"] == "applet"  # type: ignore[union-attr]
    for bad in ('"firmware"', "3"):
        (tmp_path / "catalogue.toml").write_text(
            text
            + f'[[release]]\nname = "x"\nversion = "1"\nfile = "s.bin"\ntimestamp = 2026-11-30T12:00:00Z\nkind = {bad}\n'
        )
        with pytest.raises(CatalogueError, match="kind"):
            load_catalogue(tmp_path)
