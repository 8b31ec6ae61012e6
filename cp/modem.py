"""The CP process: the card (simulated, or recorded for replay), the 27.007 modem on the serial line, and the BIP
service on the chosen bearer. The line must be there at start (LineUnavailable, one clear line from the CLI) unless
`wait_for_line` is set (a bench where the adapter appears later); once opened, it is reopened whenever it goes away
(a USB-serial adapter unplugged, the pty pair restarted), and the wait is said once on stderr. The card is powered on
once the AP has attached its proxy (DLC 2), as a phone's modem starts its SIM toolkit once the application processor
is up.

No exception of a session ends the process: a line session that fails is traced (app.error) and the line served
again; the BIP service contains its channels' and its card's failures itself (cp/bip_service.py).

Cards sit in slots (cp/card_slot.py): slot 1 holds the card that runs the toolkit (TERMINAL PROFILE, the FETCH loop,
BIP), an optional slot 2 a card that only answers the SIM AT commands. A card that goes away ends the BIP service's
channels; the modem keeps answering AT (+CME ERROR: 10 for the SIM commands of that slot) and tries power-on again
with backoff until the card is back, then starts it again as at boot. A simulated card can be pulled and put back
from outside the process through the card-control socket (serve_card_control, `bipsim cp --card-control PATH`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from bipsim.cp.bearer import Bearer
from bipsim.cp.bearer_ap_proxy import ApProxyBearer
from bipsim.cp.bearer_own_stack import OwnStackBearer, PacketPlane, PlaneOptions
from bipsim.cp.bip_service import DISCONNECT_TIME, BipService
from bipsim.cp.card_slot import RETRY_MAX, RETRY_MIN, CardSlot
from bipsim.cp.command_sets import build_command_sets
from bipsim.cp.commands import ModemCommands
from bipsim.cp.line_service import LineService
from bipsim.cp.local_info import LocalInfo
from bipsim.cp.network import CellularNetwork
from bipsim.cp.proxy_link import ProxyLink
from bipsim.link.cmux import MuxError
from bipsim.link.line_requests import serve_line_requests
from bipsim.link.pty import open_line
from bipsim.link.tcp_line import TcpLineListener
from bipsim.net.smsc import serve_control
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.transport import ApduTransport, CardRemoved

if TYPE_CHECKING:
    from bipsim.uicc.bip_engine import BipEngine
    from bipsim.uicc.card import SimCard
    from bipsim.uicc.ota_agent import OtaAgent
    from bipsim.uicc.ota_trigger import Counters, SmsTriggerToolkit
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
    card_control: str | None = None  # a UNIX socket path: serve_card_control's 'remove N' / 'insert N'
    # (host, port) of the SMSC's control socket (net/smsc.py serve_control, `bipsim cp --sms-listen`)
    sms_listen: tuple[str, int] | None = None
    # options of the command sets of cp/command_sets.py (e.g. "dialect"), keyed by option name
    command_settings: dict[str, object] = field(default_factory=dict)
    # the TERMINAL PROFILE slot 1's card gets (uicc/terminal_profile.py); None: the `bip-only` profile
    terminal_profile: bytes | None = None
    # (host, port): serve the line on a TCP socket instead of `port` (link/tcp_line.py, one client at a time)
    listen: tuple[str, int] | None = None
    # the packet data plane of embodiment 1 (docs/protocols.md, "The packet data plane"): the radio bearer's link
    # model, the packet gateway's mode (nat | tun; host: no plane, host sockets) and the seed of loss and jitter
    radio: str = "ideal"
    network: str = "nat"
    seed: int = 0
    # tun mode: (port, host, host port) relays from 203.0.113.10:port in the namespace to the host (--tun-relay)
    tun_relays: tuple[tuple[int, str, int], ...] = ()


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
    """Embodiment 2 when the AP's proxy can connect (it answers +CME ERROR: 30 without Wi-Fi), else embodiment 1.
    A UDP channel or the UICC server mode, which the proxy does not carry, goes to embodiment 1 at once."""

    name = "auto"
    serves_uicc_server_mode = True

    def __init__(self, proxy: ApProxyBearer, own: OwnStackBearer) -> None:
        self.proxy, self.own = proxy, own
        self.embodiment = 2
        self._used: dict[int, Bearer] = {}
        self.dns_servers = own.dns_servers  # what an OPEN CHANNEL asking for DNS servers is told

    async def connect(self, channel: int, request: object) -> trio.abc.Stream:
        from bipsim.cp.bearer import LinkError
        from bipsim.uicc.cat import OpenChannel, TerminalProblem, TransportProtocol

        assert isinstance(request, OpenChannel)
        if request.protocol == TransportProtocol.TCP_CLIENT_REMOTE:
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


def make_bearer(
    kind: str,
    proxy: ProxyLink,
    network: CellularNetwork,
    tracer: Tracer,
    plane: PacketPlane | None = None,
) -> Bearer:
    own = OwnStackBearer(proxy, network, tracer=tracer, plane=plane)
    ap = ApProxyBearer(proxy, tracer=tracer)
    if kind == "own-stack":
        return own
    if kind == "ap-proxy":
        return ap
    return AutoBearer(ap, own)


class Modem:
    """The CP. `card` is slot 1's card (the toolkit's); `card2`, when given, makes a slot 2 (cp.card_slot.NoCard
    for an empty one)."""

    def __init__(
        self,
        options: ModemOptions,
        card: ApduTransport,
        *,
        tracer: Tracer = NULL_TRACER,
        card2: ApduTransport | None = None,
    ) -> None:
        self.options = options
        self.tracer = tracer

        def notice(text: str) -> None:
            _stderr(f"bipsim cp: {text}")

        self.slots = [CardSlot(1, card, tracer=tracer, notice=notice)]
        if card2 is not None:
            self.slots.append(CardSlot(2, card2, tracer=tracer, notice=notice))
        self.driver = self.slots[0].driver
        if options.terminal_profile is not None:
            self.driver.profile = options.terminal_profile
        self.network = CellularNetwork()
        self.network.smsc.tracer = tracer
        self.proxy = ProxyLink()
        # --network host: no packet plane, the CP connects from host sockets as before it had one (comparisons)
        self.plane = (
            None
            if options.network == "host"
            else PacketPlane(
                self.network,
                PlaneOptions(options.radio, options.network, options.seed, options.tun_relays),
                tracer=tracer,
            )
        )
        self.bearer = make_bearer(options.bearer, self.proxy, self.network, tracer, self.plane)
        self.service = BipService(self.driver, self.bearer, tracer=tracer)
        self.commands = ModemCommands(self.driver, self.network, slots=self.slots)
        self.commands.command_sets = build_command_sets(self.commands, tracer, options.command_settings)
        # without an AP a card's channel takes the host's +CGDCONT/+CGAUTH context (cp/pdp_choice.py)
        own = self.bearer if isinstance(self.bearer, OwnStackBearer) else getattr(self.bearer, "own", None)
        if isinstance(own, OwnStackBearer):
            commands = self.commands
            own.host_contexts = lambda: (commands.definitions, commands.authentications)
        for command_set in self.commands.command_sets:  # a set that serves the card's toolkit (USAT) hooks in
            attach = getattr(command_set, "attach_service", None)
            if attach is not None:
                attach(self.service)
            attach_plane = getattr(command_set, "attach_plane", None)  # data calls route through the plane
            if attach_plane is not None:
                attach_plane(self.plane)
        self.service.gateway.local_info = _local_info(self.network)  # PROVIDE LOCAL INFORMATION's answers
        smsc = getattr(self.network, "smsc", None)  # SEND SHORT MESSAGE goes to the network's SMSC
        if smsc is not None and hasattr(smsc, "submit"):
            self.service.sms_submit = lambda tpdu: int(smsc.submit(tpdu, origin="uicc"))
            self.service.sms_centre = str(getattr(smsc, "address", "") or "")
        self.opener: LineOpener | TcpLineListener
        if options.listen is not None:
            self.opener = TcpLineListener(*options.listen, who="bipsim cp")
        else:
            self.opener = LineOpener(options.port, options.baud, who="bipsim cp", wait=options.wait_for_line)
        self._first_line: trio.abc.Stream | None = None
        self._bound = False

    @property
    def line_opened(self) -> int:
        return self.opener.opened

    @property
    def line_name(self) -> str:
        """The line as traces name it: the --port path, or tcp://HOST:PORT with --listen."""
        return self.opener.name if isinstance(self.opener, TcpLineListener) else self.options.port

    @property
    def line_ready(self) -> bool:
        """open_line() succeeded: the line is open, or (with --listen) the socket is bound."""
        return self.line_opened > 0 or (isinstance(self.opener, TcpLineListener) and self._bound)

    async def open_line(self) -> None:
        """Opens the line before run(): raises LineUnavailable when it is not there (see ModemOptions). With
        --listen it binds the socket (LineUnavailable when the address is taken); the clients come in run()."""
        if isinstance(self.opener, TcpLineListener):
            try:
                await self.opener.bind()
            except OSError as exc:
                raise LineUnavailable(f"--listen {self.opener.name}: {_why(exc)}", absent=False) from None
            self._bound = True
            return
        self._first_line = await self.opener.open()

    async def run(self) -> int:
        """Runs until cancelled, or (with once) until the card's first BIP session ended. Returns an exit code."""
        async with trio.open_nursery() as nursery:
            if self.plane is not None:
                await nursery.start(self.plane.run)  # the packet gateway, before any channel needs it
            nursery.start_soon(self.network.smsc.run)  # MT SMS to whichever command set subscribed
            if self.options.sms_listen is not None:
                await nursery.start(serve_control, self.network.smsc, *self.options.sms_listen)
            nursery.start_soon(self._line_loop)
            for slot in self.slots[1:]:
                nursery.start_soon(slot.keep_powered)
            if self.options.card_control:
                await nursery.start(
                    partial(serve_card_control, plane=self.plane), self.options.card_control, self.slots
                )
            early = trio.CancelScope()
            nursery.start_soon(self.watch_before_toolkit, early)
            # our AP attaches its proxy within wait_for_ap; a standard host on the plain line ends the wait at
            # once (docs/protocols.md "BIP with a standard host"): the card's TERMINAL PROFILE is not held for it
            with trio.move_on_after(self.options.wait_for_ap):
                await self.proxy.settled.wait()
            if not self.proxy.ready.is_set():
                self.proxy.give_up("the AP never attached its proxy")
                self.tracer.emit(
                    Actor.CP,
                    Actor.AP,
                    Layer.APP,
                    f"no AP proxy: {self.proxy.absent_reason}",
                    error=True,
                    kind=Kind.APP_EVENT,
                    fields={"event": "ap_not_attached", "reason": self.proxy.absent_reason},
                )
            if self.options.start_delay:
                await trio.sleep(self.options.start_delay)
                with trio.move_on_after(self.options.wait_for_ap):
                    await self.proxy.ready.wait()
            early.cancel()
            await nursery.start(self.keep_toolkit)
            if self.options.once:
                await self.service.session_finished.wait()
                await trio.sleep(0.3)  # let the last envelopes and the card's state save complete
                # and the links' closes (a FIN and its answer take a round trip of a slow radio)
                await self.service.links_closed(DISCONNECT_TIME)
                nursery.cancel_scope.cancel()
        return 0

    async def watch_before_toolkit(self, scope: trio.CancelScope) -> None:
        """Until the toolkit starts (the AP attached): a slot-1 card that goes away is powered on again when it is
        back (retries with backoff, at once on an insert notice), so +CPIN answers READY again before the AP is up.
        Cancelled through `scope` when keep_toolkit takes over."""
        slot = self.slots[0]
        with scope:
            delay = RETRY_MIN
            while True:
                await slot.wait_gone()
                await slot.wait_for_card(delay)
                try:
                    await slot.power_on()
                except CardRemoved:
                    delay = min(2 * delay, RETRY_MAX)
                else:
                    delay = RETRY_MIN

    async def keep_toolkit(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Runs slot 1's card: the BIP service until the card goes away, then power-on retries with backoff (at
        once on an insert notice) until it is back, and the service again (TERMINAL PROFILE first). Started once
        the first run has started (or found no card). Returns only when the service ended with the card still
        there (a card that would not start: the modem goes on answering AT, as before slots existed)."""
        slot = self.slots[0]
        status = task_status
        delay = RETRY_MIN
        while True:
            powered = slot.powered
            await self.service.run(task_status=status)
            status = trio.TASK_STATUS_IGNORED
            if not slot.absent:
                return
            if slot.powered != powered:
                delay = RETRY_MIN  # the card was there for this run: a new absence starts the backoff again
            await slot.wait_for_card(delay)
            delay = min(2 * delay, RETRY_MAX)

    async def _line_loop(self) -> None:
        try:
            await self._serve_lines()
        finally:
            if isinstance(self.opener, TcpLineListener):
                self.opener.close()

    async def _serve_lines(self) -> None:
        while True:
            line, self._first_line = self._first_line or await self.opener.open(), None
            service = LineService(
                line,
                self.commands,
                self.proxy,
                tracer=self.tracer,
                port=self.line_name,
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


def _local_info(network: CellularNetwork) -> LocalInfo:
    """What PROVIDE LOCAL INFORMATION reports: the network model's operator and cell, the modem's identity."""
    from bipsim.cp.commands import CELL_ID, IMEI, LAC_TAC, SVN

    config = network.config
    return LocalInfo(config.mcc, config.mnc, int(LAC_TAC, 16), int(CELL_ID, 16), config.rat, IMEI, SVN)


def card_control_answer(line: str, slots: list[CardSlot], plane: PacketPlane | None = None) -> str:
    """Sans-IO: one line of the card-control socket in, its answer out (docs/protocols.md, "Card slots and card
    presence on DLC 1"). 'remove N' pulls slot N's simulated card, 'insert N' puts it back, 'slots' lists each
    slot's presence ("1=ready 2=absent"). With the CP's packet data plane (docs/protocols.md, "The packet data
    plane"): 'contexts' lists the active packet data contexts ("1=198.51.100.2"), 'deactivate CID' has the network
    end one, and 'radio SPEC' gives every radio bearer new link figures (an outage is 'radio ideal,loss=1').
    'euicc-fault N K' has slot N's eUICC abort its next install at BPP segment K (0: no fault)."""
    from bipsim.uicc.sim_transport import SimulatedCard

    words = line.split()
    by_number = {slot.number: slot for slot in slots}
    if words == ["slots"]:
        return "ok " + " ".join(f"{slot.number}={slot.state.value}" for slot in slots)
    if plane is not None and words == ["contexts"]:
        return "ok " + " ".join(f"{cid}={c.address}" for cid, c in sorted(plane.network.contexts.items()))
    if plane is not None and len(words) == 2 and words[0] == "deactivate" and words[1].isdigit():
        if not plane.network.network_deactivate(int(words[1]), "deactivated by the network (card control)"):
            return f"error no active context {words[1]}"
        return f"ok deactivate {words[1]}"
    if plane is not None and len(words) == 2 and words[0] == "radio":
        try:
            profile = plane.set_radio(words[1])
        except ValueError as exc:
            return f"error {exc}"
        return f"ok radio {profile}"
    if len(words) == 3 and words[0] == "euicc-fault" and words[1].isdigit() and words[2].isdigit():
        # the eUICC's install fault (docs/protocols.md, "eUICC and the cloud backup"): BPP segment K, 0 for none
        slot = by_number.get(int(words[1]))
        card = slot.transport if slot is not None else None
        if not isinstance(card, SimulatedCard) or not card.card.set_euicc_fault(int(words[2])):
            return f"error slot {words[1]} has no simulated eUICC"
        return f"ok euicc-fault {words[1]} {int(words[2])}"
    if len(words) != 2 or words[0] not in ("remove", "insert") or not words[1].isdigit():
        return "error use: remove N, insert N, slots or euicc-fault N K"
    slot = by_number.get(int(words[1]))
    if slot is None:
        return f"error no slot {words[1]}"
    card = slot.transport
    if not isinstance(card, SimulatedCard):
        return f"error slot {slot.number}'s card is not a simulated one: pull it by hand"
    if words[0] == "remove":
        card.remove()
    else:
        card.insert()
    return f"ok {words[0]} {slot.number}"


def check_card_control_path(path: str) -> None:
    """Raises ValueError (one line for the user) unless `path` can be the card-control socket: short enough for a
    UNIX socket address, in a folder that exists, and not an existing file other than a socket."""
    import os
    import stat

    if len(os.fsencode(path)) > 100:
        raise ValueError(f"{path}: too long for a UNIX socket path (at most 100 bytes)")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ValueError(f"{path}: no folder {folder}")
    if os.path.lexists(path) and not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise ValueError(f"{path}: exists and is not a socket")


async def serve_card_control(
    path: str,
    slots: list[CardSlot],
    *,
    plane: PacketPlane | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The card-control socket (`bipsim cp --card-control PATH`): a UNIX stream socket, one command a line, one
    answer a line (card_control_answer). A UNIX socket is reachable only on this machine, by its file's mode."""
    import os

    check_card_control_path(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    if os.path.exists(path):
        os.unlink(path)  # a stale socket of an earlier run (check_card_control_path: nothing else)
    await sock.bind(path)
    sock.listen()
    listener = trio.SocketListener(sock)

    async def answer(line: bytes) -> bytes:
        return card_control_answer(line.decode("utf-8", "replace"), slots, plane).encode()

    async def handle(stream: trio.SocketStream) -> None:
        # a line past 4096 bytes is no command: the peer is not speaking this protocol
        await serve_line_requests(stream, answer, max_line=4096)

    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(handle, [listener], handler_nursery=nursery)
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()
        if os.path.exists(path):
            os.unlink(path)


def simulated_card(
    profile_path: str | None,
    state_path: str | None,
    tracer: Tracer,
    extra_channels: list[tuple[str, int]] | None = None,
    bip_app: str | None = None,
) -> tuple[ApduTransport, object]:
    """The simulated UICC with its BIP engine and OTA agent, from a card profile.

    `extra_channels` (host, port): OTA servers the card also runs an admin session with, each on its own BIP
    channel at the same time as the profile's (TS 102 223 allows up to 7 channels).

    `bip_app`: a BIP probe runs on the card instead of the OTA agent (uicc/bip_probes.py: a UDP client, a DNS
    lookup, or an echo service in the UICC server mode); ValueError for a spec it does not read.

    The card can be pulled and put back (SimulatedCard.remove/insert): at its first power-on after that its
    toolkit (BIP engines, OTA agents) is built again, as a card without power loses its sessions; its files, GP
    registry and OTA counters are kept. The agent returned is the first one.
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
    counters = sms_counters(card) if profile.trigger == "sms" and not extra_channels else None

    # a BIP probe instead of the OTA agent (uicc/bip_probes.py): a bad spec is a ValueError now, not at power-on
    if bip_app is not None:
        from bipsim.uicc.bip_probes import probe

        probe(bip_app, config)

    def build_toolkit(agent: OtaAgent) -> None:
        if bip_app is not None:
            from bipsim.uicc.bip_probes import probe

            probe_config, client = probe(bip_app, config)
            card.toolkit = BipEngine(probe_config, client)
            return
        engine = BipEngine(config, agent, trigger_on_profile=profile.trigger == "power-on")
        if not extra_channels:
            card.toolkit = engine if counters is None else sms_trigger(card, engine, profile, counters)
            if profile.usat_menu:  # the SIM toolkit menu applet around the BIP toolkit (uicc/usat_menu.py)
                from bipsim.uicc.usat_menu import MenuToolkit

                card.toolkit = MenuToolkit(card.toolkit)
            return
        engines = [engine]
        for host, port in extra_channels:
            extra = OtaAgent.of_profile(card, registry, host=host, tracer=tracer)
            engines.append(BipEngine(replace(config, host=host, port=port), extra))
        card.toolkit = MultiChannelEngine(engines)

    build_toolkit(agent)
    transport = SimulatedCard(card)
    transport.on_power_loss = lambda _: build_toolkit(OtaAgent.of_profile(card, registry, tracer=tracer))
    return transport, agent


def sms_counters(card: SimCard) -> Counters:
    """The card's OTA replay counters (TS 102 225), persisted in its state as "ota_counters"."""
    from bipsim.uicc.ota_trigger import Counters

    counters = Counters()
    card.attach_state("ota_counters", counters)
    return counters


def sms_trigger(
    card: SimCard, engine: BipEngine, profile: CardProfile, counters: Counters | None = None
) -> SmsTriggerToolkit:
    """The card's toolkit for trigger = "sms": SMS-PP DOWNLOAD envelopes are secured packets checked with the
    profile's OTA key set (TS 102 225); a good PUSH starts the engine's session. The replay counters persist in the
    card state ("ota_counters"); a toolkit built again after a power loss keeps the card's `counters`."""
    from bipsim.uicc.ota_trigger import ISD_TAR, Keyset, SmsTriggerToolkit

    if counters is None:
        counters = sms_counters(card)
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
