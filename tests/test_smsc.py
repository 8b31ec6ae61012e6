"""net/smsc.py: the network's SMS centre: MO submissions, MT deliveries, status reports, concatenation, (U)SIM data
downloads with their PoR, the control socket and `bipsim sms`."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from bipsim.cp.network import CellularNetwork
from bipsim.net.sms_pdu import (
    Address,
    Concatenation,
    ReportStatus,
    SmsDeliver,
    SmsPduError,
    SmsStatusReport,
    SmsSubmit,
    decode_tpdu,
    ports_of,
)
from bipsim.net.smsc import (
    MAX_ATTEMPTS,
    RETRY_INTERVAL,
    Answer,
    MtAnswer,
    MtState,
    Smsc,
    SmscControl,
    request,
    serve_control,
)
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer
from bipsim.uicc.transitions import IllegalSessionEvent

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
ME = "+15550001234"


def _smsc() -> tuple[Smsc, Tracer]:
    tracer = Tracer(keep=True)
    return Smsc("+15550000000", tracer=tracer, clock=lambda: NOW), tracer


def _kinds(tracer: Tracer, kind: str) -> list[dict[str, object]]:
    return [e.fields or {} for e in tracer.events if e.kind == kind]


class FakeMe:
    """An ME that records what it was given and answers per the test (the CP's command set in real runs)."""

    def __init__(self, answer: MtAnswer | None = None) -> None:
        self.got: list[bytes] = []
        self.answer = answer or Answer(True)
        self.arrived = trio.Event()
        self.release: trio.Event | None = None

    async def __call__(self, tpdu: bytes) -> MtAnswer:
        self.got.append(tpdu)
        self.arrived.set()
        if self.release is not None:
            await self.release.wait()
        return self.answer


def test_mo_submit_is_stored_and_traced() -> None:
    smsc, tracer = _smsc()
    tpdu = SmsSubmit.for_text("+15557654321", "hello", mr=42)[0].encode()
    assert smsc.submit(tpdu, origin=ME) == 42
    [mo] = smsc.mo
    assert mo.origin == ME and mo.submit.text == "hello" and mo.tpdu == tpdu and mo.state.value == "delivered"
    assert _kinds(tracer, Kind.SMSC_MO) == [
        {
            "id": 1,
            "mr": 42,
            "origin": ME,
            "destination": "+15557654321",
            "srr": False,
            "status": 0,
            "smsc": "+15550000000",
        }
    ]
    assert smsc.mt == []  # no status report asked for


def test_status_report_queued_when_srr_set_and_outcome_applies() -> None:
    smsc, _ = _smsc()
    smsc.outcomes["+15557654321"] = ReportStatus.VALIDITY_EXPIRED
    tpdu = SmsSubmit.for_text("+15557654321", "hi", mr=7, status_report_request=True)[0].encode()
    smsc.submit(tpdu, origin=ME)
    [mo] = smsc.mo
    [mt] = smsc.mt
    assert mo.state.value == "failed" and mo.report_id == mt.id and mt.mo_id == mo.id
    report = decode_tpdu(mt.tpdu)
    assert isinstance(report, SmsStatusReport)
    assert (report.mr, str(report.recipient), report.status) == (7, "+15557654321", 0x46)
    assert report.scts == NOW and report.discharge == NOW


@pytest.mark.parametrize(
    ("tpdu", "code", "reason"),
    [
        (b"", 304, "empty"),
        (bytes.fromhex("01000B917228001011F100000C"), 304, "TP-UDL"),
        (SmsDeliver.for_text("+1555", "x", NOW)[0].encode(), 304, "SMS-SUBMIT"),
    ],
)
def test_bad_mo_tpdus_get_their_cms_code(tpdu: bytes, code: int, reason: str) -> None:
    smsc, tracer = _smsc()
    with pytest.raises(SmsPduError, match=reason) as err:
        smsc.submit(tpdu, origin=ME)
    assert err.value.cms_code == code
    assert smsc.mo == []
    [refused] = [e for e in tracer.events if e.kind == Kind.SMSC_REFUSED]
    assert refused.error and refused.fields and refused.fields["code"] == code


def test_duplicate_under_reject_duplicates_is_refused_with_fcs_c5() -> None:
    smsc, _ = _smsc()
    tpdu = SmsSubmit.for_text("+15557654321", "once", mr=3, reject_duplicates=True)[0].encode()
    smsc.submit(tpdu, origin=ME)
    with pytest.raises(SmsPduError) as err:
        smsc.submit(tpdu, origin=ME)
    assert err.value.cms_code == 0xC5 and len(smsc.mo) == 1
    # without TP-RD the SMSC takes the same message again
    again = SmsSubmit.for_text("+15557654321", "once", mr=3)[0].encode()
    assert smsc.submit(again, origin=ME) == 3 and len(smsc.mo) == 2


def test_concatenated_mo_is_joined_in_order() -> None:
    smsc, _ = _smsc()
    text = "0123456789" * 20
    parts = SmsSubmit.for_text("+15557654321", text, reference=9)
    for part in reversed(parts):
        smsc.submit(part.encode(), origin=ME)
    smsc.submit(parts[0].encode(), origin="+15550000001")  # another sender's part 1 of the same reference
    joined = smsc.mo_texts()
    assert joined[0] == {
        "origin": ME,
        "destination": "+15557654321",
        "text": text,
        "ids": [2, 1],
        "complete": True,
    }
    assert joined[1]["complete"] is False and joined[1]["origin"] == "+15550000001"


def test_inject_text_splits_and_alphanumeric_originator() -> None:
    smsc, _ = _smsc()
    messages = smsc.inject_mt(text="x" * 200, originator="BIPSIM", message_class=1)
    assert [m.state for m in messages] == [MtState.QUEUED, MtState.QUEUED]
    decoded = [decode_tpdu(m.tpdu) for m in messages]
    assert all(isinstance(d, SmsDeliver) for d in decoded)
    concats = [d.concatenation for d in decoded if isinstance(d, SmsDeliver)]
    assert concats == [Concatenation(1, 2, 1), Concatenation(1, 2, 2)]
    first = decoded[0]
    assert isinstance(first, SmsDeliver) and first.originator == Address.parse("BIPSIM")
    assert first.message_class == 1 and first.scts == NOW
    # the next long text gets the next reference
    assert smsc.inject_mt(text="y" * 200)[0].decoded.concatenation == Concatenation(2, 2, 1)  # type: ignore[union-attr]


def test_inject_wap_push_data_and_errors() -> None:
    smsc, _ = _smsc()
    [push] = smsc.inject_mt(data=b"\x01\x06\x03\xbe\xaf\x84", port=2948)
    assert isinstance(push.decoded, SmsDeliver) and ports_of(push.decoded.udh) is not None
    with pytest.raises(SmsPduError):
        smsc.inject_mt(text="x", data=b"x")
    with pytest.raises(SmsPduError):
        smsc.inject_mt(SmsSubmit.for_text("+1", "x")[0].encode())
    with pytest.raises(SmsPduError):
        smsc.inject_mt(data=b"\x00" * 141)
    with pytest.raises(SmsPduError, match="TP-UDL"):
        smsc.inject_mt(bytes.fromhex("040B917228214365F70000313062315352800A800D8A"))


def test_sans_io_delivery_steps() -> None:
    smsc, tracer = _smsc()
    [message] = smsc.inject_mt(text="hello")
    assert smsc.take_next() is None  # nobody subscribed: the message waits
    smsc.subscribe(FakeMe())
    offered = smsc.take_next()
    assert offered is message and message.state is MtState.DELIVERING
    assert smsc.take_next() is None
    smsc.settle(message, Answer(False, failure=0xD2, cause="memory full"))
    assert message.state is MtState.FAILED and message.failure == 0xD2
    with pytest.raises(IllegalSessionEvent):
        smsc.settle(message, Answer(True))  # a settled message is settled once
    outcome = [e for e in tracer.events if e.kind == Kind.SMSC_OUTCOME][0]
    assert outcome.error and outcome.fields == {
        "id": 1,
        "state": "failed",
        "attempts": 1,
        "failure": 0xD2,
        "cause": "memory full",
    }


async def test_run_delivers_in_order_once_subscribed() -> None:
    smsc, tracer = _smsc()
    first = smsc.inject_mt(text="first")[0]
    second = smsc.inject_mt(text="second")[0]
    me = FakeMe()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(smsc.run)
        await trio.testing.wait_all_tasks_blocked()
        assert me.got == [] and first.state is MtState.QUEUED
        unsubscribe = smsc.subscribe(me)
        await smsc.wait_settled([first.id, second.id])
        assert [decode_tpdu(t).text for t in me.got] == ["first", "second"]  # type: ignore[union-attr]
        assert first.state is second.state is MtState.DELIVERED
        # a status report of a later MO reaches the ME the same way
        smsc.submit(
            SmsSubmit.for_text("+15557654321", "x", mr=5, status_report_request=True)[0].encode(), origin=ME
        )
        await smsc.wait_settled([smsc.mt[-1].id])
        assert isinstance(decode_tpdu(me.got[-1]), SmsStatusReport)
        unsubscribe()
        [later] = smsc.inject_mt(text="later")
        await trio.testing.wait_all_tasks_blocked()
        assert later.state is MtState.QUEUED and len(me.got) == 3
        nursery.cancel_scope.cancel()
    assert [f["type"] for f in _kinds(tracer, Kind.SMSC_MT)] == ["deliver", "deliver", "status_report"]


async def test_data_download_records_the_por_and_a_failing_me() -> None:
    smsc, tracer = _smsc()
    # an OTA (U)SIM data download: PID 7F, class 2, 8-bit, a command packet behind the 70 00 header (TS 31.115)
    download = SmsDeliver(
        Address.parse("+15550000001"), NOW, pid=0x7F, dcs=0xF6, udh=(), ud=bytes.fromhex("0270000019")
    ).encode()
    por = bytes.fromhex("027100000E0AB0010000000000000001000000")
    me = FakeMe(Answer(True, por=por, sw=0x9000))
    smsc.subscribe(me)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(smsc.run)
        [message] = smsc.inject_mt(download)
        await smsc.wait_settled([message.id])
        assert me.got == [download] and message.is_data_download
        assert message.por == por and message.as_json()["por"] == por.hex().upper()
        assert message.as_json()["sw"] == "9000"
        outcome = [e for e in tracer.events if e.kind == Kind.SMSC_OUTCOME][-1]
        assert outcome.hex == por.hex().upper()

        async def broken(tpdu: bytes) -> MtAnswer:
            raise RuntimeError("the modem fell over")

        smsc.subscribe(broken)
        [failed] = smsc.inject_mt(text="x")
        await smsc.wait_settled([failed.id])
        assert failed.state is MtState.FAILED and "fell over" in failed.cause
        nursery.cancel_scope.cancel()


async def test_a_busy_toolkit_is_tried_again_later(autojump_clock: trio.testing.MockClock) -> None:
    smsc, tracer = _smsc()
    answers = [Answer(False, failure=0xD4, cause="toolkit busy")] * 2 + [Answer(True)]
    times: list[float] = []

    async def busy_then_free(tpdu: bytes) -> MtAnswer:
        times.append(trio.current_time())
        return answers[len(times) - 1]

    smsc.subscribe(busy_then_free)
    [message] = smsc.inject_mt(text="push")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(smsc.run)
        await smsc.wait_settled([message.id])
        nursery.cancel_scope.cancel()
    assert message.state is MtState.DELIVERED and message.attempts == 3
    assert [round(t - times[0], 3) for t in times] == [0, RETRY_INTERVAL, 2 * RETRY_INTERVAL]
    states = [f["state"] for f in _kinds(tracer, Kind.SMSC_OUTCOME)]
    assert states == ["queued", "queued", "delivered"]
    # a toolkit that stays busy: MAX_ATTEMPTS attempts, then the failure is final
    stuck, _ = _smsc()
    stuck.subscribe(_busy)
    [again] = stuck.inject_mt(text="x")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stuck.run)
        await stuck.wait_settled([again.id])
        nursery.cancel_scope.cancel()
    assert again.state is MtState.FAILED and again.attempts == MAX_ATTEMPTS


async def _busy(tpdu: bytes) -> MtAnswer:
    return Answer(False, failure=0xD4)


async def test_cancelled_delivery_goes_back_to_the_queue() -> None:
    smsc, _ = _smsc()
    me = FakeMe()
    me.release = trio.Event()  # the ME never answers
    smsc.subscribe(me)
    [message] = smsc.inject_mt(text="stuck")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(smsc.run)
        await me.arrived.wait()
        assert message.state is MtState.DELIVERING
        nursery.cancel_scope.cancel()
    assert message.state is MtState.QUEUED


async def test_message_to_own_number_comes_back() -> None:
    smsc, _ = _smsc()
    me = FakeMe()
    smsc.subscribe(me)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(smsc.run)
        smsc.submit(SmsSubmit.for_text(ME, "note to self", mr=1)[0].encode(), origin=ME)
        await me.arrived.wait()
        back = decode_tpdu(me.got[0])
        assert isinstance(back, SmsDeliver) and back.text == "note to self" and str(back.originator) == ME
        nursery.cancel_scope.cancel()


def test_the_network_owns_an_smsc_at_its_service_centre_number() -> None:
    network = CellularNetwork()
    assert isinstance(network.smsc, Smsc)
    assert network.smsc.address == "+" + network.config.smsc


# --- the control interface -------------------------------------------------------------------------------------------


async def test_control_answers_and_refusals() -> None:
    smsc, tracer = _smsc()
    control = SmscControl(smsc)
    smsc.submit(SmsSubmit.for_text("+15557654321", "mo text", mr=11)[0].encode(), origin=ME)
    listed = await control.answer(b'{"op": "list-mo"}')
    assert listed["ok"] and listed["messages"][0]["text"] == "mo text" and listed["messages"][0]["mr"] == 11
    assert listed["texts"][0]["text"] == "mo text"
    sent = await control.answer(json.dumps({"op": "send-mt", "text": "hi", "from": "+15551112222"}).encode())
    assert sent["ok"] and sent["settled"] and sent["messages"][0]["state"] == "queued"
    status = await control.answer(b'{"op": "status"}')
    assert status == {
        "ok": True,
        "address": "+15550000000",
        "subscribed": False,
        "mo": 1,
        "mt": 1,
        "queued": 1,
        "outcomes": {},
    }
    changed = await control.answer(b'{"op": "outcome", "destination": "+15557654321", "status": 65}')
    assert changed["outcomes"] == {"+15557654321": 65}
    for line, error in [
        (b"not json", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"op": "fly"}', "unknown op"),
        (b'{"op": "send-mt", "hex": "0G"}', "not hex"),
        (b'{"op": "send-mt", "hex": "00"}', "TP-"),
        (b'{"op": "send-mt", "text": "x", "class": 4}', "class"),
        (b'{"op": "send-mt"}', "exactly one"),
        (b'{"op": "send-mt", "text": "x", "wait": -1}', "wait"),
        (b'{"op": "outcome"}', "destination"),
        (b"\xff", "UTF-8"),
    ]:
        answer = await control.answer(line)
        assert answer["ok"] is False and error in answer["error"], (line, answer)
    refused = [e for e in tracer.events if e.kind == Kind.SMSC_CONTROL and e.error]
    assert len(refused) == 10


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_REQUESTS = st.fixed_dictionaries(
    {"op": st.sampled_from(["status", "send-mt", "list-mo", "list-mt", "outcome", "x"])},
    optional={k: _JSON for k in ("text", "hex", "data", "from", "class", "pid", "alphabet", "port", "wait")}
    | {"destination": _JSON, "status": _JSON},
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(_REQUESTS.map(lambda r: json.dumps(r).encode()), st.binary(max_size=60)))
def test_control_answers_any_line_without_raising(line: bytes) -> None:
    smsc, _ = _smsc()

    async def ask() -> dict[str, object]:
        with trio.fail_after(5):  # no request may hang: a send-mt with "wait" and no ME times out at its wait
            return await SmscControl(smsc).answer(line.replace(b'"wait"', b'"w"'))

    answer = trio.run(ask)
    assert isinstance(answer["ok"], bool)
    assert answer["ok"] or isinstance(answer["error"], str)


async def test_deeply_nested_json_is_refused() -> None:
    smsc, _ = _smsc()
    answer = await SmscControl(smsc).answer(b"[" * 50000 + b"]" * 50000)
    assert answer == {"ok": False, "error": "not JSON: nested too deeply"}
    answer = await SmscControl(smsc).answer(b'{"op": "send-mt", "text": "x", "wait": NaN}')
    assert answer["ok"] is False and "wait" in answer["error"]


async def test_control_socket_send_mt_waits_for_the_me() -> None:
    smsc, tracer = _smsc()
    me = FakeMe(Answer(True))
    smsc.subscribe(me)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(smsc.run)
        host, port = await nursery.start(serve_control, smsc, "127.0.0.1", 0)
        assert host == "127.0.0.1"
        answer = await request(host, port, {"op": "send-mt", "text": "over the socket", "wait": 5})
        assert answer["ok"] and answer["settled"] and answer["messages"][0]["state"] == "delivered"
        assert decode_tpdu(me.got[0]).text == "over the socket"  # type: ignore[union-attr]
        # an overlong line is refused and the connection stays usable
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"x" * 70000 + b"\n" + b'{"op": "status"}\n')
        data = b""
        while data.count(b"\n") < 2:
            data += await stream.receive_some(65536)
        first, second = data.split(b"\n")[:2]
        assert json.loads(first) == {"ok": False, "error": "request line too long"}
        assert json.loads(second)["subscribed"] is True
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert {"host": "127.0.0.1", "port": port} in _kinds(tracer, Kind.SMSC_CONTROL)


# --- bipsim sms: the CLI in its own process against a live control socket --------------------------------------------


async def _cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return await trio.run_process(
        [sys.executable, "-m", "bipsim", "sms", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
    )


async def _cli_here(*args: str) -> subprocess.CompletedProcess[bytes]:
    """`bipsim sms ARGS` through bipsim.cli.main in a thread of this process (the command is a short client: what
    a process adds is its start-up, which the runs through _cli keep covered), with its exit code and output."""
    import contextlib
    import io

    from bipsim.cli import main

    def run() -> subprocess.CompletedProcess[bytes]:
        out, err = io.StringIO(), io.StringIO()
        code: object = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(["sms", *args])
            except SystemExit as exc:
                code = exc.code
        returncode = code if isinstance(code, int) else 1
        return subprocess.CompletedProcess(args, returncode, out.getvalue().encode(), err.getvalue().encode())

    return await trio.to_thread.run_sync(run)


async def test_bipsim_sms_cli_against_a_live_smsc() -> None:
    smsc = Smsc("+15550000000")
    download_por = bytes.fromhex("027100000B0A")
    me = FakeMe(Answer(True, por=download_por, sw=0x9000))
    smsc.subscribe(me)
    smsc.submit(SmsSubmit.for_text("+15557654321", "from the modem", mr=4)[0].encode(), origin=ME)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(smsc.run)
        _, port = await nursery.start(serve_control, smsc, "127.0.0.1", 0)
        at = f"127.0.0.1:{port}"
        sent = await _cli("--connect", at, "send-mt", "--from", "+15551112222", "Grüße €")
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.decode().strip() == '2 delivered deliver from +15551112222: "Grüße €"'
        assert decode_tpdu(me.got[0]).text == "Grüße €"  # type: ignore[union-attr]
        listed = await _cli_here("--connect", at, "list-mo")
        assert listed.stdout.decode().strip() == '1 from +15550001234 to +15557654321: "from the modem"'
        download = (
            SmsDeliver(Address.parse("+1555"), NOW, pid=0x7F, dcs=0xF6, ud=b"\x02\x70\x00").encode().hex()
        )
        pushed = await _cli_here("--connect", at, "--json", "send-mt", "--hex", download)
        answer = json.loads(pushed.stdout)
        assert answer["messages"][0]["por"] == download_por.hex().upper()
        bad = await _cli("--connect", at, "send-mt", "--hex", "0011")
        assert bad.returncode == 1 and b"refused" in bad.stderr and b"Traceback" not in bad.stderr
        usage = await _cli("--connect", at, "send-mt")
        assert usage.returncode == 2 and b"Traceback" not in usage.stderr
        status = await _cli_here("--connect", at, "status")
        assert status.stdout.decode().strip() == "SMSC +15550000000: modem subscribed, 1 MO, 2 MT (0 queued)"
        me.answer = Answer(False, failure=0xD3, cause="SIM SMS storage full")
        failed = await _cli_here("--connect", at, "send-mt", "x")
        assert failed.returncode == 1 and b"RP-ERROR" in failed.stderr
        assert b"failed" in failed.stdout and b"SIM SMS storage full" in failed.stdout
        nursery.cancel_scope.cancel()
    gone = await _cli("--connect", at, "status")
    assert gone.returncode == 1 and b"cannot reach" in gone.stderr


# --- the SMSC in a running `bipsim cp`, with the modem's 27.005 commands on a pty ------------------------------------


class _Pty:
    """The DTE end of the CP's line: writes commands, reads until a given text arrives (with a deadline)."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        os.set_blocking(self.master, False)
        self.seen = b""

    def until(self, text: bytes, timeout: float = 20.0) -> bytes:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            assert time.monotonic() < deadline, f"no {text!r} on the line; it had {self.seen[-400:]!r}"
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                self.seen += os.read(self.master, 4096)
        return self.seen

    def command(self, line: str, expect: bytes = b"OK\r\n") -> bytes:
        self.seen = b""
        os.write(self.master, line.encode() + b"\r")
        return self.until(expect)

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


def test_a_running_cp_delivers_injected_sms_and_its_smsc_lists_the_modems() -> None:
    line = _Pty()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bipsim",
            "cp",
            "--port",
            os.ttyname(line.slave),
            "--sms-listen",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        listening = process.stdout.readline()  # printed once the control socket is bound
        assert listening.startswith("sms listening on 127.0.0.1:"), listening
        at = listening.split()[-1]

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "bipsim", "sms", "--connect", at, *args],
                capture_output=True,
                text=True,
                timeout=60,
            )

        deadline = time.monotonic() + 30
        while b"OK" not in line.command("AT", b"\r\n"):
            assert time.monotonic() < deadline
        line.command("AT+CMGF=1")
        line.command("AT+CNMI=2,2,0,0,0")  # 27.005 3.4.1: MT messages straight to the TE as +CMT
        sent = cli("send-mt", "--from", "+15551112222", "Hello from the network")
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.startswith("1 delivered deliver from +15551112222")
        shown = line.until(b"Hello from the network")
        assert b'+CMT: "+15551112222"' in shown
        # MO in text mode: the prompt, the text, Ctrl-Z; the SMSC has it with the TP-MR the modem answered
        line.command('AT+CMGS="+15557654321"', b"> ")
        answer = line.command("Hi from the host\x1a", b"OK\r\n")
        mr = int(answer.split(b"+CMGS: ")[1].split(b"\r")[0])
        listed = cli("--json", "list-mo")
        [mo] = json.loads(listed.stdout)["messages"]
        assert (mo["destination"], mo["text"], mo["mr"]) == ("+15557654321", "Hi from the host", mr)
    finally:
        process.terminate()
        try:
            process.communicate(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            line.close()


# --- an OTA push from the network: the SMSC, the modem's 27.005 set, the card's PoR, the session it triggers ---------


def test_an_ota_push_injected_at_the_smsc_reaches_the_card_and_the_por_comes_back(tmp_path: Path) -> None:
    from bipsim.scenarios.base import check_ota_completed
    from bipsim.scenarios.harness import EventQuery, Harness, RunConfig, run_processes
    from bipsim.scenarios.sms_trigger import trigger_tpdu

    answers: list[dict[str, object]] = []
    tpdu = trigger_tpdu()

    async def inject(harness: Harness) -> None:
        # the control socket's port, chosen by the system (port 0): the CP traces it once it is bound
        bound = await harness.wait_for_event(
            "cp", EventQuery(Kind.SMSC_CONTROL, lambda f: "port" in f), timeout=25
        )
        assert bound is not None, "the CP's SMSC control socket never listened"
        port = int(bound["fields"]["port"])
        # the card takes envelopes once it had its TERMINAL PROFILE: wait for the event that proves it
        await harness.wait_for_event("cp", EventQuery(Kind.CAT_TERMINAL_PROFILE), timeout=25)
        answers.append(await request("127.0.0.1", port, {"op": "send-mt", "hex": tpdu.hex(), "wait": 20}))

    config = RunConfig(
        session="sms-smsc",
        bearer="ap-proxy",
        profile={"trigger": "sms"},
        cp_args=["--sms-listen", "127.0.0.1:0"],
        during=inject,
    )
    run = run_processes(config, tmp_path)
    [answer] = answers
    [message] = answer["messages"]  # type: ignore[index]
    assert message["data_download"] and message["state"] == "delivered", message
    por = bytes.fromhex(message["por"])
    assert por and message["sw"][:2] in ("90", "91"), message
    # the PoR the SMSC recorded is the card's answer to the SMS-PP DOWNLOAD envelope, as the CP traced it
    outcome = [e for e in run.events if e.kind == Kind.SMSC_OUTCOME]
    assert [e.hex for e in outcome] == [por.hex().upper()]
    [offered] = [e for e in run.events if e.kind == Kind.SMSC_MT]
    assert offered.hex == tpdu.hex().upper()
    check_ota_completed(run)  # the push opened the card's BIP channel and the admin session ran to its end


@pytest.mark.needs("tshark")
def test_the_pcap_of_an_smsc_trace_decodes_as_gsm_sms_in_both_directions(tmp_path: Path) -> None:
    from bipsim.trace.pcap import export_pcap

    smsc, tracer = _smsc()
    smsc.submit(
        SmsSubmit.for_text("+15557654321", "Привет", mr=9, status_report_request=True)[0].encode(), origin=ME
    )
    smsc.inject_mt(text="Hello {€} " * 20, originator="+15551112222")
    smsc.subscribe(FakeMe())
    while (message := smsc.take_next()) is not None:
        smsc.settle(message, Answer(True))
    path = tmp_path / "smsc.pcap"
    assert export_pcap(tracer.events, path) == 4
    malformed = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "_ws.malformed || _ws.expert.severity == error"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert malformed.returncode == 0 and malformed.stdout.strip() == ""
    fields = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|"]
        + [
            "-e",
            "gsm_sms.tp-mti",
            "-e",
            "gsm_sms.tp-mr",
            "-e",
            "gsm_sms.udh.mm.msg_part",
            "-e",
            "gsm_sms.sms_text",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    rows = [line.split("|") for line in fields]
    # the SUBMIT up, the status report down (TP-MTI 2 read as a report only in that direction), the two parts down
    assert [r[0] for r in rows] == ["1", "2", "0", "0"]
    assert rows[0][1] == "9" and rows[0][3] == "Привет" and rows[1][1] == "9"
    assert [r[2] for r in rows[2:]] == ["1", "2"]
    assert (rows[2][3] + rows[3][3]).startswith("Hello {€} Hello")
