"""The CP's BIP runtime (trio): the card driver's FETCH loop, the sans-IO gateway, and one task per channel link.

One task owns the card (APDUs are strictly sequential); link tasks post events to it through a memory channel.
It labels the patent steps it observes on the CP side (docs/protocols.md, "The patent's steps"; bipsim.trace.steps):
the labels of embodiment 1 with the own-stack bearer, of embodiment 2 with the AP proxy.

Errors are data: an exception in one channel's task (its bearer, its stream) ends that channel only. The card gets
what TS 102 223 says for a link that went away (a Channel Status event "link dropped", section 7.5.11, or the
OPEN CHANNEL's failure while the link was being set up), the card's CLOSE CHANNEL releases it, and an app.error
trace event names the exception; the CP and its other channels go on. An exception in the card loop itself (a card
answering a FETCH with an error) is traced the same way and the loop goes on at the next poll.

A UDP channel keeps its datagrams apart: the next datagram goes to the gateway only once the card has read the
last one (TS 102 223 6.4.29: one RECEIVE DATA unit per datagram). A bearer without `serves_uicc_server_mode` (the AP
proxy) answers the UICC server mode's OPEN CHANNEL with 0x3A "transport level not available" (8.12.11). A bearer
with `dns_servers` gives them to the gateway for the OPEN CHANNEL that asks for DNS servers (8.6, 8.104).

A card that goes away (CardRemoved out of the card driver, uicc/transport.py) ends the run: every channel ends
(the gateway's on_card_gone; an app.event `channel_ended` per channel, its link closed on the bearer) and run()
returns, so that the modem can start the card again, TERMINAL PROFILE first, once it is back (cp/card_slot.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from bipsim.cp.bearer import Bearer, LinkError
from bipsim.cp.bip_gateway import (
    Action,
    BearerClose,
    BearerOpen,
    BearerSend,
    BipGateway,
    EnvelopeEvent,
    HandToHost,
    LinkStatus,
    RefreshCard,
    SendEnvelope,
    SendTerminalResponse,
    SendTimerExpiration,
    SubmitShortMessage,
)
from bipsim.cp.card_driver import CardDriver
from bipsim.cp.local_info import location_information
from bipsim.cp.toolkit_sms import (
    MoControlResult,
    mo_sms_control_answer,
    mo_sms_control_envelope,
    mo_sms_control_supported,
)
from bipsim.cp.toolkit_timers import BUSY_RETRY_SECONDS, SW_BUSY, TimerChange
from bipsim.net.sms_pdu import encode_sca
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.cat import (
    BipErrorCause,
    CommandType,
    GeneralResult,
    OpenChannel,
    ProactiveCommand,
    Tag,
    TerminalResponse,
    TransportProtocol,
)
from bipsim.uicc.transport import CardRemoved

STEP_KEYS: dict[str, tuple[str, str]] = {
    "fetch_open": ("S401", "S701"),
    "tr_open": ("S402", "S702"),
    "status_up": ("S406", "S706"),
    "fetch_send": ("S407", "S707"),
    "send": ("S408", "S708"),
    "data_available": ("S410", "S712"),
    "fetch_receive": ("S411", "S713"),
    "tr_receive": ("S412", "S714"),
    "fetch_close": ("S413", "S715"),
    "tr_close": ("S414", "S716"),
}
FETCH_KEYS = {
    CommandType.OPEN_CHANNEL: "fetch_open",
    CommandType.SEND_DATA: "fetch_send",
    CommandType.RECEIVE_DATA: "fetch_receive",
    CommandType.CLOSE_CHANNEL: "fetch_close",
}
TR_KEYS = {
    CommandType.OPEN_CHANNEL: "tr_open",
    CommandType.SEND_DATA: "send",
    CommandType.RECEIVE_DATA: "tr_receive",
    CommandType.CLOSE_CHANNEL: "tr_close",
}


# Every link event names the channel's generation: a channel id the card closed and opened again is a new link,
# and late events of the old one (a read that failed as the line went away) must not touch the new one.


@dataclass(frozen=True)
class LinkUp:
    channel: int
    generation: int = 0


@dataclass(frozen=True)
class LinkFailed:
    channel: int
    error: LinkError
    generation: int = 0


@dataclass(frozen=True)
class LinkData:
    channel: int
    data: bytes
    generation: int = 0


@dataclass(frozen=True)
class LinkDown:
    channel: int
    generation: int = 0


@dataclass(frozen=True)
class Wake:
    """Not a link's event: the card may have a proactive command now (a host's TERMINAL RESPONSE or ENVELOPE
    through +CUSATT/+CUSATE answered 91 xx), so the loop fetches at once instead of at the next poll."""

    channel: int = 0
    generation: int = 0


@dataclass(frozen=True)
class TimerFired:
    """A toolkit timer (TIMER MANAGEMENT) ran out; `start` tells its start from a later one of the same timer."""

    timer: int
    start: int
    channel: int = 0
    generation: int = 0


@dataclass(frozen=True)
class TimerRetry:
    """A TIMER EXPIRATION envelope the card answered 93 00 (busy), due again (TS 102 223 section 7.5)."""

    action: SendTimerExpiration
    channel: int = 0
    generation: int = 0


LinkEvent = LinkUp | LinkFailed | LinkData | LinkDown | Wake | TimerFired | TimerRetry

RP_INVALID_MANDATORY_INFORMATION = (
    96  # TS 24.011 section 8.2.5.4: an SMSC that refused the card's TPDU as malformed
)

DISCONNECT_TIME = 5.0  # seconds the links of a card that went away get to close before they are abandoned


class BipService:
    """Runs the card's BIP sessions over `bearer`. `sessions_done` counts channels closed by the card."""

    def __init__(
        self,
        driver: CardDriver,
        bearer: Bearer,
        *,
        tracer: Tracer = NULL_TRACER,
        gateway: BipGateway | None = None,
        poll_interval: float = 0.5,
    ) -> None:
        self.driver = driver
        self.bearer = bearer
        self.tracer = tracer
        self.gateway = gateway or BipGateway()
        dns = getattr(bearer, "dns_servers", None)
        if isinstance(dns, tuple):
            self.gateway.dns_servers = dns
        self.poll_interval = poll_interval
        self.sessions_done = 0
        self.session_finished = trio.Event()
        self.results: list[tuple[str, int, bytes]] = []
        self._events_tx, self._events_rx = trio.open_memory_channel[LinkEvent](256)
        self._held: LinkEvent | None = None  # taken from the queue by _absorb_data, next for the loop
        self._streams: dict[int, trio.abc.Stream] = {}
        self._drained: dict[int, trio.Event] = {}
        # bytes of each link (channel, generation) read and sent as LinkData but not yet in the gateway's Rx buffer:
        # the reader counts them, or it would read the same free space twice
        self._queued: dict[tuple[int, int], int] = {}
        self._generation: dict[int, int] = {}
        # one link set-up at a time per channel id: an old attempt still waiting for the proxy finishes (and is
        # torn down) before the new one asks for the same data DLC
        self._connecting: dict[int, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        self._waiting: dict[int, trio.CancelScope] = {}  # server-mode channels waiting for their client
        self._disconnecting = 0  # links whose close is under way
        self._all_closed = trio.Event()
        self._all_closed.set()
        driver.fetch_labeler = self._fetch_step
        # the host's toolkit (cp/usat_commands.py): takes a proactive command the gateway handed over (+CUSATP)
        self.host: Callable[[ProactiveCommand], Awaitable[None]] | None = None
        # the network's SMSC (net/smsc.py): takes a SEND SHORT MESSAGE's TPDU, returns its TP-MR
        self.sms_submit: Callable[[bytes], int] | None = None
        self.sms_centre = ""  # its number, the SC address MO short message control is told of
        self._timers: dict[int, trio.CancelScope] = {}  # the running toolkit timers' tasks
        # told when a TR of the modem's own ends the card's proactive session (the host's toolkit: +CUSATEND)
        self.session_ended: Callable[[], Awaitable[None]] | None = None

    def wake(self) -> None:
        """Fetch now: the card may have a command after a host's TR or envelope (it answered 91 xx)."""
        try:
            self._events_tx.send_nowait(Wake())
        except trio.WouldBlock:
            pass  # the loop has events queued: it runs soon anyway

    def step(self, key: str) -> str:
        return STEP_KEYS[key][0 if self.bearer.embodiment == 1 else 1]

    def _fetch_step(self, command: ProactiveCommand | None) -> str | None:
        key = FETCH_KEYS.get(command.type) if command is not None else None  # type: ignore[call-overload]
        return self.step(key) if key else None

    def _error(self, what: str, exc: BaseException, channel: int | None = None) -> None:
        """An app.error trace event: a task's exception, ended with its channel (or its loop iteration)."""
        fields: dict[str, object] = {"where": what, "error": repr(exc)}
        if channel is not None:
            fields["channel"] = channel
        self.tracer.emit(
            Actor.CP,
            Actor.UICC,
            Layer.APP,
            f"{what}{f' (channel {channel})' if channel is not None else ''}: {exc!r}",
            error=True,
            kind=Kind.APP_ERROR,
            fields=fields,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self.driver.start()
        except CardRemoved:
            # no card to start: its slot traced that (app.event card_removed) and the modem retries
            task_status.started()
            return
        except Exception as exc:
            # a card that cannot start has no BIP sessions; the modem goes on answering AT
            self._error("card start", exc)
            self.session_finished.set()
            task_status.started()
            return
        self.gateway.clock = trio.current_time  # toolkit timers count on the run's clock
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await self._card_loop()
            except CardRemoved as exc:
                await self._card_gone(exc)
                nursery.cancel_scope.cancel()  # link set-ups still waiting for a bearer end with the card

    async def _card_gone(self, exc: CardRemoved) -> None:
        """The card went away: every channel ends, each link is closed (at most DISCONNECT_TIME s each, at the
        same time), and late events of those links are dropped (their generation is old)."""
        for channel in sorted(self.gateway.channels):
            self.tracer.emit(
                Actor.CP,
                Actor.UICC,
                Layer.APP,
                f"channel {channel} ended: {exc.reason}",
                error=True,
                kind=Kind.APP_EVENT,
                fields={"event": "channel_ended", "channel": channel, "reason": exc.reason},
            )
        actions = self.gateway.on_card_gone()
        for channel in list(self._generation):
            self._generation[channel] += 1
        assert all(isinstance(action, BearerClose) for action in actions)
        # every stream is closed: those of the gateway's channels, and any of a link the card was already leaving
        pending = list(self._streams.items())
        self._streams.clear()
        for channel in list(self._drained):
            self._wake_reader(channel)
        if pending:
            with trio.move_on_after(DISCONNECT_TIME):
                async with trio.open_nursery() as closing_nursery:
                    for channel, stream in pending:
                        closing_nursery.start_soon(self._disconnect, channel, stream)

    async def _card_loop(self) -> None:
        while True:
            try:
                await self._card_step()
            except CardRemoved:
                raise  # not a card loop failure: the card is gone (run() ends its channels)
            except Exception as exc:
                self._error("card loop", exc)
                await trio.sleep(self.poll_interval)  # the next poll asks the card again

    async def _card_step(self) -> None:
        while self.driver.proactive_pending:
            command, _ = await self.driver.fetch()
            if command is None:
                continue  # a malformed command cannot be answered by number; the card times it out
            if command.type == CommandType.RECEIVE_DATA:
                self._absorb_data()
            await self._apply(self.gateway.on_command(command), command)
        event: LinkEvent | None = self._held
        self._held = None
        if event is None:
            try:
                # an event already queued (a link's data read while the card drained its buffer) is taken without
                # a cancel scope and a schedule point: the envelope it leads to is the loop's next one anyway
                event = self._events_rx.receive_nowait()
            except trio.WouldBlock:
                with trio.move_on_after(self.poll_interval):
                    event = await self._events_rx.receive()
        if event is None:
            await self.driver.poll()
            return
        await self._apply(self._on_event(event))

    def _absorb_data(self) -> None:
        """Before a RECEIVE DATA is answered: the data the link tasks read while the card was reading goes into
        the channel's Rx buffer now, so that this TR's channel data length counts it and the card reads on,
        instead of one Data Available envelope per read once the buffer ran dry (docs/protocols.md, "BIP
        channels"). Only the queue's head of such data is taken (events keep their order); the first event that
        needs more (an envelope, a drop, another generation) waits in `_held` for the loop."""
        while self._held is None:
            try:
                event = self._events_rx.receive_nowait()
            except trio.WouldBlock:
                return
            if not (
                isinstance(event, LinkData)
                and event.generation == self._generation.get(event.channel, 0)
                and self.gateway.absorb(event.channel, event.data)
            ):
                self._held = event
            else:
                self._arrived(event)

    def _arrived(self, event: LinkData) -> None:
        """A LinkData left the queue (given to the gateway, or dropped as stale): no longer on its way."""
        key = (event.channel, event.generation)
        left = self._queued.get(key, 0) - len(event.data)
        if left > 0:
            self._queued[key] = left
        else:
            self._queued.pop(key, None)

    def _on_event(self, event: LinkEvent) -> list[Action]:
        if isinstance(event, LinkData):
            self._arrived(event)
        if isinstance(event, Wake):
            return []  # the loop fetches whatever the card has pending
        if isinstance(event, TimerFired):
            return self.gateway.on_timer_expired(event.timer, event.start)
        if isinstance(event, TimerRetry):
            return [event.action]
        if event.generation != self._generation.get(event.channel, 0):
            return []  # an event of a link the card has since closed
        if isinstance(event, LinkUp):
            return self.gateway.on_link_established(event.channel)
        if isinstance(event, LinkFailed):
            self.results.append((event.error.reason, event.error.general, event.error.additional))
            return self.gateway.on_link_failed(event.channel, event.error.general, event.error.additional)
        if isinstance(event, LinkData):
            return self.gateway.on_data(event.channel, event.data)
        return self.gateway.on_link_dropped(event.channel)

    async def _apply(self, actions: list[Action], command: ProactiveCommand | None = None) -> None:
        for action in actions:
            if isinstance(action, SendTerminalResponse):
                await self._terminal_response(action.response)
            elif isinstance(action, SendEnvelope):
                step = None
                if action.event is EnvelopeEvent.DATA_AVAILABLE:
                    step = self.step("data_available")
                elif action.link is LinkStatus.ESTABLISHED:
                    step = self.step("status_up")
                await self.driver.envelope(action.envelope, action.summary, step=step)
                self._wake_reader(action.channel)
            elif isinstance(action, BearerOpen):
                assert self._nursery is not None
                generation = self._generation.get(action.channel, 0) + 1
                self._generation[action.channel] = generation
                self._nursery.start_soon(self._link, action.channel, action.request, generation)
            elif isinstance(action, BearerSend):
                await self._send(action.channel, action.data)
            elif isinstance(action, HandToHost):
                await self._to_host(action.command)
            elif isinstance(action, SubmitShortMessage):
                await self._apply(await self._controlled_submit(action))
            elif isinstance(action, TimerChange):
                self._set_timer(action)
            elif isinstance(action, RefreshCard):  # the modem's own REFRESH (cp/refresh.py)
                response = await self.driver.refresh(action.plan)
                if response is not None:
                    await self._terminal_response(response)
            elif isinstance(action, SendTimerExpiration):
                _, sw = await self.driver.envelope(
                    action.envelope, f"ENVELOPE: TIMER EXPIRATION (timer {action.timer})"
                )
                self._expiry_answered(action, sw)
            elif isinstance(action, BearerClose):
                waiting = self._waiting.pop(action.channel, None)
                if waiting is not None:
                    waiting.cancel()
                stream = self._streams.pop(action.channel, None)
                if stream is not None:
                    assert self._nursery is not None
                    self._nursery.start_soon(self._disconnect, action.channel, stream)

    def _expiry_answered(self, action: SendTimerExpiration, sw: int) -> None:
        """A busy card (93 00) gets the TIMER EXPIRATION again later, a bounded number of times
        (cp/toolkit_timers.py); each refusal and the giving up are app.event trace events."""
        before = self.gateway.timers.busy_refusals.get(action.timer, 0)
        retry = self.gateway.timers.expiry_answered(action.timer, sw)
        if retry is None and before == 0:
            return  # taken (or refused for another reason) at the first offer: nothing to tell
        if retry is None and sw != SW_BUSY:
            outcome = "delivered"
        else:
            outcome = "retry" if retry is not None else "given_up"
        self.tracer.emit(
            Actor.CP,
            Actor.UICC,
            Layer.APP,
            f"TIMER EXPIRATION (timer {action.timer}): card answered {sw:04X}, {outcome}",
            kind=Kind.APP_EVENT,
            fields={"event": "timer_expiration_" + outcome, "timer": action.timer, "sw": f"{sw:04X}"},
        )
        if retry is None or self._nursery is None:
            return

        async def again() -> None:
            await trio.sleep(BUSY_RETRY_SECONDS)
            await self._events_tx.send(TimerRetry(action))

        self._nursery.start_soon(again)

    def _set_timer(self, change: TimerChange) -> None:
        """Starts (or stops) the task that reports a toolkit timer's expiry to the card loop."""
        old = self._timers.pop(change.timer, None)
        if old is not None:
            old.cancel()
        if change.seconds is None or self._nursery is None:
            return
        scope = trio.CancelScope()
        self._timers[change.timer] = scope

        async def run(seconds: float) -> None:
            with scope:
                await trio.sleep(seconds)
                await self._events_tx.send(TimerFired(change.timer, change.generation))

        self._nursery.start_soon(run, change.seconds)

    async def _to_host(self, command: ProactiveCommand) -> None:
        """A command for the host's toolkit: the URC goes out; the TR comes with the host's +CUSATT."""
        if self.host is None:  # no toolkit to take it after all: the terminal cannot do it now
            await self._terminal_response(
                TerminalResponse.build(command, GeneralResult.TERMINAL_UNABLE, b"\x00")
            )
            return
        await self.host(command)

    async def _controlled_submit(self, action: SubmitShortMessage) -> list[Action]:
        """SEND SHORT MESSAGE through MO short message control by the USIM (TS 31.111 7.3.2, cp/toolkit_sms.py)
        when the terminal profile declares it: refused, the TR is 0x39 with 01 (interaction with MO short message
        control, action not allowed); sent with the card's addresses, OK becomes 0x05 (performed, modified)."""
        if self.sms_submit is None or not mo_sms_control_supported(self.driver.profile):
            return self._submit(action)
        address = action.command.get(Tag.ADDRESS)
        if address is not None and address.value:
            sca = bytes((len(address.value),)) + address.value
        else:
            sca = encode_sca(self.sms_centre or None)
        try:
            envelope = mo_sms_control_envelope(
                sca, action.tpdu, location_information(self.gateway.local_info)
            )
        except ValueError:  # not an SMS-SUBMIT: the SMSC refuses it as before
            return self._submit(action)
        data, sw = await self.driver.envelope(envelope, "ENVELOPE: MO SHORT MESSAGE CONTROL")
        if sw != 0x9000 and sw >> 8 != 0x91:
            return self._submit(action)
        decision = mo_sms_control_answer(data, sca, action.tpdu)
        if decision.result is MoControlResult.NOT_ALLOWED:
            response = TerminalResponse.build(
                action.command, GeneralResult.INTERACTION_WITH_CALL_CONTROL_PERMANENT, b"\x01"
            )
            return [SendTerminalResponse(response)]
        if decision.result is MoControlResult.ALLOWED:
            return self._submit(action)
        actions = self._submit(SubmitShortMessage(action.command, decision.tpdu))
        return [
            SendTerminalResponse(
                TerminalResponse.build(action.command, GeneralResult.OK_MODIFIED_BY_CALL_CONTROL)
            )
            if isinstance(a, SendTerminalResponse) and a.response.result[0] == GeneralResult.OK
            else a
            for a in actions
        ]

    def _submit(self, action: SubmitShortMessage) -> list[Action]:
        """SEND SHORT MESSAGE to the network's SMSC; its TR says whether the SMSC took it."""
        command = action.command
        if self.sms_submit is None:
            return self.gateway.sms_result(command, None)
        try:
            reference = self.sms_submit(action.tpdu)
        except ValueError as exc:  # the SMSC refused the TPDU (net/sms_pdu.py's errors are ValueErrors)
            self._error("send short message", exc)
            return self.gateway.sms_result(command, None, RP_INVALID_MANDATORY_INFORMATION)
        self.tracer.emit(
            Actor.CP,
            Actor.NET,
            Layer.SMS,
            f"SEND SHORT MESSAGE: submitted to the SMSC (TP-MR {reference})",
            action.tpdu,
            kind=Kind.APP_EVENT,
            fields={"event": "sms_submitted", "mr": reference},
        )
        return self.gateway.sms_result(command, reference)

    async def links_closed(self, timeout: float) -> None:
        """Waits (at most `timeout` seconds) until no link's close is under way."""
        with trio.move_on_after(timeout):
            await self._all_closed.wait()

    async def _disconnect(self, channel: int, stream: trio.abc.Stream) -> None:
        self._disconnecting += 1
        self._all_closed = trio.Event()
        try:
            await self._disconnect_link(channel, stream)
        finally:
            self._disconnecting -= 1
            if not self._disconnecting:
                self._all_closed.set()

    async def _disconnect_link(self, channel: int, stream: trio.abc.Stream) -> None:
        try:
            await self.bearer.disconnect(channel, stream)
        except Exception as exc:
            self._error("bearer disconnect", exc, channel)
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                try:
                    await stream.aclose()
                except Exception:
                    pass

    async def _terminal_response(self, response: TerminalResponse) -> None:
        key = TR_KEYS.get(response.type)  # type: ignore[call-overload]
        general, additional = response.result
        ok = general < 0x10
        sw = await self.driver.terminal_response(response, step=self.step(key) if key and ok else None)
        if sw == 0x9000 and self.session_ended is not None:  # 90 00: the proactive session is over
            await self.session_ended()
        if response.type == CommandType.RECEIVE_DATA:
            for channel in list(self._drained):
                # woken when it may read again (a third of the buffer free), not after every round to wait again
                queued = self._queued.get((channel, self._generation.get(channel, 0)), 0)
                if channel not in self.gateway.channels or self.gateway.rx_refill(channel, queued):
                    self._wake_reader(channel)
        if not ok:
            self.results.append((f"{response.type_name} answered 0x{general:02X}", general, additional))
        # the session is over when no channel is left and the card has nothing more to say: a 91 xx after the
        # TR is its next command (a card that lost its link closes and opens the channel again to resume)
        idle = not self.gateway.channels and not self.driver.proactive_pending
        if response.type == CommandType.CLOSE_CHANNEL:
            self.sessions_done += 1
            if idle:
                self.session_finished.set()
        if response.type == CommandType.OPEN_CHANNEL and not ok and idle:
            self.session_finished.set()

    def _wake_reader(self, channel: int) -> None:
        event = self._drained.pop(channel, None)
        if event is not None:
            event.set()

    async def _send(self, channel: int, data: bytes) -> None:
        stream = self._streams.get(channel)
        generation = self._generation.get(channel, 0)
        if stream is None:
            await self._events_tx.send(LinkDown(channel, generation))
            return
        self._trace_data(channel, data, outgoing=True, step=self.step("send"))
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self._events_tx.send(LinkDown(channel, generation))
        except Exception as exc:  # the channel's stream failed: that channel drops, nothing else
            self._error("channel send", exc, channel)
            await self._events_tx.send(LinkDown(channel, generation))

    def _trace_data(self, channel: int, data: bytes, *, outgoing: bool, step: str | None) -> None:
        """Payload bytes of a channel: tcp.data on the CP's own stack, app.event on the AP's data DLC."""
        if self.bearer.embodiment == 1:
            src, dst = (Actor.CP, Actor.OTA) if outgoing else (Actor.OTA, Actor.CP)
            self.tracer.record(  # the hot path's recording (docs/protocols.md, "Writing a trace"): the same line
                src,
                dst,
                Layer.TCP,
                f"channel {channel}: {len(data)} bytes",
                data,
                step=step,
                kind=Kind.TCP_DATA,
                fields={"channel": channel, "length": len(data)},
            )
        else:
            src, dst = (Actor.CP, Actor.AP) if outgoing else (Actor.AP, Actor.CP)
            self.tracer.record(
                src,
                dst,
                Layer.APP,
                f"channel {channel}: {len(data)} bytes over DLC {2 + channel}",
                data,
                step=step,
                kind=Kind.APP_EVENT,
                fields={
                    "event": "channel_data",
                    "channel": channel,
                    "dlci": 2 + channel,
                    "length": len(data),
                },
            )

    async def _link(self, channel: int, request: OpenChannel, generation: int = 0) -> None:
        """One channel's task: its link, then its reads. Whatever it raises ends this channel only."""
        up: list[bool] = []
        try:
            await self._link_body(channel, request, generation, up)
        except Exception as exc:
            self._error("channel task", exc, channel)
            if up:
                await self._events_tx.send(LinkDown(channel, generation))  # Channel Status: link dropped
            else:
                failure = LinkError(
                    GeneralResult.BIP_ERROR,
                    bytes((BipErrorCause.NO_SPECIFIC_CAUSE,)),
                    f"link failed: {exc!r}",
                )
                await self._events_tx.send(LinkFailed(channel, failure, generation))

    async def _link_body(self, channel: int, request: OpenChannel, generation: int, up: list[bool]) -> None:
        async with self._connecting.setdefault(channel, trio.Lock()):
            if generation != self._generation.get(channel, 0):
                return  # the card closed this channel before its link was asked for
            try:
                if request.protocol == TransportProtocol.TCP_SERVER and not getattr(
                    self.bearer, "serves_uicc_server_mode", False
                ):
                    raise LinkError(
                        GeneralResult.BIP_ERROR,
                        bytes((BipErrorCause.TRANSPORT_NOT_AVAILABLE,)),
                        f"the {self.bearer.name} bearer has no UICC server mode",
                    )
                # a server-mode channel waits for a client for as long as the card keeps it: its CLOSE CHANNEL
                # (or the card going) ends the wait (a client channel's set-up ends by itself, at its timeout)
                with trio.CancelScope() as waiting:
                    if request.protocol == TransportProtocol.TCP_SERVER:
                        self._waiting[channel] = waiting
                    stream = await self.bearer.connect(channel, request)
                if self._waiting.get(channel) is waiting:
                    del self._waiting[channel]
                if waiting.cancelled_caught:
                    return
            except LinkError as exc:
                self.tracer.emit(
                    Actor.CP,
                    Actor.UICC,
                    Layer.APP,
                    f"channel {channel}: link failed: {exc.reason}",
                    error=True,
                    kind=Kind.APP_EVENT,
                    fields={
                        "event": "link_failed",
                        "channel": channel,
                        "result": exc.general,
                        "additional": exc.additional.hex().upper(),
                    },
                )
                await self._events_tx.send(LinkFailed(channel, exc, generation))
                return
            if generation != self._generation.get(channel, 0):
                # the card closed (and maybe reopened) the channel while this link was being set up
                await self.bearer.disconnect(channel, stream)
                return
        self._streams[channel] = stream
        up.append(True)
        await self._events_tx.send(LinkUp(channel, generation))
        await self._read(channel, stream, generation)

    async def _read(self, channel: int, stream: trio.abc.Stream, generation: int = 0) -> None:
        while True:
            # one datagram at a time on a UDP channel: the next waits until the card has read this one
            space = self.gateway.rx_refill(channel, self._queued.get((channel, generation), 0))
            if channel not in self.gateway.channels:
                return
            if space == 0:  # the card has not read enough of its Rx buffer: back-pressure, not dropping
                drained = self._drained.setdefault(channel, trio.Event())
                await drained.wait()
                continue
            try:
                data = bytes(await stream.receive_some(min(space, 65536)))
                broken = ""
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                data, broken = (
                    b"",
                    str(exc) or type(exc).__name__,
                )  # e.g. "link dropped: <why the context went>"
            if self._streams.get(channel) is not stream:
                return  # closed by the card meanwhile
            if not data:
                own = self.bearer.embodiment == 1
                fields: dict[str, object] = (
                    {"channel": channel} if own else {"event": "remote_closed", "channel": channel}
                )
                if broken:
                    fields["reason"] = broken
                self.tracer.emit(
                    Actor.OTA if own else Actor.AP,
                    Actor.CP,
                    Layer.TCP if own else Layer.APP,
                    f"channel {channel}: {broken or 'remote end closed'}",
                    error=True,
                    kind=Kind.TCP_CLOSED if own else Kind.APP_EVENT,
                    fields=fields,
                )
                self._streams.pop(channel, None)
                await self._events_tx.send(LinkDown(channel, generation))
                return
            self._trace_data(
                channel, data, outgoing=False, step="S409" if self.bearer.embodiment == 1 else None
            )
            key = (channel, generation)
            self._queued[key] = self._queued.get(key, 0) + len(data)
            await self._events_tx.send(LinkData(channel, data, generation))

    @property
    def failed(self) -> bool:
        return any(general != GeneralResult.OK for _, general, _ in self.results)
