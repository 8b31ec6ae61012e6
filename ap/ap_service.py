"""The AP process: opens the line, brings the modem into CMUX, runs the RIL on DLC 1 and the proxy service on
DLC 2, accepts the CP's data DLCs, and starts over (reopen, re-probe, new multiplexer) whenever the line goes away.

Trace events: sms.pp for each SMS-DELIVER handed to the CP (AT%SMSPP, docs/protocols.md "Vendor extension on
DLC 1"), sms.por for the card's Proof of Receipt it answers (field status: the TS 102 225 response status code in
hex, absent when the PoR is unreadable), app.error when a modem session fails, line.closed when the line goes away.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from bipsim.ap.apn_db import ApnDatabase
from bipsim.ap.line_client import ModemNotAnswering, open_session, probe_and_switch, setup_channel
from bipsim.ap.network import ApNetwork
from bipsim.ap.omapi.control import ControlServer
from bipsim.ap.omapi.stack import OmapiOptions, OmapiStack
from bipsim.ap.proxy import ProxyService
from bipsim.ap.ril import Ril
from bipsim.ap.sync.service import SyncOptions
from bipsim.ap.toolkit import ToolkitService
from bipsim.ap.upgrade.agent import UpgradeAgent, UpgradeOptions
from bipsim.cp.modem import REOPEN_INTERVAL, LineOpener
from bipsim.link.at_chat import AtChat
from bipsim.link.cmux import CmuxParams, Mux, MuxError, MuxRole
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer

if TYPE_CHECKING:
    from bipsim.ap.lpa.lpa import LpaOptions, LpaService

# a large N1 keeps the framing overhead of BIP data small (AT+CMUX allows up to 32768)
DEFAULT_CMUX = CmuxParams(n1=1500, t1=0.1, n2=3, t2=0.3)


@dataclass
class ApOptions:
    port: str
    baud: int = 115200
    cmux: CmuxParams = DEFAULT_CMUX
    wait_for_line: bool = False  # at start, wait for a line that is not there yet instead of failing
    # SMS-DELIVER TPDUs the network sends once the modem is up (AT%SMSPP on DLC 1): e.g. an OTA push trigger
    push_sms: tuple[bytes, ...] = ()
    # the OMAPI stack (docs/protocols.md, "OMAPI on the AP"); None: the AP offers no OMAPI
    omapi: OmapiOptions | None = None
    # the SIM toolkit policy (ap/toolkit.py: accept, refuse, select:N, script:FILE); None: the AP has no toolkit
    toolkit: str | None = None
    # the Wi-Fi link model of the proxy's relay (--wlan, the --radio grammar of net/radio.py) and its seed
    wlan: str | None = None
    seed: int = 0
    # the SIM data sync service (docs/protocols.md, "SIM data sync"); None: the AP does not sync
    sync: SyncOptions | None = None
    # the upgrade agent (docs/protocols.md, "The upgrade agent"); None: the AP takes no release notices
    upgrade: UpgradeOptions | None = None
    # the LPA's profile download with the cloud backup (docs/protocols.md, "eUICC and the cloud backup")
    lpa: LpaOptions | None = None


SMS_RETRY = 0.5  # seconds between AT%SMSPP attempts while the CP's card is still starting (+CME ERROR: 14)
SMS_ATTEMPTS = 40


class ApplicationProcessor:
    def __init__(
        self, options: ApOptions, network: ApNetwork, apns: ApnDatabase, *, tracer: Tracer = NULL_TRACER
    ) -> None:
        self.options = options
        self.network = network
        self.tracer = tracer
        self.ril: Ril | None = None
        self.proxy = ProxyService(network, apns, self._imsi, tracer=tracer)
        if options.wlan is not None:
            from bipsim.ap.wlan import WlanLink
            from bipsim.net.radio import parse_link_spec

            self.proxy.wlan = WlanLink(parse_link_spec(options.wlan), options.seed, tracer=tracer)
        self.sessions = 0
        self.sms_sent = 0
        self.attached = trio.Event()
        self.opener = LineOpener(options.port, options.baud, who="bipsim ap", wait=options.wait_for_line)
        self._first_line: trio.abc.Stream | None = None
        self.omapi = OmapiStack(options.omapi, tracer=tracer) if options.omapi is not None else None
        self.toolkit: ToolkitService | None = None  # the SIM toolkit of the current modem session
        self.upgrade = UpgradeAgent(options.upgrade, tracer, network) if options.upgrade is not None else None
        self.lpa: LpaService | None = None
        if options.lpa is not None:
            from bipsim.ap.lpa.lpa import LpaService

            self.lpa = LpaService(options.lpa, tracer)

    async def _imsi(self) -> str:
        if self.ril is None:
            raise LookupError("no modem session")
        return await self.ril.read_imsi()

    async def open_line(self) -> None:
        """Opens the line before run(): raises LineUnavailable when it is not there (unless wait_for_line)."""
        self._first_line = await self.opener.open()

    async def run(self) -> None:
        if (self.omapi is None or self.omapi.options.listen is None) and self.upgrade is None:
            await self._run_lines()
            return
        async with trio.open_nursery() as nursery:
            if self.omapi is not None and self.omapi.options.listen is not None:
                host, port = self.omapi.options.listen
                await nursery.start(ControlServer(self.omapi, tracer=self.tracer).serve, host, port)
            if self.upgrade is not None:  # from boot, beside the modem sessions (ap/upgrade/agent.py)
                nursery.start_soon(self.upgrade.run)
                nursery.start_soon(self.upgrade.ip_push)
                if self.upgrade.options.check:
                    nursery.start_soon(self._active_check, self.upgrade)
            await self._run_lines()

    async def _active_check(self, agent: UpgradeAgent) -> None:
        """Embodiment 3 once the agent knows its IMEI (from the first modem session)."""
        await agent.imei_known.wait()
        await agent.active_check()

    async def _run_lines(self) -> None:
        while True:
            line, self._first_line = self._first_line or await self.opener.open(), None
            try:
                await self._session(line)
            except* (ModemNotAnswering, MuxError) as group:
                self.tracer.emit(
                    Actor.AP,
                    Actor.CP,
                    Layer.APP,
                    f"modem session failed: {group.exceptions[0]}",
                    error=True,
                    kind=Kind.APP_ERROR,
                    fields={"where": "modem session", "error": repr(group.exceptions[0])},
                )
            except* (trio.BrokenResourceError, trio.ClosedResourceError):
                # a write met the line going away (the CP restarted, the cable was pulled): start over
                self.tracer.emit(
                    Actor.AP,
                    Actor.CP,
                    Layer.LINE,
                    "the serial line went away",
                    error=True,
                    kind=Kind.LINE_CLOSED,
                    fields={"port": self.options.port, "count": self.opener.opened, "reason": "went away"},
                )
            finally:
                await line.aclose()
            await trio.sleep(REOPEN_INTERVAL)

    async def _session(self, line: trio.abc.Stream) -> None:
        await probe_and_switch(line, self.options.cmux, tracer=self.tracer)
        mux = Mux(
            line,
            role=MuxRole.INITIATOR,
            params=self.options.cmux,
            tracer=self.tracer,
            local=Actor.AP,
            remote=Actor.CP,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mux.run)
            session = await open_session(mux)
            self.sessions += 1
            chat = AtChat(session.modem, tracer=self.tracer, local=Actor.AP, remote=Actor.CP)
            self.ril = Ril(chat)
            nursery.start_soon(chat.run)
            await setup_channel(chat)
            nursery.start_soon(self.ril.run)
            await self.ril.ready.wait()
            nursery.start_soon(self.proxy.serve, session.proxy)
            nursery.start_soon(self._accept, mux)
            if self.omapi is not None:
                nursery.start_soon(self.omapi.start, chat)  # power-on of the OMAPI side on this modem session
            if self.options.toolkit is not None:  # the host's SIM toolkit (27.007 section 12, ap/toolkit.py)
                from bipsim.ap.toolkit import HostToolkit, Policy

                toolkit = HostToolkit(Policy.parse(self.options.toolkit))
                self.toolkit = ToolkitService(chat, toolkit, tracer=self.tracer)
                nursery.start_soon(self.toolkit.run)
            if self.upgrade is not None:  # the upgrade agent's SMS notices (27.005 +CNMI, +CMTI, +CMGR)
                nursery.start_soon(self.upgrade.listen, chat)
            if self.options.sync is not None:  # the SIM data sync watches card presence on DLC 1 (ap/sync/)
                nursery.start_soon(self.options.sync.service(chat, self.tracer).watch, self.options.sync.poll)
            if self.lpa is not None:  # the LPA's ES10 over +CCHO/+CGLA on DLC 1; resumes on each session
                nursery.start_soon(self.lpa.session, chat)
            self.attached.set()
            if self.sms_sent < len(self.options.push_sms):  # once per process, not again after a line drop
                nursery.start_soon(self._push_sms, chat)
            while not mux.closed:
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        if self.omapi is not None:
            self.omapi.stop()
        self.ril = None
        self.attached = trio.Event()

    async def _push_sms(self, chat: AtChat) -> None:
        """Hands each SMS to the CP as the network would deliver it; the answer carries the card's PoR."""
        while self.sms_sent < len(self.options.push_sms):
            tpdu = self.options.push_sms[self.sms_sent]
            self.tracer.emit(
                Actor.AP,
                Actor.CP,
                Layer.SMS,
                f"SMS-PP data download: {len(tpdu)} bytes",
                tpdu,
                kind=Kind.SMS_PP,
                fields={"length": len(tpdu)},
            )
            for _ in range(SMS_ATTEMPTS):
                response = await chat.command(f'AT%SMSPP="{tpdu.hex().upper()}"')
                if response.cme_error != 14:
                    break
                await trio.sleep(SMS_RETRY)
            self.sms_sent += 1
            if not response.ok:
                self.tracer.emit(
                    Actor.AP,
                    Actor.CP,
                    Layer.SMS,
                    f"SMS-PP not delivered: {response.final}",
                    error=True,
                    kind=Kind.APP_EVENT,
                    fields={"event": "sms_not_delivered", "final": response.final},
                )
                continue
            por_hex = next((line.split('"')[1] for line in response.lines if line.startswith("%SMSPP:")), "")
            try:
                por = bytes.fromhex(por_hex)
            except ValueError:
                por = b""
            status = por_status(por)
            self.tracer.emit(
                Actor.CP,
                Actor.AP,
                Layer.SMS,
                f"SMS-PP PoR: {por_summary(por)}",
                por,
                kind=Kind.SMS_POR,
                fields={"status": f"{status:02X}"} if status is not None else {},
            )

    async def _accept(self, mux: Mux) -> None:
        while True:
            try:
                dlc = await mux.accept_dlc()
            except MuxError:
                return
            if 3 <= dlc.dlci <= 9:
                self.proxy.data_dlc(dlc)
            else:
                await dlc.aclose()


def por_status(user_data: bytes) -> int | None:
    """The response status code of an unciphered PoR (TS 102 225 table 5.5), None when it is not one."""
    if user_data[:3] != b"\x02\x71\x00" or len(user_data) < 16:
        return None
    return user_data[15]


def por_summary(user_data: bytes) -> str:
    """'status 00' etc. for an unciphered PoR (TS 31.115 4.4: UDH 02 71 00, RPL, RHL, TAR, CNTR, PCNTR, status)."""
    if not user_data:
        return "none"
    if user_data[:3] != b"\x02\x71\x00" or len(user_data) < 16:
        return f"unreadable ({user_data.hex().upper()})"
    return f"status {user_data[15]:02X} ({user_data.hex().upper()})"
