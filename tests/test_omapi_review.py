"""The AP's OMAPI side, points of a review (issue 19): usage errors exit 2, reader names in errors, no `reader None`
line, the Framework's rule load with 61 xx / 6C xx, stack.ready after stop(), an AP without a modem session
answering at once, openBasicChannel's null with its reason. Against the fake modem of tests/test_omapi_layers.py,
and `bipsim omapi` as a process where its output is the point."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import trio

from bipsim.ap.omapi.control import ControlServer
from bipsim.ap.omapi.errors import OmapiIllegalStateException, OmapiNoSuchElementException
from bipsim.ap.omapi.service import BASIC_CHANNEL_REASON
from bipsim.ap.omapi.stack import OmapiOptions, OmapiStack
from bipsim.trace.kinds import Kind
from tests.test_omapi_layers import APP, ECHO, GRANTED, FakeCard, FakeModem, started

BIPSIM = [sys.executable, "-m", "bipsim", "omapi"]


@pytest.mark.parametrize(
    "args",
    [
        ["--aid", "zz"],
        ["--apdu", "00A4XYZ"],
        ["--app-hash", "not-hex"],
        ["--connect", "no-port-here"],
    ],
    ids=["aid", "apdu", "app-hash", "connect"],
)
def test_usage_errors_exit_2_as_the_help_says(args: list[str]) -> None:
    done = subprocess.run(
        [*BIPSIM, "--connect", "127.0.0.1:9", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr
    assert ("not hex" in done.stderr) or ("HOST:PORT" in done.stderr), done.stderr


async def test_an_unknown_reader_is_named_among_the_reader_names() -> None:
    service, _ = await started(FakeModem({1: FakeCard(), 2: FakeCard()}))
    with pytest.raises(OmapiNoSuchElementException) as caught:
        await service.se_service(APP).reader("SIM3")
    assert caught.value.reason == "no reader 'SIM3' (readers: ['SIM1', 'SIM2'])"


class SegmentingCard(FakeCard):
    """An ARA-M that answers GET DATA [All] as a T=0 card may: 6C xx first (the wrong Le), or 61 xx and the data
    by GET RESPONSE."""

    how: str = "61"

    def ara_m(self, apdu: bytes) -> bytes:
        assert self.rules is not None
        if apdu[:4] == bytes.fromhex("80CAFF40"):
            size = min(len(self.rules), 250)
            if self.how == "6C" and apdu[4:] != bytes((size,)):
                return bytes((0x6C, size))
            if self.how == "61":
                self._next = self.rules[:size]  # held for GET RESPONSE
                return bytes((0x61, size))
            return self.rules[:size] + b"\x90\x00"
        if apdu[:4] == bytes.fromhex("00C00000"):
            part, self._next = self._next, b""
            return part + b"\x90\x00"
        return super().ara_m(apdu)


@pytest.mark.parametrize("how", ["61", "6C"])
async def test_the_rule_load_handles_61xx_and_6Cxx_as_transmit_does(how: str) -> None:
    card = SegmentingCard()
    card.how = how
    modem = FakeModem({1: card})
    service, _ = await started(modem)
    record = service.framework.cards[1]
    assert record.enforce_carrier_privilege is True, record.reason
    assert record.rules is not None and record.rules.decide(ECHO, GRANTED).granted
    size = len(card.rules or b"")
    # the GET RESPONSE of 61 xx, or GET DATA again with the Le of 6C xx, on the ARA-M's channel
    follow_up = "00C00000" if how == "61" else "80CAFF40"
    assert f'AT+CGLA=1,10,"{follow_up}{size:02X}"' in modem.lines


async def test_stop_makes_requests_wait_for_the_next_start() -> None:
    modem = FakeModem({1: FakeCard()})
    stack = OmapiStack(OmapiOptions(slots=1))
    await stack.start(modem)
    assert stack.ready.is_set()
    stack.stop()
    assert not stack.ready.is_set() and stack.service is None
    await stack.start(modem)
    assert stack.ready.is_set()


async def test_without_a_modem_session_the_ap_answers_at_once() -> None:
    server = ControlServer(OmapiStack(OmapiOptions(slots=1)))  # never started: no modem session
    started_at = trio.current_time()
    answer = await server.answer(b'{"op": "status", "wait": 0}')
    assert answer == {"ok": False, "error": "no modem session: the OMAPI service has not started"}
    assert trio.current_time() - started_at < 1.0
    assert "wait" in (await server.answer(b'{"op": "status", "wait": "x"}'))["error"]


async def test_the_client_status_without_a_modem_session_says_so_at_once() -> None:
    server = ControlServer(OmapiStack(OmapiOptions(slots=1)))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        began = time.monotonic()
        done = await trio.run_process(
            [*BIPSIM, "--connect", f"127.0.0.1:{port}", "--status"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        took = time.monotonic() - began
        nursery.cancel_scope.cancel()
    assert done.returncode == 1
    assert "no modem session" in done.stderr.decode(), done.stderr
    assert took < 30  # not the 60 s of a start-up wait


async def test_no_reader_line_when_the_chooser_picks_nothing() -> None:
    modem = FakeModem({1: FakeCard(), 2: FakeCard()})
    stack = OmapiStack(OmapiOptions(slots=2, chooser="cancel"))
    await stack.start(modem)
    server = ControlServer(stack)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        done = await trio.run_process(
            [*BIPSIM, "--connect", f"127.0.0.1:{port}", "--apdu", "00080000"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        nursery.cancel_scope.cancel()
    assert done.returncode == 1
    assert b"reader None" not in done.stdout and done.stdout == b"", done.stdout
    assert done.stderr.decode().startswith("bipsim omapi: NoSuchElementException: no reader chosen")


async def test_open_basic_channel_is_null_with_its_reason() -> None:
    modem = FakeModem({1: FakeCard()})
    service, tracer = await started(modem)
    session = await (await service.se_service(APP).reader("SIM1")).open_session()
    before = list(modem.lines)
    assert await session.open_basic_channel(ECHO) is None
    assert modem.lines == before  # nothing goes to the modem: the basic channel is its own
    calls = [e for e in tracer.events if e.kind == Kind.OMAPI_CALL and e.field("api") == "openBasicChannel"]
    assert {e.field("result") for e in calls} == {"null"}
    assert BASIC_CHANNEL_REASON in [e.field("reason") for e in calls]
    await session.close()
    with pytest.raises(OmapiIllegalStateException):
        await session.open_basic_channel(None)
    # through the control socket: the answer says why
    server = ControlServer(stack_of(service))
    answer = await server.run({"op": "run", "hash": GRANTED.hex(), "aid": ECHO.hex(), "basic": True})
    assert answer["ok"] is False and answer["channel"] is None
    assert BASIC_CHANNEL_REASON in answer["reason"]


def stack_of(service: object) -> OmapiStack:
    stack = OmapiStack(OmapiOptions(slots=1))
    stack.service = service  # type: ignore[assignment]
    stack.ready.set()
    return stack


async def test_no_ara_m_and_no_arf_fails_the_load_naming_both() -> None:
    modem = FakeModem({1: FakeCard(rules=None)})
    service, _ = await started(modem)
    record = service.framework.cards[1]
    assert record.enforce_carrier_privilege is False and record.source is None
    assert record.reason.startswith("no ARA-M (") and "and no ARF (" in record.reason, record.reason
    # GP SEAC's order: the ARA-M's SELECT first, then the PKCS#15 application's
    assert modem.lines[1:3] == ['AT+CCHO="A00000015141434C00"', 'AT+CCHO="A000000063504B43532D3135"']
