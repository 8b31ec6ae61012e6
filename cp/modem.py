"""The CP process: the card (simulated, or recorded for replay), the 27.007 modem on the serial line, and the BIP
service on the chosen bearer. The line must be there at start (LineUnavailable, one clear line from the CLI) unless
`wait_for_line` is set (a bench where the adapter appears later); once opened, it is reopened whenever it goes away
(a USB-serial adapter unplugged, the pty pair restarted), and the wait is said once on stderr. The card is powered on
once the AP has attached its proxy (DLC 2), as a phone's modem starts its SIM toolkit once the application processor
is up.

No exception of a session ends the process: a line session that fails is traced (app.error) and the line served
again; the BIP service contains its channels' and its card's failures itself (cp/bip_service.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from bipsim.cp.bearer import Bearer
from bipsim.cp.bearer_ap_proxy import ApProxyBearer
from bipsim.cp.bearer_own_stack import OwnStackBearer
from bipsim.cp.bip_service import BipService
from bipsim.cp.card_driver import CardDriver
from bipsim.cp.commands import ModemCommands
from bipsim.cp.line_service import LineService
from bipsim.cp.network import CellularNetwork
from bipsim.cp.proxy_link import ProxyLink
from bipsim.link.cmux import MuxError
from bipsim.link.pty import open_line
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.transport import ApduTransport

if TYPE_CHECKING:
    from bipsim.uicc.bip_engine import BipEngine
    from bipsim.uicc.card import SimCard
    from bipsim.uicc.ota_trigger import SmsTriggerToolkit
    from bipsim.uicc.profile import CardProfile


@dataclass
class ModemOptions:
    port: str
    baud: int = 115200
    bearer: str = "auto"  # own-stack | ap-proxy | auto
    once: bool = False
    wait_for_ap: float = 60.0
    start_delay: float = 0.0
    wait_for_line: bool = False  # at start, wait for a line that is not there yet instead of failing


REOPEN_INTERVAL = 0.2  # seconds between attempts to reopen a line that went away


class LineUnavailable(Exception):
    """The serial line could not be opened at start (and waiting for it was not asked for). `absent`: there is
    nothing at that path (rather than something that is not a serial line)."""

    def __init__(self, message: str, *, absent: bool) -> None:
        super().__init__(message)
        self.absent = absent

    def hint(self) -> str:
        return f"{self} (use --wait-for-line to wait for it)" if self.absent else str(self)


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class LineOpener:
    """Opens a process's serial line (docs/protocols.md, "The serial line"). The first open fails fast with LineUnavailable unless
    `wait`; later opens (after the line went away) retry every REOPEN_INTERVAL, telling `notice` once per wait.
    Shared by the CP and the AP processes."""

    def __init__(
        self,
        port: str,
        baud: int,
        *,
        who: str,
        wait: bool = False,
        notice: Callable[[str], None] = _stderr,
    ) -> None:
        self.port, self.baud, self.who, self.wait, self.notice = port, baud, who, wait, notice
        self.opened = 0

    async def open(self) -> trio.abc.Stream:
        said = False
        while True:
            try:
                line = await open_line(self.port, baud=self.baud)
            except OSError as exc:
                if not self.opened and not self.wait:
                    raise LineUnavailable(
                        f"serial line {self.port}: {_why(exc)}", absent=isinstance(exc, FileNotFoundError)
                    ) from None
                if not said:
                    what = "went away" if self.opened else f"is not there ({_why(exc)})"
                    self.notice(f"{self.who}: serial line {self.port} {what}; waiting for it")
                    said = True
                await trio.sleep(REOPEN_INTERVAL)
                continue
            if said:
                self.notice(f"{self.who}: serial line {self.port} is back")
            self.opened += 1
            return line


class AutoBearer:
    """Embodiment 2 when the AP's proxy can connect (it answers +CME ERROR: 30 without Wi-Fi), else embodiment 1."""

    name = "auto"

    def __init__(self, proxy: ApProxyBearer, own: OwnStackBearer) -> None:
        self.proxy, self.own = proxy, own
        self.embodiment = 2
        self._used: dict[int, Bearer] = {}

    async def connect(self, channel: int, request: object) -> trio.abc.Stream:
        from bipsim.cp.bearer import LinkError
        from bipsim.uicc.cat import OpenChannel, TerminalProblem

        assert isinstance(request, OpenChannel)
        try:
            stream = await self.proxy.connect(channel, request)
            self._used[channel], self.embodiment = self.proxy, 2
            return stream
        except LinkError as exc:
            if exc.additional != bytes((TerminalProblem.NO_SERVICE,)):
                raise
        self.embodiment = 1
        stream = await self.own.connect(channel, request)
        self._used[channel] = self.own
        return stream

    async def disconnect(self, channel: int, stream: trio.abc.Stream) -> None:
        bearer = self._used.pop(channel, self.own)
        await bearer.disconnect(channel, stream)


def make_bearer(kind: str, proxy: ProxyLink, network: CellularNetwork, tracer: Tracer) -> Bearer:
    own = OwnStackBearer(proxy, network, tracer=tracer)
    ap = ApProxyBearer(proxy, tracer=tracer)
    if kind == "own-stack":
        return own
    if kind == "ap-proxy":
        return ap
    return AutoBearer(ap, own)


class Modem:
    def __init__(self, options: ModemOptions, card: ApduTransport, *, tracer: Tracer = NULL_TRACER) -> None:
        self.options = options
        self.tracer = tracer
        self.driver = CardDriver(card, tracer=tracer)
        self.network = CellularNetwork()
        self.proxy = ProxyLink()
        self.bearer = make_bearer(options.bearer, self.proxy, self.network, tracer)
        self.service = BipService(self.driver, self.bearer, tracer=tracer)
        self.commands = ModemCommands(self.driver, self.network)
        self.opener = LineOpener(options.port, options.baud, who="bipsim cp", wait=options.wait_for_line)
        self._first_line: trio.abc.Stream | None = None

    @property
    def line_opened(self) -> int:
        return self.opener.opened

    async def open_line(self) -> None:
        """Opens the line before run(): raises LineUnavailable when it is not there (see ModemOptions)."""
        self._first_line = await self.opener.open()

    async def run(self) -> int:
        """Runs until cancelled, or (with once) until the card's first BIP session ended. Returns an exit code."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._line_loop)
            with trio.move_on_after(self.options.wait_for_ap):
                await self.proxy.ready.wait()
            if not self.proxy.ready.is_set():
                self.tracer.emit(
                    Actor.CP,
                    Actor.AP,
                    Layer.APP,
                    "the AP never attached its proxy",
                    error=True,
                    kind=Kind.APP_EVENT,
                    fields={"event": "ap_not_attached"},
                )
            if self.options.start_delay:
                await trio.sleep(self.options.start_delay)
                with trio.move_on_after(self.options.wait_for_ap):
                    await self.proxy.ready.wait()
            await nursery.start(self.service.run)
            if self.options.once:
                await self.service.session_finished.wait()
                await trio.sleep(0.3)  # let the last envelopes and the card's state save complete
                nursery.cancel_scope.cancel()
        return 0

    async def _line_loop(self) -> None:
        while True:
            line, self._first_line = self._first_line or await self.opener.open(), None
            service = LineService(
                line,
                self.commands,
                self.proxy,
                tracer=self.tracer,
                port=self.options.port,
                count=self.line_opened,
            )
            try:
                await service.run()
            except* (trio.BrokenResourceError, trio.ClosedResourceError, MuxError):
                # a write (an AT answer, a frame) met the line going away: reopen it like an end of file
                service.closed("went away")
            except* Exception as group:
                # a bug in the line's session ends that session, not the CP: the line is served again
                self.tracer.emit(
                    Actor.CP,
                    Actor.AP,
                    Layer.APP,
                    f"line session failed: {group.exceptions[0]!r}",
                    error=True,
                    kind=Kind.APP_ERROR,
                    fields={"where": "line session", "error": repr(group.exceptions[0])},
                )
                service.closed("failed")
            finally:
                await line.aclose()
            await trio.sleep(REOPEN_INTERVAL)


def simulated_card(
    profile_path: str | None,
    state_path: str | None,
    tracer: Tracer,
    extra_channels: list[tuple[str, int]] | None = None,
) -> tuple[ApduTransport, object]:
    """The simulated UICC with its BIP engine and OTA agent, from a card profile.

    `extra_channels` (host, port): OTA servers the card also runs an admin session with, each on its own BIP
    channel at the same time as the profile's (TS 102 223 allows up to 7 channels).
    """
    from dataclasses import replace

    from bipsim.uicc.bip_engine import BipConfig, BipEngine, LinkMode, MultiChannelEngine
    from bipsim.uicc.card import SimCard
    from bipsim.uicc.gp_registry import GpRegistry
    from bipsim.uicc.ota_agent import OtaAgent
    from bipsim.uicc.profile import load_profile
    from bipsim.uicc.sim_transport import SimulatedCard

    profile = load_profile(profile_path)
    card = SimCard(profile, state_path=Path(state_path) if state_path else None)
    registry = GpRegistry()
    card.attach_state("gp", registry)
    agent = OtaAgent.of_profile(card, registry, tracer=tracer)
    config = BipConfig(
        host=profile.ota_host,
        port=profile.ota_port,
        bearer_type=profile.bearer_type,
        bearer_parameters=bytes.fromhex(profile.bearer_parameters_hex),
        buffer_size=profile.buffer_size,
        apn=profile.apn,
        login=profile.login,
        password=profile.password,
        link_mode=LinkMode(profile.link_mode),
    )
    engine = BipEngine(config, agent, trigger_on_profile=profile.trigger == "power-on")
    if not extra_channels:
        card.toolkit = engine if profile.trigger != "sms" else sms_trigger(card, engine, profile)
        return SimulatedCard(card), agent
    engines = [engine]
    for host, port in extra_channels:
        extra = OtaAgent.of_profile(card, registry, host=host, tracer=tracer)
        engines.append(BipEngine(replace(config, host=host, port=port), extra))
    card.toolkit = MultiChannelEngine(engines)
    return SimulatedCard(card), agent


def sms_trigger(card: SimCard, engine: BipEngine, profile: CardProfile) -> SmsTriggerToolkit:
    """The card's toolkit for trigger = "sms": SMS-PP DOWNLOAD envelopes are secured packets checked with the
    profile's OTA key set (TS 102 225); a good PUSH starts the engine's session. The replay counters persist in the
    card state ("ota_counters")."""
    from bipsim.uicc.ota_trigger import ISD_TAR, Counters, Keyset, SmsTriggerToolkit

    counters = Counters()
    card.attach_state("ota_counters", counters)
    kvn, kic, kid = profile.ota_keyset
    toolkit = SmsTriggerToolkit(
        engine,
        [Keyset(kvn, kic, kid)],
        counters,
        other_apdu=card.internal_apdu,
        require_cc=profile.ota_require_cc,
        require_cipher=profile.ota_require_cipher,
        require_counter=profile.ota_require_counter,
    )
    tar = bytes.fromhex(profile.ota_tar_hex)
    if tar != ISD_TAR:  # the issuer security domain answers at the profile's TAR
        toolkit.receiver.tars = {tar: toolkit.receiver.tars.pop(ISD_TAR)}
    return toolkit
