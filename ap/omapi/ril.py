"""The RIL layer of the AP's OMAPI stack (docs/protocols.md, "OMAPI on the AP"): open, transmit and close on a
card's logical channels through 3GPP TS 27.007 `+CCHO` (8.45), `+CGLA` (8.43) and `+CCHC` (8.46) on DLC 1, the
card's presence through `+CPIN?` (8.3), and the slot through the CP's `%SLOT` (docs/protocols.md, "Vendor extension
on DLC 1"). It maps the modem's `+CME ERROR`s (27.007 9.2) to the OMAPI exceptions and traces each request."""

from __future__ import annotations

from typing import Protocol

import trio

from bipsim.ap.omapi.errors import (
    OmapiIllegalStateException,
    OmapiIOException,
    OmapiNoSuchElementException,
)
from bipsim.ap.slot_lock import slot_lock
from bipsim.link.at_chat import AtResponse, AtTimeout
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer

# 27.007 9.2.1 numeric errors the RIL tells apart
CME_NOT_ALLOWED = 3  # +CCHO: the SELECT was refused (69 82, 69 85, 69 99)
CME_SIM_NOT_INSERTED = 10
CME_MEMORY_FULL = 20  # +CCHO: MANAGE CHANNEL answered 68 81, no logical channel left
CME_INVALID_INDEX = 21  # +CGLA/+CCHC with a session the modem does not know
CME_NOT_FOUND = 22  # +CCHO: the SELECT of the AID failed (6A82)
CME_SIM_BUSY = 14  # the card is still starting (27.007 9.2.1: a transient state, asked again)
SIM_BUSY_RETRY = 0.2
SIM_BUSY_ATTEMPTS = 50

COMMAND_TIMEOUT = 10.0
MAX_GET_RESPONSE = 64  # GET RESPONSE rounds for one APDU at most (a card that says 61 xx for ever)


class AtPort(Protocol):
    """What the RIL needs of DLC 1: the AP's AT chat (bipsim.link.at_chat.AtChat) or a test's fake."""

    async def command(
        self, line: str, *, timeout: float | None = None, step: str | None = None
    ) -> AtResponse: ...


class NoChannelAvailable(Exception):
    """The card has no logical channel left (OMAPI: openLogicalChannel returns null)."""


def reader_name(slot: int) -> str:
    """SIM1, SIM2...: the OMAPI reader name of card slot `slot` (Android's UICC terminal names)."""
    return f"SIM{slot}"


def _payload(response: AtResponse, prefix: str) -> str:
    for line in response.lines:
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    # 27.007 8.45 gives +CCHO's <sessionid> without a prefix; some modems add one
    return response.lines[0].strip() if response.lines else ""


class SeRil:
    """The RIL's secure-element requests over one AT port. `slots` is the number of card slots the CP has; with
    more than one, +CPIN? and +CCHO for another slot than 1 are sent after `AT%SLOT=<n>` and followed by `AT%SLOT=1`."""

    def __init__(self, port: AtPort, *, slots: int = 1, tracer: Tracer = NULL_TRACER) -> None:
        self.port = port
        self.slots = slots
        self.tracer = tracer
        self._lock = trio.Lock()  # a slot selection and the command it is for go together

    def _trace(self, slot: int, op: str, summary: str, step: str | None, **facts: object) -> None:
        self.tracer.emit(
            Actor.AP,
            Actor.CP,
            Layer.APP,
            f"RIL: {summary}",
            step=step,
            kind=Kind.OMAPI_RIL,
            fields={"layer": "RIL", "op": op, "reader": reader_name(slot), **facts},
        )

    async def _command(self, slot: int, line: str, step: str | None, *, select: bool = True) -> AtResponse:
        """`line` for the card in `slot`. +CPIN and +CCHO address the slot the line chose, so with several slots
        they are sent after `AT%SLOT=<slot>`, and the line goes back to slot 1 afterwards: the rest of the AP
        (the IMSI read, AT%SMSPP) means the toolkit card of slot 1. +CGLA and +CCHC follow their session's slot
        (docs/protocols.md, "Card slots and card presence on DLC 1"): `select` False."""
        if not select:
            return await self._busy_retried(line, step)
        # the line's slot is every user's of the line (ap/slot_lock.py): held from the choice to the way back
        async with slot_lock(self.port):
            return await self._on_slot(slot, line, step)

    async def _on_slot(self, slot: int, line: str, step: str | None) -> AtResponse:
        choose = self.slots > 1 and slot != 1
        if choose:
            answer = await self._send(f"AT%SLOT={slot}", None)
            if not answer.ok:
                raise OmapiIOException(f"the modem refused slot {slot}: {answer.final}")
        try:
            answer = await self._busy_retried(line, step)
        finally:
            if choose:
                with trio.CancelScope(shield=True):
                    await self._send("AT%SLOT=1", None)
        return answer

    async def _busy_retried(self, line: str, step: str | None) -> AtResponse:
        for _ in range(SIM_BUSY_ATTEMPTS):
            answer = await self._send(line, step)
            if answer.cme_error != CME_SIM_BUSY:
                break
            await trio.sleep(SIM_BUSY_RETRY)
        return answer

    async def _send(self, line: str, step: str | None) -> AtResponse:
        try:
            return await self.port.command(line, timeout=COMMAND_TIMEOUT, step=step)
        except AtTimeout as exc:
            raise OmapiIOException(f"no answer from the modem to {line.split('=')[0]}: {exc}") from None

    async def discover_slots(self) -> int:
        """How many card slots the CP has: `AT%SLOTS?` lists `<slot>,<present>` pairs (docs/protocols.md, "Card
        slots and card presence on DLC 1"); a CP that does not know the command has one slot."""
        async with self._lock:
            try:
                answer = await self._send("AT%SLOTS?", None)
            except OmapiIOException:
                return 1
        text = _payload(answer, "%SLOTS:") if answer.ok else ""
        numbers = [part.strip() for part in text.split(",")]
        if len(numbers) < 2 or len(numbers) % 2 or not all(n.isdigit() for n in numbers):
            return 1
        return max(int(n) for n in numbers[0::2])

    async def card_present(self, slot: int, *, step: str | None = None) -> tuple[bool, str]:
        """Whether slot `slot` holds a card (+CPIN? answered; +CME ERROR: 10 is no card), and why."""
        async with self._lock:
            try:
                answer = await self._command(slot, "AT+CPIN?", step)
            except OmapiIOException as exc:
                return False, exc.reason
        if answer.ok:
            return True, _payload(answer, "+CPIN:") or "card present"
        if answer.cme_error == CME_SIM_NOT_INSERTED:
            return False, "no card in the slot (+CME ERROR: 10)"
        return False, f"card state unknown ({answer.final})"

    async def open_channel(
        self, slot: int, aid: bytes, *, step: str | None = None, ril_step: str | None = None
    ) -> int:
        """+CCHO: a logical channel to `aid` with it selected; returns the modem's session id. `ril_step` labels
        the RIL's own event, `step` the AT command that goes to the card."""
        self._trace(
            slot, "open", f"open logical channel to {aid.hex().upper()}", ril_step, aid=aid.hex().upper()
        )
        async with self._lock:
            answer = await self._command(slot, f'AT+CCHO="{aid.hex().upper()}"', step)
        if answer.ok:
            text = _payload(answer, "+CCHO:")
            if not text.isdigit():
                raise OmapiIOException(f"the modem's +CCHO answer holds no session id: {text!r}")
            return int(text)
        code = answer.cme_error
        if code == CME_NOT_FOUND:
            raise OmapiNoSuchElementException(
                f"applet {aid.hex().upper()} not found on the card ({answer.final})"
            )
        if code == CME_NOT_ALLOWED:
            raise OmapiNoSuchElementException(
                f"applet {aid.hex().upper()} cannot be selected ({answer.final})"
            )
        if code == CME_MEMORY_FULL:
            raise NoChannelAvailable(f"the card has no logical channel left ({answer.final})")
        if code == CME_SIM_NOT_INSERTED:
            raise OmapiIOException(f"no card in {reader_name(slot)} ({answer.final})")
        raise OmapiIOException(f"the modem could not open a channel: {answer.final}")

    async def transmit(self, slot: int, session: int, apdu: bytes, *, step: str | None = None) -> bytes:
        """+CGLA: `apdu` on the session's channel (the modem sets the channel bits of CLA); returns the R-APDU."""
        line = f'AT+CGLA={session},{2 * len(apdu)},"{apdu.hex().upper()}"'
        async with self._lock:
            answer = await self._command(slot, line, step, select=False)
        if answer.ok:
            text = _payload(answer, "+CGLA:")
            _, _, quoted = text.partition(",")
            try:
                response = bytes.fromhex(quoted.strip().strip('"'))
            except ValueError:
                raise OmapiIOException(f"the modem's +CGLA answer is not hex: {text!r}") from None
            if len(response) < 2:
                raise OmapiIOException("the modem's +CGLA answer has no status word")
            return response
        if answer.cme_error == CME_SIM_NOT_INSERTED:
            raise OmapiIOException(f"the card in {reader_name(slot)} is gone ({answer.final})")
        if answer.cme_error == CME_INVALID_INDEX:
            raise OmapiIllegalStateException(f"the modem no longer knows channel session {session}")
        raise OmapiIOException(f"the modem could not send the APDU: {answer.final}")

    async def exchange(self, slot: int, session: int, command: bytes, *, step: str | None = None) -> bytes:
        """One APDU with the transport's answers handled below the API (OMAPI 6.7.5: "all protocol related
        responses are handled inside the API"): 6C xx sends the command again with Le = xx, 61 xx fetches the
        rest with GET RESPONSE (ISO/IEC 7816-4 5.3.4, T=0), so the caller sees the applet's whole answer. Used by
        the OMAPI Channel and by the Framework's rule load alike."""
        answer = await self.transmit(slot, session, command, step=step)
        if len(answer) == 2 and answer[0] == 0x6C:
            header = command[:4]
            body = command[4:]
            if len(body) > 1 and len(body) == 1 + body[0]:  # case 3: add Le
                command = command + answer[-1:]
            elif len(body) == 1 + body[0] + 1:  # case 4: replace Le
                command = command[:-1] + answer[-1:]
            else:  # case 1/2: Le is the one byte after the header
                command = header + answer[-1:]
            answer = await self.transmit(slot, session, command, step=step)
        data = answer[:-2]
        for _ in range(MAX_GET_RESPONSE):
            if len(answer) < 2 or answer[-2] != 0x61:
                break
            get_response = bytes((0x00, 0xC0, 0x00, 0x00, answer[-1]))
            answer = await self.transmit(slot, session, get_response, step=step)
            data += answer[:-2]
        return data + answer[-2:]

    async def close_channel(self, slot: int, session: int, *, step: str | None = None) -> None:
        """+CCHC: closes the session's channel; an error is raised as IOException after the channel counts as
        closed on our side (the card's channel is gone with a removed card anyway)."""
        self._trace(slot, "close", f"close logical channel session {session}", None, session=session)
        async with self._lock:
            answer = await self._command(slot, f"AT+CCHC={session}", step, select=False)
        if not answer.ok:
            raise OmapiIOException(f"the modem could not close session {session}: {answer.final}")
