"""Push deployment end to end (docs/protocols.md, "Push deployment"): a real CP (its SMSC) and a real AP with the
upgrade agent (`bipsim ap --upgrade`), and the publish server in the scenario's process (traced to publish.jsonl),
whose loopback admin API announces release 1.1 of `app` over 1.0 installed. Steps 001:201..204 and the
embodiments' 001:e<k>.<n> (trace/steps.py); result codes are JSR-118's.

`push-sms`, `push-wap`, `push-ip`: the notice as a plain SMS, a WAP Push or an IP-push frame, installed (900).
`push-active`: no notice, the user's check finds 1.1. `push-declined`: 902 and no connection to the server.
`push-auth-fails`: a wrong token, 909, no download. `push-corrupt-package`: 907, 1.0 intact. `push-lost-notice`:
the SMSC refuses the SMS notice, the ME never gets it; the active check, served after the loss, installs 1.1. `push-applet`: a card applet's release
through the same SMS notice; the agent hands its push to the card, whose session with the OTA server (a RAM
campaign, scenarios/campaigns.py) installs the applet.
"""

from __future__ import annotations

import hashlib
import json
import socket
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from bipsim.ap.upgrade.agent import PublishClient, ResultCode
from bipsim.ap.upgrade.registry import Registry
from bipsim.ota.publish_server import Fault, PublishServer, PublishService, TerminalAuth
from bipsim.ota.push_channel import PushServer
from bipsim.ota.release_catalogue import Catalogue, make_release
from bipsim.scenarios.base import ScenarioFailed, ScenarioOptions, ScenarioResult, check
from bipsim.scenarios.campaigns import APPLICATION, campaign, ram_install, ram_load
from bipsim.scenarios.harness import EventQuery, Harness, RunConfig, RunResult, run_processes
from bipsim.trace.events import Actor, Layer, TraceEvent
from bipsim.trace.kinds import Kind
from bipsim.trace.reader import read_trace
from bipsim.trace.recorder import Tracer
from bipsim.trace.steps import STEPS

IMEI = "490154203237518"  # the CP's (AT+CGSN)
TOKEN = "00112233445566778899aabbccddeeff"
MSISDN = "+15550000001"  # the ME's number at the SMSC
OLD = b"bipsim demo application 1.0\n" * 64
NEW = b"bipsim demo application 1.1\n" * 96
WHEN = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
WAIT = 45.0  # seconds for a moment of the run on a loaded machine; a broken run ends sooner (a process exits)

APPLET = "echo-applet"  # a card applet's release: its package is a descriptor with the OTA platform's push

RESULT = EventQuery(Kind.UPGRADE_RESULT)
WELCOMED = EventQuery(Kind.UPGRADE_PUSH, lambda f: f.get("type") == "welcomed")
LISTENING = EventQuery(Kind.AT_COMMAND, src="ap", data_prefix=b"AT+CMGL")  # +CNMI is set: notices can come


@dataclass
class PushRun:
    name: str
    via: str | None  # the notice sent: "sms", "wap", "ip"; None: none
    ap_args: list[str] = field(default_factory=list)
    faults: frozenset[Fault] = frozenset()
    token: str = TOKEN
    wait_for: EventQuery = LISTENING  # what the AP must have done before the notice goes out
    notified: dict[str, Any] = field(default_factory=dict)
    applet: bool = False  # the release is a card applet: the OTA server's RAM campaign installs it
    failure: str | None = None
    publish_events: list[TraceEvent] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)  # the listener of each connection the server accepted
    admin: str = ""  # HOST:PORT of the admin listener the scenario's notify goes to
    # the SMSC refuses the notice; the terminal's connections wait until it has, so the check comes after the loss
    lose_notice: bool = False
    registry: Registry | None = None


def applet_descriptor() -> bytes:
    """The applet release's package: the TOML descriptor whose `trigger` is the secured SMS-PP push (ETSI TS 102
    225) that starts the card's session with the OTA server, whose campaign installs the applet by RAM."""
    from bipsim.scenarios.sms_trigger import trigger_tpdu

    lines = [
        'kind = "applet"',
        f'application = "{APPLICATION}"',
        f'trigger = "{trigger_tpdu().hex().upper()}"',
    ]
    return ("\n".join(lines) + "\n").encode()


# the CP's SMSC traces where its control socket listens (net/smsc.py serve_control) once it is up
SMSC_UP = EventQuery(Kind.SMSC_CONTROL, lambda f: isinstance(f.get("port"), int) and "host" in f)


async def _drive(
    run: PushRun, server: PublishServer, listeners: list[socket.socket], harness: Harness
) -> None:
    push = server.push
    assert push is not None

    def counted(listener: str) -> Callable[[trio.SocketStream], Awaitable[None]]:
        async def handle(stream: trio.SocketStream) -> None:
            # an accepted connection on a listener the terminal was told of (docs/protocols.md, "Push deployment")
            try:
                peer = stream.socket.getpeername()
            except OSError:  # reset before we looked: accepted all the same
                peer = ("?", 0)
            run.accepted.append(listener)
            server.tracer.emit(
                Actor.PUBLISH,
                Actor.PUBLISH,
                Layer.TCP,
                f"{listener} listener accepted a connection from {peer[0]}:{peer[1]}",
                kind=Kind.TCP_ACCEPT,
                fields={"listener": listener, "host": str(peer[0]), "port": int(peer[1])},
            )
            await notice_settled.wait()
            await (server.handle if listener == "http" else push.handle)(stream)

        return handle

    notice_settled = trio.Event()
    if not run.lose_notice:
        notice_settled.set()

    async with trio.open_nursery() as nursery:
        http, push_socket, admin = (trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in listeners)
        nursery.start_soon(trio.serve_listeners, counted("http"), [http])
        nursery.start_soon(trio.serve_listeners, counted("push"), [push_socket])
        # the scenario's own admin requests come on a listener of their own, so that they never count as the terminal's
        nursery.start_soon(trio.serve_listeners, server.handle, [admin])
        try:
            up = await harness.wait_for_event("cp", SMSC_UP, timeout=WAIT)
            smsc = None if up is None else (str(up["fields"]["host"]), int(up["fields"]["port"]))
            check(smsc is not None, "the CP did not say where its SMSC listens")
            server.smsc, server.service.smsc = smsc, True
            if run.via is not None:
                ready = await harness.wait_for_event("ap", run.wait_for, timeout=WAIT)
                check(ready is not None, f"the AP's agent did not get ready ({run.wait_for.kind})")
                client = PublishClient(run.admin)
                name = APPLET if run.applet else "app"
                answer = await client.request(
                    "POST", "/v1/admin/notify", {"name": name, "via": run.via, "msisdn": MSISDN}
                )
                run.notified = answer.json() or {}
                expected = 502 if run.lose_notice else 200  # 502: the SMSC refused the notice
                check(answer.status == expected, f"the admin notify answered {answer.status}: {run.notified}")
                notice_settled.set()
            result = await harness.wait_for_event("ap", RESULT, timeout=WAIT)
            check(result is not None, "the agent told the user no result")
        except ScenarioFailed as exc:
            run.failure = str(exc)
        finally:
            cp = harness.processes.get("cp")
            # an applet's OTA session ends the CP (--once) by itself; otherwise nothing more is to come
            if cp is not None and cp.returncode is None and (run.failure is not None or not run.applet):
                cp.terminate()
            nursery.cancel_scope.cancel()


def run_push(run: PushRun, options: ScenarioOptions) -> RunResult:
    directory = options.directory or Path(tempfile.mkdtemp(prefix=f"bipsim-{run.name}-"))
    directory.mkdir(parents=True, exist_ok=True)
    registry_path = directory / "registry.json"
    for stale in (registry_path, directory / "publish.jsonl"):
        stale.unlink(missing_ok=True)
    Registry(registry_path).install("app", "1.0", OLD, hashlib.sha256(OLD).hexdigest())
    listeners = []
    # the HTTP API, the IP push and the scenario's admin listener, bound before the AP starts so that it can be told
    for _ in range(3):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listeners.append(listener)
    http_port, push_port, admin_port = (s.getsockname()[1] for s in listeners)
    run.admin = f"127.0.0.1:{admin_port}"
    tracer = Tracer.to_file(directory / "publish.jsonl", session=run.name)
    auth = TerminalAuth({IMEI: bytes.fromhex(TOKEN)}, reject_all=Fault.REJECT_AUTH in run.faults)
    releases = [make_release("app", "1.0", OLD, WHEN), make_release("app", "1.1", NEW, WHEN)]
    if run.applet:
        releases.append(make_release(APPLET, "1.0", applet_descriptor(), WHEN, kind="applet"))
    catalogue = Catalogue(releases)
    service = PublishService(
        catalogue, auth, advertise=f"127.0.0.1:{http_port}", faults=run.faults, smsc=False
    )
    if run.lose_notice:
        # an originator the SMSC cannot code (TS 23.040 9.1.2.5: digits only): it refuses the notice, which never
        # reaches the ME (net/smsc.py: the send-mt is answered ok false and traced as a refused smsc.control)
        service.sms_from = "+1555ABC"
    server = PublishServer(service, tracer, push=PushServer(auth, tracer))
    ap_args = [
        "--upgrade",
        "--upgrade-token",
        run.token,
        "--upgrade-registry",
        str(registry_path),
        "--upgrade-trust",  # the agent follows notices naming trusted servers only
        f"127.0.0.1:{http_port}",
        *(arg.format(http=f"127.0.0.1:{http_port}", push=f"127.0.0.1:{push_port}") for arg in run.ap_args),
    ]
    config = RunConfig(
        session=run.name,
        # no BIP session of the card ends the run (the scenario ends it), but an applet's, which the push starts
        profile={"trigger": "sms" if run.applet else "manual"},
        ap_args=ap_args,
        cp_args=["--sms-listen", "127.0.0.1:0"],
        server=run.applet,
        campaign=campaign(ram_load(), ram_install()) if run.applet else None,
        port_a=options.port_a,
        port_b=options.port_b,
        timeout=120.0,
        during=lambda harness: _drive(run, server, listeners, harness),
    )
    try:
        result = run_processes(config, directory)
    finally:
        tracer.close()
        for listener in listeners:
            listener.close()
    run.publish_events, _ = read_trace([directory / "publish.jsonl"])
    run.registry = Registry(registry_path)
    check(run.failure is None, f"{run.name}: {run.failure}", result)
    return result


def _results(result: RunResult) -> list[TraceEvent]:
    return [e for e in result.events if e.kind == Kind.UPGRADE_RESULT]


def _publish(run: PushRun, kind: Kind) -> list[TraceEvent]:
    return [e for e in run.publish_events if e.kind == kind]


def _check_result(run: PushRun, result: RunResult, code: ResultCode) -> None:
    told = [e.field("result") for e in _results(result)]
    check(told[:1] == [int(code)], f"the user was told {told}, not {int(code)}", result)


def _check_steps(run: PushRun, result: RunResult, codes: tuple[str, ...]) -> None:
    events = sorted(result.events + run.publish_events, key=lambda e: e.t)
    labelled = [e for e in events if e.step is not None and e.step.startswith("001:")]
    wrong = [(e.step, str(e.kind)) for e in labelled if not STEPS[str(e.step)].matches(e)]
    check(not wrong, f"events labelled with steps they are not: {wrong}", result)
    first: dict[str, float] = {}
    for event in labelled:
        first.setdefault(str(event.step), event.t)
    missing = [code for code in codes if code not in first]
    check(not missing, f"steps missing: {missing}", result)
    order = [first[code] for code in codes]
    check(order == sorted(order), f"steps out of order: {sorted(codes, key=lambda c: first[c])}", result)


def _check_installed(run: PushRun, result: RunResult, version: str) -> None:
    registry = run.registry
    assert registry is not None
    check(
        list(registry.entries) == ["app"] and registry.version("app") == version,
        f"the registry holds {registry.as_json()}, not app {version}",
        result,
    )
    data = registry.package("app")
    check(data == (NEW if version == "1.1" else OLD), f"the installed package is not app {version}'s", result)


def _check_auth_before_download(run: PushRun, result: RunResult) -> None:
    kinds = [str(e.kind) for e in run.publish_events]
    check("publish.download" in kinds, "the server served no download", result)
    auth = [i for i, k in enumerate(kinds) if k == "publish.auth"]
    check(
        bool(auth) and auth[0] < kinds.index("publish.download"),
        "a download before the authentication",
        result,
    )
    reports = [e.field("result") for e in _publish(run, Kind.PUBLISH_REPORT)]
    check(reports == [900], f"the server got the reports {reports}, not [900]", result)


def _installed_by(run: PushRun, options: ScenarioOptions, steps: tuple[str, ...]) -> ScenarioResult:
    result = run_push(run, options)
    _check_result(run, result, ResultCode.SUCCESS)
    _check_installed(run, result, "1.1")
    _check_auth_before_download(run, result)
    _check_steps(run, result, steps)
    return ScenarioResult(run.name, result, [json.dumps(run.notified.get("sent"))])


NOTICE_STEPS = ("001:201", "001:202", "001:203", "001:204")
ACTIVE_STEPS = ("001:202", "001:203", "001:e3.1", "001:204")  # the check goes out once authenticated


def push_sms(options: ScenarioOptions) -> ScenarioResult:
    """A plain-SMS notice (embodiment 1): prompt, connect to its server, authenticate, download, 1.0 -> 1.1."""
    return _installed_by(PushRun("push-sms", "sms"), options, ("001:e1.1", "001:e1.2", *NOTICE_STEPS))


def push_wap(options: ScenarioOptions) -> ScenarioResult:
    """A WAP Push Service Indication notice (embodiment 2) installs 1.1 from the SI's href."""
    run = PushRun("push-wap", "wap")
    outcome = _installed_by(run, options, ("001:e2.1", *NOTICE_STEPS))
    notice = next(e for e in outcome.run.events if e.kind == Kind.UPGRADE_NOTICE and e.field("via") == "wap")
    download = _publish(run, Kind.PUBLISH_DOWNLOAD)[0]
    check(
        notice.field("location") == f"/v1/packages/app/{download.field('version')}",
        "the agent did not fetch the SI's location",
        outcome.run,
    )
    return outcome


def push_ip(options: ScenarioOptions) -> ScenarioResult:
    """An IP-push release frame (embodiment 4) on the connection authenticated at boot installs 1.1."""
    run = PushRun("push-ip", "ip", ["--upgrade-ip-push", "{push}"], wait_for=WELCOMED)
    # first occurrences: authenticated at boot (001:203) before the release frame, then the notice's own flow
    steps = ("001:e4.1", "001:203", "001:e4.2", "001:201", "001:202", "001:204")
    outcome = _installed_by(run, options, steps)
    check(
        run.notified.get("sent") == 1,
        f"the release reached {run.notified.get('sent')} connections",
        outcome.run,
    )
    return outcome


def push_active(options: ScenarioOptions) -> ScenarioResult:
    """The user's active check (embodiment 3) sends app 1.0 to the server, which has 1.1: installed."""
    run = PushRun("push-active", None, ["--upgrade-server", "{http}", "--upgrade-check"])
    outcome = _installed_by(run, options, ACTIVE_STEPS)
    checks = _publish(run, Kind.PUBLISH_CHECK)
    check(
        [(e.field("name"), e.field("version")) for e in checks] == [("app", "1.0")],
        "the check did not send app 1.0",
        outcome.run,
    )
    return outcome


def push_lost_notice(options: ScenarioOptions) -> ScenarioResult:
    """The SMS notice is lost: the SMSC refuses it and the ME never gets it; the user's active check, served only
    after the loss, installs the same 1.1 as the notice would have (push-sms)."""
    run = PushRun(
        "push-lost-notice", "sms", ["--upgrade-server", "{http}", "--upgrade-check"], lose_notice=True
    )
    outcome = _installed_by(run, options, ACTIVE_STEPS)
    result = outcome.run
    refused = [e for e in result.events if e.kind == Kind.SMSC_CONTROL and e.field("op") == "send-mt"]
    check(
        [e.field("ok") for e in refused] == [False] and refused[0].error,
        f"the SMSC did not refuse the notice: {[e.summary for e in refused]}",
        result,
    )
    offered = [e for e in result.events if e.kind == Kind.SMSC_MT]
    check(not offered, f"the SMSC offered the ME {len(offered)} messages", result)
    check(not [e for e in result.events if e.kind == Kind.UPGRADE_PROMPT], "a prompt", result)
    # the order, in the server's own trace: the refused notify, then the check
    kinds = [str(e.kind) for e in run.publish_events]
    notify = [
        i
        for i, e in enumerate(run.publish_events)
        if e.kind == Kind.PUBLISH_NOTIFY and e.field("status") == 502
    ]
    check(
        bool(notify) and "publish.check" in kinds and notify[0] < kinds.index("publish.check"),
        f"the check did not come after the lost notice: {kinds}",
        result,
    )
    return outcome


def _terminal_requests(run: PushRun) -> list[TraceEvent]:
    """The server's requests from the terminal (the scenario's admin notify left out) and push frames."""
    return [
        e
        for e in run.publish_events
        if (e.kind == Kind.HTTP_REQUEST and not str(e.field("target", "")).startswith("/v1/admin/"))
        or e.kind == Kind.PUBLISH_PUSH
    ]


def _refused(run: PushRun, options: ScenarioOptions, code: ResultCode) -> tuple[RunResult, list[str]]:
    result = run_push(run, options)
    _check_result(run, result, code)
    _check_installed(run, result, "1.0")
    return result, [str(e.kind) for e in run.publish_events]


def push_declined(options: ScenarioOptions) -> ScenarioResult:
    """The user declines the SMS notice's prompt: 902, and the server sees no connection from the terminal."""
    run = PushRun("push-declined", "sms", ["--upgrade-policy", "decline"])
    result, kinds = _refused(run, options, ResultCode.USER_CANCELLED)
    prompts = [e for e in result.events if e.kind == Kind.UPGRADE_PROMPT]
    check(len(prompts) == 1, f"{len(prompts)} prompts for one notice", result)
    # connections, not requests: a terminal that connected and sent nothing is seen all the same
    accepted = [e.field("listener") for e in _publish(run, Kind.TCP_ACCEPT)]
    check(accepted == run.accepted == [], f"the server accepted connections on {accepted}", result)
    seen = [str(e.field("target")) for e in _terminal_requests(run)]
    check(not seen, f"the server saw the terminal: {seen}", result)
    return ScenarioResult(run.name, result)


def push_auth_fails(options: ScenarioOptions) -> ScenarioResult:
    """The server refuses the terminal's MAC (a wrong token): 909, no download, 1.0 kept."""
    run = PushRun("push-auth-fails", "sms", token="ff" * 16)
    result, kinds = _refused(run, options, ResultCode.AUTHENTICATION_FAILURE)
    refused = [e for e in _publish(run, Kind.PUBLISH_AUTH) if e.field("ok") is False]
    check(bool(refused), "the server did not refuse the MAC", result)
    check("publish.download" not in kinds, "a download without authentication", result)
    return ScenarioResult(run.name, result)


def push_corrupt_package(options: ScenarioOptions) -> ScenarioResult:
    """The server sends a package that does not hash to its release: 907 to the user and the server, 1.0 intact."""
    run = PushRun("push-corrupt-package", "sms", faults=frozenset({Fault.CORRUPT_PACKAGE}))
    result, _ = _refused(run, options, ResultCode.INVALID_PACKAGE)
    reports = [e.field("result") for e in _publish(run, Kind.PUBLISH_REPORT)]
    check(reports == [907], f"the server got the reports {reports}, not [907]", result)
    return ScenarioResult(run.name, result)


def push_applet(options: ScenarioOptions) -> ScenarioResult:
    """A card applet's release through the same SMS notice: the agent hands its push to the card, whose session
    with the OTA server loads and installs the applet by RAM."""
    run = PushRun("push-applet", "sms", applet=True)
    result = run_push(run, options)
    told = [(e.field("name"), e.field("result")) for e in _results(result)]
    check(told == [(APPLET, 900)], f"the user was told {told}, not {APPLET} 900", result)
    registry = run.registry
    assert registry is not None
    entry = registry.get(APPLET)
    check(entry is not None and entry.kind == "applet", f"the registry holds {registry.as_json()}", result)
    check(registry.version("app") == "1.0", "the application was changed", result)
    check(result.completed, "the OTA server did not complete the RAM campaign with 90 00 everywhere", result)
    apps = result.card_state.get("gp", {}).get("applications", {})
    check(APPLICATION.lower() in apps, f"the card's registry lacks the applet: {sorted(apps)}", result)
    _check_auth_before_download(run, result)
    return ScenarioResult(run.name, result)


PUSH_SCENARIOS: dict[str, Callable[[ScenarioOptions], ScenarioResult]] = {
    "push-sms": push_sms,
    "push-wap": push_wap,
    "push-ip": push_ip,
    "push-active": push_active,
    "push-declined": push_declined,
    "push-auth-fails": push_auth_fails,
    "push-corrupt-package": push_corrupt_package,
    "push-lost-notice": push_lost_notice,
    "push-applet": push_applet,
}
