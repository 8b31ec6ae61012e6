"""The OMAPI service of the AP (GlobalPlatform Open Mobile API v3.3: SEService -> Reader -> Session -> Channel) on
top of the PhoneInterfaceManager and RIL layers (docs/protocols.md, "OMAPI on the AP").

`OmapiService.initialise` is steps 004:301..004:305: for each card, the PhoneInterfaceManager checks the variable,
and when true the RIL opens (and closes again) a logical channel to the ARA-M; a card whose channel opened is an
"available" card. An application's SEService (004:401) gets the readers (004:402); the chooser lists the available
ones (004:403) and takes the user's choice (004:404), which becomes the Reader (004:405), a Session (004:406) and a
logical channel to the applet (004:407), the variable read again before the open (004:101/004:102) and the card's
GP SEAC rules deciding for the application's certificate hash on top of it.

Reader, Session and Channel states go through transition tables (docs/architecture.md); every call is an
`omapi.call` event and every exception an `omapi.error` event with the OMAPI exception's name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from bipsim.ap.omapi.chooser import Chooser
from bipsim.ap.omapi.errors import (
    OmapiError,
    OmapiIllegalArgumentException,
    OmapiIllegalStateException,
    OmapiIOException,
    OmapiNoSuchElementException,
    OmapiSecurityException,
)
from bipsim.ap.omapi.framework import Framework
from bipsim.ap.omapi.phone_interface import PhoneInterfaceManager
from bipsim.ap.omapi.ril import NoChannelAvailable, SeRil, reader_name
from bipsim.ap.omapi.seac import ARA_M_AID, PKCS15_AID, Decision
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.transitions import TransitionTable

T = TypeVar("T")

# why openBasicChannel answers null (OMAPI v3.3: null when the basic channel is not available to applications)
BASIC_CHANNEL_REASON = "the modem keeps the basic channel of a UICC (its USIM session) and 27.007 gives the AP logical channels only"
INS_MANAGE_CHANNEL = 0x70
INS_SELECT = 0xA4


@dataclass(frozen=True, slots=True)
class AppIdentity:
    """The calling application: its package name and the hash of its signing certificate (GP SEAC
    DeviceAppID: SHA-1, 20 bytes, or SHA-256, 32 bytes)."""

    package: str
    cert_hash: bytes

    def label(self) -> str:
        return f"{self.package}:{self.cert_hash.hex().upper()}"


class Open(Enum):
    OPEN = "open"
    CLOSED = "closed"


class Close(Enum):
    CLOSE = "close"


# sessions, channels and SEServices share the shape: open until closed, closing twice is allowed (OMAPI: a no-op)
OPEN_TABLE: TransitionTable[Open, Close] = TransitionTable(
    "OMAPI object", {(Open.OPEN, Close.CLOSE): Open.CLOSED, (Open.CLOSED, Close.CLOSE): Open.CLOSED}
)


class OmapiService:
    """The AP's secure element service: one per AP, shared by every application's SEService."""

    def __init__(
        self,
        framework: Framework,
        phone: PhoneInterfaceManager,
        ril: SeRil,
        chooser: Chooser,
        *,
        tracer: Tracer = NULL_TRACER,
    ) -> None:
        self.framework = framework
        self.phone = phone
        self.ril = ril
        self.chooser = chooser
        self.tracer = tracer
        self.available: list[int] = []  # slots whose channel opened at initialisation
        self.initialised = False

    @property
    def slots(self) -> list[int]:
        return sorted(self.framework.cards)

    def trace(
        self,
        kind: str,
        summary: str,
        *,
        step: str | None = None,
        error: bool = False,
        layer: str = "OMAPI",
        **facts: object,
    ) -> None:
        self.tracer.emit(
            Actor.AP,
            Actor.AP,
            Layer.APP,
            f"{layer}: {summary}",
            step=step,
            error=error,
            kind=kind,
            fields={"layer": layer, **facts},
        )

    async def initialise(self) -> list[str]:
        """Steps 301..305 for every card; returns the available readers' names."""
        self.trace(Kind.OMAPI_CALL, "initialise OMAPI", step="004:301", api="initialise", result="started")
        self.available = []
        for slot in self.slots:
            allowed, why = self.phone.check(slot, step="004:302", purpose="initialise")
            if not allowed:
                self.trace(
                    Kind.OMAPI_CALL,
                    f"{reader_name(slot)} not available: {why}",
                    step="004:305",
                    api="initialise",
                    reader=reader_name(slot),
                    result="forbidden",
                    reason=why,
                )
                continue
            # the channel goes to where the card's rules came from: the ARA-M, or the ARF's PKCS#15 application
            record = self.framework.cards.get(slot)
            aid = PKCS15_AID if record is not None and record.source == "ARF" else ARA_M_AID
            try:
                session = await self.ril.open_channel(slot, aid, step="004:304", ril_step="004:303")
            except (OmapiError, NoChannelAvailable) as exc:
                self.trace(
                    Kind.OMAPI_CALL,
                    f"{reader_name(slot)} not available: {exc}",
                    step="004:305",
                    api="initialise",
                    reader=reader_name(slot),
                    result="failed",
                    reason=str(exc),
                    error=True,
                )
                continue
            try:
                await self.ril.close_channel(slot, session)
            except OmapiError:
                pass  # the channel opened: the card is available whatever its close said
            self.available.append(slot)
        self.initialised = True
        names = [reader_name(slot) for slot in self.available]
        self.trace(
            Kind.OMAPI_CALL, f"available readers: {names}", api="initialise", result="done", readers=names
        )
        return names

    def se_service(self, app: AppIdentity) -> SEService:
        """Step 401: an application creates its SEService."""
        self.trace(
            Kind.OMAPI_CALL,
            f"{app.package} creates an SEService",
            step="004:401",
            api="SEService",
            app=app.label(),
        )
        return SEService(self, app)

    async def call(
        self,
        api: str,
        reader: str | None,
        app: AppIdentity,
        body: Callable[[], Awaitable[T]],
        step: str | None = None,
    ) -> T:
        """Runs one OMAPI call: traced as `omapi.call` when it returns, as `omapi.error` with the exception's
        OMAPI name when it raises one."""
        fields: dict[str, object] = {"layer": "OMAPI", "api": api, "app": app.label()}
        if reader is not None:
            fields["reader"] = reader
        try:
            result = await body()
        except OmapiError as exc:
            self.tracer.emit(
                Actor.AP,
                Actor.AP,
                Layer.APP,
                f"OMAPI: {api} raised {exc.name}: {exc.reason}",
                step="004:305" if isinstance(exc, OmapiSecurityException) else None,
                error=True,
                kind=Kind.OMAPI_ERROR,
                fields={**fields, "exception": exc.name, "reason": exc.reason},
            )
            raise
        self.tracer.emit(
            Actor.AP,
            Actor.AP,
            Layer.APP,
            f"OMAPI: {api} -> {describe(result)}",
            step=step,
            kind=Kind.OMAPI_CALL,
            fields={**fields, "result": describe(result)},
        )
        return result


def describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bytes):
        return value.hex().upper()
    if isinstance(value, list):
        return "[" + ", ".join(describe(item) for item in value) + "]"
    if isinstance(value, Reader | Session | Channel):
        return str(value)
    return str(value)


class SEService:
    """An application's connection to the secure element service (OMAPI 6.2)."""

    def __init__(self, service: OmapiService, app: AppIdentity) -> None:
        self.service = service
        self.app = app
        self.state = Open.OPEN
        self.sessions: list[Session] = []

    def is_connected(self) -> bool:
        return self.state is Open.OPEN

    def _need_open(self) -> None:
        if self.state is not Open.OPEN:
            raise OmapiIllegalStateException("the SEService is shut down")

    async def get_readers(self) -> list[Reader]:
        """Step 402: every reader of the terminal (SIM1, SIM2...)."""

        async def body() -> list[Reader]:
            self._need_open()
            return [Reader(self, slot) for slot in self.service.slots]

        return await self.service.call("getReaders", None, self.app, body, step="004:402")

    async def choose_reader(self) -> Reader:
        """Steps 403..405: the dialog lists the available readers, the user chooses, the choice becomes the Reader;
        NoSuchElementException when the user chose none."""
        readers = [reader_name(slot) for slot in self.service.available]
        self.service.trace(
            Kind.OMAPI_CHOOSER,
            f"dialog lists {readers}",
            step="004:403",
            layer="Chooser",
            event="list",
            readers=readers,
            policy=self.service.chooser.policy,
        )
        choice = self.service.chooser.choose(readers)
        self.service.trace(
            Kind.OMAPI_CHOOSER,
            f"user chose {choice or 'nothing'}",
            step="004:404",
            layer="Chooser",
            event="choice",
            readers=readers,
            choice=choice,
            policy=self.service.chooser.policy,
        )

        async def body() -> Reader:
            self._need_open()
            if choice is None:
                raise OmapiNoSuchElementException(f"no reader chosen among {readers}")
            return Reader(self, int(choice[3:]))

        return await self.service.call("Reader", choice, self.app, body, step="004:405")

    async def reader(self, name: str) -> Reader:
        """The reader called `name` (what getReaders lists), without the dialog."""

        async def body() -> Reader:
            self._need_open()
            for slot in self.service.slots:
                if reader_name(slot) == name:
                    return Reader(self, slot)
            raise OmapiNoSuchElementException(
                f"no reader {name!r} (readers: {[reader_name(slot) for slot in self.service.slots]})"
            )

        return await self.service.call("Reader", name, self.app, body, step="004:405")

    async def shutdown(self) -> None:
        for session in list(self.sessions):
            await session.close()
        self.state = OPEN_TABLE.next(self.state, Close.CLOSE)


class Reader:
    def __init__(self, owner: SEService, slot: int) -> None:
        self.owner = owner
        self.slot = slot
        self.name = reader_name(slot)

    def __str__(self) -> str:
        return self.name

    def is_secure_element_present(self) -> bool:
        record = self.owner.service.framework.cards.get(self.slot)
        return bool(record and record.present)

    async def open_session(self) -> Session:
        """Step 406. The Framework reads the card's refresh tag here and loads its rules again when it changed
        (docs/protocols.md, "When the rules are read")."""
        service = self.owner.service

        async def body() -> Session:
            self.owner._need_open()
            if not self.is_secure_element_present():
                raise OmapiIOException(f"no card in {self.name}")
            await service.framework.refresh(self.slot)
            session = Session(self)
            self.owner.sessions.append(session)
            return session

        return await service.call("openSession", self.name, self.owner.app, body, step="004:406")


class Session:
    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.state = Open.OPEN
        self.channels: list[Channel] = []

    def __str__(self) -> str:
        return f"session on {self.reader.name}"

    def is_closed(self) -> bool:
        return self.state is Open.CLOSED

    @property
    def service(self) -> OmapiService:
        return self.reader.owner.service

    async def open_basic_channel(self, aid: bytes | None) -> Channel | None:
        """OMAPI returns null when the basic channel is not available: on a SIM reader the modem keeps the basic
        channel (its USIM session), and 27.007 gives the AP logical channels only."""

        async def body() -> Channel | None:
            if self.state is Open.CLOSED:
                raise OmapiIllegalStateException("the session is closed")
            self.service.trace(
                Kind.OMAPI_CALL,
                f"no basic channel on {self.reader.name}: {BASIC_CHANNEL_REASON}",
                api="openBasicChannel",
                reader=self.reader.name,
                aid=aid.hex().upper() if aid is not None else None,
                result="null",
                reason=BASIC_CHANNEL_REASON,
            )
            return None

        return await self.service.call("openBasicChannel", self.reader.name, self.reader.owner.app, body)

    async def open_logical_channel(self, aid: bytes) -> Channel | None:
        """Step 407 with 101/102 before it; null when the card has no logical channel left."""
        service, app, slot = self.service, self.reader.owner.app, self.reader.slot

        async def body() -> Channel | None:
            if self.state is Open.CLOSED:
                raise OmapiIllegalStateException("the session is closed")
            if not 5 <= len(aid) <= 16:
                raise OmapiIllegalArgumentException(f"an AID has 5 to 16 bytes, not {len(aid)}")
            allowed, why = service.phone.check(slot, step="004:101", purpose="openLogicalChannel")
            if not allowed:
                raise OmapiSecurityException(f"access forbidden: {why}")
            decision = self._decide(aid, app)
            if not decision.granted:
                raise OmapiSecurityException(f"access rules: {decision.reason}")
            service.trace(
                Kind.OMAPI_CHECK,
                f"open allowed on {self.reader.name}",
                step="004:102",
                layer="PhoneInterfaceManager",
                reader=self.reader.name,
                variable=service.framework.variable(slot),
                gate=service.phone.gate.value.replace("-", "_"),
                nfc=service.phone.nfc,
                allowed=True,
                purpose="openLogicalChannel",
            )
            try:
                session_id = await service.ril.open_channel(slot, aid, step="004:407", ril_step="004:303")
            except NoChannelAvailable as exc:
                service.trace(
                    Kind.OMAPI_CALL,
                    f"no logical channel: {exc}",
                    api="openLogicalChannel",
                    reader=self.reader.name,
                    result="null",
                    reason=str(exc),
                    error=True,
                )
                return None
            channel = Channel(self, session_id, aid, decision)
            self.channels.append(channel)
            return channel

        return await service.call("openLogicalChannel", self.reader.name, app, body, step="004:407")

    def _decide(self, aid: bytes, app: AppIdentity) -> Decision:
        service = self.service
        record = service.framework.cards[self.reader.slot]
        if record.rules is None:
            # only the legacy gate gets here without rules: the NFC process is the terminal's own, trusted
            decision = Decision(True, "no rules loaded; the NFC process opens")
        else:
            decision = record.rules.decide(aid, app.cert_hash, app.package)
        service.trace(
            Kind.OMAPI_ACCESS,
            f"{'granted' if decision.granted else 'denied'} {aid.hex().upper()} to {app.package}: {decision.reason}",
            layer="AccessControlEnforcer",
            reader=self.reader.name,
            aid=aid.hex().upper(),
            app=app.label(),
            granted=decision.granted,
            reason=decision.reason,
        )
        return decision

    async def close(self) -> None:
        for channel in list(self.channels):
            await channel.close()
        self.state = OPEN_TABLE.next(self.state, Close.CLOSE)


class Channel:
    def __init__(self, session: Session, session_id: int, aid: bytes, decision: Decision) -> None:
        self.session = session
        self.session_id = session_id  # the modem's +CCHO <sessionid>
        self.aid = aid
        self.decision = decision
        self.state = Open.OPEN
        self._select_response: bytes | None = None

    def __str__(self) -> str:
        return f"channel (session {self.session_id}) to {self.aid.hex().upper()}"

    def is_open(self) -> bool:
        return self.state is Open.OPEN

    def is_basic_channel(self) -> bool:
        return False

    @property
    def _slot(self) -> int:
        return self.session.reader.slot

    async def transmit(self, command: bytes) -> bytes:
        """The applet's answer, status word included, exactly as the card gave it."""
        service = self.session.service

        async def body() -> bytes:
            if self.state is Open.CLOSED:
                raise OmapiIllegalStateException("the channel is closed")
            if len(command) < 4:
                raise OmapiIllegalArgumentException(f"an APDU has at least 4 bytes, not {len(command)}")
            if command[1] == INS_MANAGE_CHANNEL or (command[1] == INS_SELECT and command[2] == 0x04):
                raise OmapiIllegalArgumentException(
                    "MANAGE CHANNEL and SELECT by DF name are the service's own"
                )
            if not self.decision.allows(command):
                raise OmapiSecurityException(
                    f"APDU {command[:4].hex().upper()} not allowed by the APDU filters"
                )
            try:
                return await self._exchange(command)
            except (OmapiIOException, OmapiIllegalStateException):
                self.state = OPEN_TABLE.next(self.state, Close.CLOSE)  # the card (or its channel) is gone
                raise

        return await service.call("transmit", self.session.reader.name, self.session.reader.owner.app, body)

    async def _exchange(self, command: bytes) -> bytes:
        """One APDU, 61 xx and 6C xx handled by the RIL (SeRil.exchange) as the API must."""
        return await self.session.service.ril.exchange(self._slot, self.session_id, command)

    async def get_select_response(self) -> bytes | None:
        """The SELECT answer of the applet: 27.007's +CCHO does not return it, so the first call selects the applet
        again on this channel (+CGLA 00A40400) and keeps that answer."""
        service = self.session.service

        async def body() -> bytes | None:
            if self.state is Open.CLOSED:
                raise OmapiIllegalStateException("the channel is closed")
            if self._select_response is None:
                select = bytes((0x00, INS_SELECT, 0x04, 0x00, len(self.aid))) + self.aid + b"\x00"
                self._select_response = await self._exchange(select)
            return self._select_response

        return await service.call(
            "getSelectResponse", self.session.reader.name, self.session.reader.owner.app, body
        )

    async def close(self) -> None:
        """+CCHC with the channel's session id; a channel already closed (or whose card is gone) stays closed."""
        service = self.session.service

        async def body() -> str:
            if self.state is Open.CLOSED:
                return "already closed"
            self.state = OPEN_TABLE.next(self.state, Close.CLOSE)
            try:
                await service.ril.close_channel(self._slot, self.session_id)
            except (OmapiIOException, OmapiIllegalStateException) as exc:
                return f"closed; the modem said: {exc.reason}"
            return "closed"

        await service.call("close", self.session.reader.name, self.session.reader.owner.app, body)
        if self in self.session.channels:
            self.session.channels.remove(self)
