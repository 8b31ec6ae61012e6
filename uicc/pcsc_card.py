"""A card in a PC/SC reader as an ApduTransport (uicc/transport.py): `bipsim cp --card pcsc:N|pcsc:NAME`.

The reader is reached through pyscard and the PC/SC daemon (pcsc-lite's pcscd): a real UICC in a USB reader, or
the simulated card that `bipsim card serve --vpcd` exports through the vsmartcard vpcd reader (docs/hil.md). The
card is connected in shared mode with T=0 or T=1, whichever it offers (ISO/IEC 7816-3); command APDUs go out as the
CP built them and responses come back exactly as the card sent them, data then SW1 SW2. T=0 response handling
(61 xx: GET RESPONSE; 6C xx: the same command again with the right Le; ISO/IEC 7816-3 section 10.3.5, TS 102 221
section 7.3.1.1.4) is the card driver's (cp/card_driver.py), as for every transport.

Every pyscard call blocks, so each runs in a worker thread, one at a time. A call that has not returned after
`timeout` seconds (a card that answers nothing, a reader that hangs) is abandoned: it is reported as the card being
gone (CardRemoved), the next power_on opens a new connection, and the abandoned thread releases the old one when
its call finally returns. A reader or card that goes away (pyscard's NoCardException, a CardConnectionException,
the reader or the PC/SC service gone) is CardRemoved with a one-line reason; a later power_on succeeds once the card
is back. A response without a status word is a PcscAnswerError, which the driver answers as 6F 00 (technical
problem, TS 102 221 section 10.2.1.5) like any other card failure. The reader is looked up again at each power_on,
so a USB reader unplugged and plugged back in is found under its new index.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import trio

from bipsim.uicc.transport import CardRemoved

T = TypeVar("T")

DEFAULT_TIMEOUT = (
    15.0  # seconds a real card may take for one APDU (a key generation) before it counts as gone
)
INSTALL_HINT = "pip install 'bipsim[pcsc]' (pyscard builds against libpcsclite-dev)"
SCARD_S_SUCCESS = 0


class PcscUnavailable(Exception):
    """PC/SC cannot be used at all: pyscard is missing, pcscd is not running, or the chosen reader is not there.
    The message is one line for the user (the command line turns it into its error)."""


class PcscAnswerError(Exception):
    """The reader returned something that is not a response APDU (fewer than the two status bytes)."""


@dataclass(frozen=True)
class ReaderChoice:
    """Which reader `pcsc[:N|:NAME]` names: by its index in the PC/SC list, or by (part of) its name."""

    index: int | None = 0
    name: str | None = None

    def __str__(self) -> str:
        return f"pcsc:{self.name}" if self.name is not None else f"pcsc:{self.index}"


def parse_card_spec(spec: str) -> ReaderChoice:
    """`pcsc` (the first reader), `pcsc:N` (reader N, from 0, in the order `bipsim card readers` lists them) or
    `pcsc:NAME` (the first reader whose name holds NAME, case ignored). Raises ValueError for anything else."""
    if spec == "pcsc":
        return ReaderChoice(0)
    if not spec.startswith("pcsc:") or not spec[len("pcsc:") :].strip():
        raise ValueError(f"{spec!r} is not pcsc, pcsc:N or pcsc:NAME")
    rest = spec[len("pcsc:") :].strip()
    if rest.isdigit():
        return ReaderChoice(int(rest))
    return ReaderChoice(None, rest)


def choose_reader(readers: list[str], choice: ReaderChoice) -> str:
    """The reader `choice` names among `readers` (PC/SC's order); PcscUnavailable, naming the readers, otherwise."""
    listed = "; ".join(f"{n}: {name}" for n, name in enumerate(readers)) or "none"
    if not readers:
        raise PcscUnavailable("no PC/SC reader is connected (pcscd lists none)")
    if choice.name is None:
        index = choice.index or 0
        if index >= len(readers):
            raise PcscUnavailable(f"no PC/SC reader {index}; the readers are {listed}")
        return readers[index]
    wanted = choice.name.casefold()
    exact = [name for name in readers if name.casefold() == wanted]
    matches = exact or [name for name in readers if wanted in name.casefold()]
    if not matches:
        raise PcscUnavailable(f"no PC/SC reader's name holds {choice.name!r}; the readers are {listed}")
    return matches[0]


class PcscConnection(Protocol):
    """The part of pyscard's CardConnection used here (a fake of it stands in for tests without pcscd)."""

    def getATR(self) -> list[int]: ...

    def getProtocol(self) -> int: ...

    def transmit(self, command: list[int]) -> tuple[list[int], int, int]: ...

    def reconnect(self) -> None: ...

    def disconnect(self) -> None: ...

    def release(self) -> None: ...


class PcscBackend(Protocol):
    """Lists readers and connects to the card in one (pyscard over pcscd, or a test's fake)."""

    def readers(self) -> list[str]: ...

    def connect(self, reader: str) -> PcscConnection: ...

    def removed(self, exc: BaseException, where: str) -> CardRemoved | None:
        """`exc` as the card or reader being gone (None when it is not a PC/SC failure)."""
        ...


class PyscardBackend:
    """PC/SC through pyscard (pcsc-lite's client library, which finds pcscd through PCSCLITE_CSOCK_NAME)."""

    def __init__(self) -> None:
        try:
            import smartcard.Exceptions
            import smartcard.pcsc.PCSCExceptions
            import smartcard.pcsc.PCSCReader
            import smartcard.scard
            import smartcard.System
        except ImportError as exc:
            raise PcscUnavailable(f"PC/SC needs pyscard, which is not installed: {INSTALL_HINT}") from exc
        self._system = smartcard.System
        self._reader = smartcard.pcsc.PCSCReader.PCSCReader
        self._errors: tuple[type[BaseException], ...] = (
            smartcard.Exceptions.SmartcardException,
            smartcard.pcsc.PCSCExceptions.BaseSCardException,
        )
        self._connection_error = smartcard.Exceptions.CardConnectionException
        self._message = smartcard.scard.SCardGetErrorMessage

    def readers(self) -> list[str]:
        return [str(reader) for reader in self._system.readers()]

    def connect(self, reader: str) -> PcscConnection:
        connection: Any = self._reader(reader).createConnection()
        connection.connect()  # no protocol given: T=0 or T=1, whichever the card offers
        return connection

    def removed(self, exc: BaseException, where: str) -> CardRemoved | None:
        if not isinstance(exc, self._errors):
            return None
        raw = int(getattr(exc, "hresult", -1))
        hresult = raw & 0xFFFFFFFF
        if isinstance(exc, self._connection_error) and hresult == SCARD_S_SUCCESS:
            return None  # pyscard's "Card returned no valid response": an answer, not a departure
        text = " ".join(str(exc).split())
        if raw != -1:  # pcsc-lite's own words for the code, once (pyscard's text repeats them)
            text = f"{self._message(raw).strip()} (0x{hresult:08X})"
        return CardRemoved(f"{where}: {text}")


class _Call:
    """One blocking call in a worker thread that the trio side may abandon (timeout or cancellation); an
    abandoned call hands its result (None after an exception) to `cleanup` in its own thread once it returns, so
    nothing waits on a hung reader and no connection it opened is left behind."""

    def __init__(self, function: Callable[[], Any]) -> None:
        self.function = function
        self._lock = threading.Lock()
        self._done = False
        self._result: Any = None
        self._cleanup: Callable[[Any], None] | None = None

    def run(self) -> Any:
        result = None
        try:
            result = self.function()
            return result
        finally:
            with self._lock:
                self._done, self._result = True, result
                cleanup = self._cleanup
            if cleanup is not None:
                _quietly(cleanup, result)

    def abandon(self, cleanup: Callable[[Any], None]) -> None:
        with self._lock:
            if not self._done:
                self._cleanup = cleanup
                return
            result = self._result
        # finished just as it was given up: nothing will call back, so clean up beside it
        threading.Thread(target=_quietly, args=(cleanup, result), daemon=True).start()


def _quietly(function: Callable[..., None], *args: Any) -> None:
    try:
        function(*args)
    except Exception:  # releasing a connection whose reader is gone fails; there is nothing left to do
        pass


def protocol_name(protocol: int) -> str:
    """pyscard's CardConnection protocol bits as ISO/IEC 7816-3 names them."""
    names = [name for bit, name in ((1, "T=0"), (2, "T=1")) if protocol & bit]
    return " or ".join(names) or f"protocol {protocol}"


class PcscCard:
    """An ApduTransport over one PC/SC reader. `reader` and `protocol` name what the last power_on connected."""

    def __init__(
        self,
        choice: ReaderChoice,
        *,
        backend: PcscBackend | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.choice = choice
        self.backend: PcscBackend = backend if backend is not None else PyscardBackend()
        self.timeout = timeout
        self.reader: str | None = None
        self.protocol = ""
        self._connection: PcscConnection | None = None

    def probe(self) -> str:
        """Checks, before the CP starts, that PC/SC answers and the chosen reader is there (a card need not be);
        returns the reader's name. Raises PcscUnavailable with one line for the user."""
        try:
            readers = self.backend.readers()
        except Exception as exc:
            if self.backend.removed(exc, "") is None:
                raise
            text = " ".join(str(exc).split())
            raise PcscUnavailable(f"PC/SC does not answer (is pcscd running?): {text}") from exc
        return choose_reader(readers, self.choice)

    async def _call(
        self,
        where: str,
        function: Callable[[], T],
        connection: PcscConnection | None,
        cleanup: Callable[[Any], None] | None = None,
    ) -> T:
        """Runs `function` in a worker thread within the deadline; PC/SC failures become CardRemoved. Given up,
        the call releases `connection` (or calls `cleanup` with what it returned) once it returns."""
        call = _Call(function)
        done = False
        try:
            with trio.move_on_after(self.timeout):
                result: T = await trio.to_thread.run_sync(call.run, abandon_on_cancel=True)
                done = True
                return result
        except Exception as exc:
            done = True
            removed = self.backend.removed(exc, where)
            if removed is not None:
                if connection is not None:
                    await self._release(connection)
                raise removed from exc
            if isinstance(exc, PcscAnswerError | PcscUnavailable):
                raise
            raise PcscAnswerError(f"{where}: {' '.join(str(exc).split())}") from exc
        finally:
            if not done:  # the deadline passed, or the caller was cancelled: give the thread up
                self._forget(connection)
                if connection is not None:
                    closer = _closer(connection)
                    call.abandon(lambda _: closer())
                elif cleanup is not None:
                    call.abandon(cleanup)
        raise CardRemoved(f"{where}: no answer within {self.timeout:g} s")

    def _forget(self, connection: PcscConnection | None) -> None:
        if connection is not None and self._connection is connection:
            self._connection = None

    async def power_on(self) -> bytes:
        """Resets the card (a warm reset of the open connection, or a new connection to the reader looked up
        again) and returns its ATR."""
        connection = self._connection
        if connection is not None:
            try:
                await self._call(f"{self.reader}: reset", connection.reconnect, connection)
                atr = await self._call(f"{self.reader}: ATR", connection.getATR, connection)
                return bytes(atr)
            except CardRemoved:
                pass  # gone since (its connection released): look the reader up again below
        where = str(self.choice)

        def open_connection() -> tuple[str, PcscConnection, list[int], int]:
            reader = choose_reader(self.backend.readers(), self.choice)
            fresh = self.backend.connect(reader)
            try:
                return reader, fresh, fresh.getATR(), fresh.getProtocol()
            except BaseException:
                _quietly(fresh.release)
                raise

        try:
            reader, fresh, atr, protocol = await self._call(where, open_connection, None, _release_opened)
        except PcscUnavailable as exc:
            raise CardRemoved(f"{where}: {exc}") from exc  # the reader itself is away for now
        self.reader, self._connection, self.protocol = reader, fresh, protocol_name(protocol)
        return bytes(atr)

    async def transmit(self, command: bytes) -> bytes:
        connection = self._connection
        if connection is None:
            raise CardRemoved(f"{self.reader or self.choice}: the card is not powered on")

        def exchange() -> bytes:
            data, sw1, sw2 = connection.transmit(list(command))
            return bytes(data) + bytes((sw1, sw2))

        return await self._call(f"{self.reader}: APDU {command[:4].hex().upper()}", exchange, connection)

    async def _release(self, connection: PcscConnection) -> None:
        self._forget(connection)
        with trio.move_on_after(self.timeout):
            await trio.to_thread.run_sync(_closer(connection), abandon_on_cancel=True)

    async def close(self) -> None:
        """Powers the card off (pyscard disconnects with SCARD_UNPOWER_CARD) and releases the PC/SC context."""
        connection = self._connection
        if connection is not None:
            with trio.CancelScope(shield=True):
                await self._release(connection)


def _release_opened(opened: tuple[str, PcscConnection, list[int], int] | None) -> None:
    if opened is not None:
        _closer(opened[1])()


# PC/SC SCardDisconnect dispositions (pcsc-lite's winscard.h)
SCARD_LEAVE_CARD = 0
SCARD_UNPOWER_CARD = 2


def _closer(connection: PcscConnection) -> Callable[[], None]:
    def close() -> None:
        # pyscard's reconnect (our warm reset) leaves "reset" as the disconnect action: power the card off instead
        if hasattr(connection, "disposition"):
            setattr(connection, "disposition", SCARD_UNPOWER_CARD)  # noqa: B010 (not in the Protocol)
        _quietly(connection.disconnect)
        _quietly(connection.release)

    return close


def open_pcsc_card(spec: str, *, timeout: float = DEFAULT_TIMEOUT) -> PcscCard:
    """The transport for a `--card pcsc...` spec, checked at once: PcscUnavailable (one line) when pyscard is
    missing, pcscd does not answer, or the reader is not there; ValueError for a malformed spec."""
    card = PcscCard(parse_card_spec(spec), timeout=timeout)
    card.probe()
    return card
