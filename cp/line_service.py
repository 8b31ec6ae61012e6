"""The CP's serial line runtime: plain V.250 AT until AT+CMUX=0, then 3GPP TS 27.010 multiplexing as responder
with the 27.007 command set on DLC 1 and the AP proxy's control channel on DLC 2; after a close-down the line is
plain AT again. Returns when the line reaches end of file (the caller reopens it).

Hand-over: the line is wrapped once in a PushbackStream; what the AT server read behind AT+CMUX=0 (the first
frames, when the AP writes them at once) and what the multiplexer read behind its closing frame (AT text) is pushed
back for the next user, so no byte is lost at a switch.

Trace events: line.open when the process's line is first served (fields port, count 1), line.reopened when it is
served again after it went away (fields port, count: how many times it has been opened), line.closed when it ends
(fields port, count, reason "eof" or "went away").

Settings: each channel has its own V.250/27.007 profile (E, V, Q, +CMEE, S3, S4, S5), as on real modems. DLC 1's AT
server starts from a copy of the line's profile when it opens (so AT+CMEE=1 sent before AT+CMUX still gives
+CME ERROR: <n> on DLC 1), and the plain line keeps its own profile across a multiplexer session (V.250 section
6.2.4: settings last until Z or &F), restored after close-down.
"""

from __future__ import annotations

import trio

from bipsim.cp.commands import ModemCommands
from bipsim.cp.proxy_link import ProxyLink
from bipsim.link.at_chat import AtChat
from bipsim.link.at_server import AtServer, AtSettings
from bipsim.link.at_syntax import AtRequest
from bipsim.link.cmux import CmuxParams, DlcStream, Mux, MuxRole
from bipsim.link.pushback import PushbackStream
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer

PROXY_DLCI = 2


# packet domain commands on the plain line: a standard host setting up or using its data context (3GPP TS 27.007
# 10.1); our AP sends only AT, ATE0, AT+CMEE=1 and AT+CMUX there (ap/line_client.py probe_and_switch)
STANDARD_HOST_COMMANDS = frozenset({"+CGDCONT", "+CGAUTH", "+CGACT", "+CGATT", "+CGDATA", "D"})


class LineService:
    def __init__(
        self,
        line: trio.abc.Stream,
        commands: ModemCommands,
        proxy: ProxyLink,
        *,
        tracer: Tracer = NULL_TRACER,
        port: str = "",
        count: int = 1,
    ) -> None:
        self.line = PushbackStream(line)
        self.port = port
        self.count = count  # how many times the process has opened its line, this one included
        self._closed = False
        self.line_settings = AtSettings()  # the plain line's profile, kept while the line is multiplexed
        self.commands = commands
        self.proxy = proxy
        self.tracer = tracer
        self._cmux: CmuxParams | None = None
        self.mux: Mux | None = None
        self.commands.on_cmux = self._want_cmux

    def _want_cmux(self, params: CmuxParams) -> None:
        self._cmux = params

    def _line_event(self, kind: Kind, summary: str, *, error: bool = False, **fields: object) -> None:
        self.tracer.emit(
            Actor.CP,
            Actor.AP,
            Layer.LINE,
            summary,
            error=error,
            kind=kind,
            fields={"port": self.port, "count": self.count, **fields},
        )

    def closed(self, reason: str) -> None:
        """The line.closed event (once): "eof" at end of file, "went away" when a write met the line gone."""
        if self._closed:
            return
        self._closed = True
        self._line_event(
            Kind.LINE_CLOSED, f"serial line {self.port} {reason}", error=reason != "eof", reason=reason
        )

    async def run(self) -> None:
        if self.count > 1:
            self._line_event(Kind.LINE_REOPENED, f"serial line {self.port} reopened")
        else:
            self._line_event(Kind.LINE_OPEN, f"serial line {self.port} open")
        await self._serve()
        self.closed("eof")

    async def _serve(self) -> None:
        while True:
            self._cmux = None
            server = AtServer(self.line, tracer=self.tracer, local=Actor.CP, remote=Actor.AP)
            server.settings = self.line_settings
            self.commands.install(server)
            server.command_listeners.append(self._plain_command)
            try:
                await server.run()
            finally:
                self.commands.forget(server)
                self.line_settings = server.settings
            if self._cmux is None:
                return  # end of file on the line
            self.line.unread(server.leftover)  # frames the AP wrote right behind AT+CMUX=0
            if not await self._multiplex(self._cmux):
                return

    def _plain_command(self, request: AtRequest) -> None:
        """A packet domain command on the plain line, which our AP never sends there: a standard host drives this
        line, so no proxy will come on DLC 2 (docs/protocols.md "BIP with a standard host")."""
        if request.name not in STANDARD_HOST_COMMANDS:
            return
        if self.proxy.give_up(f"a standard host on the plain line (AT{request.name})"):
            self._line_event(
                Kind.APP_EVENT,
                f"AT{request.name} on the plain line: a standard host, no AP proxy to wait for",
                event="standard_host",
                command=request.name,
            )

    async def _multiplex(self, params: CmuxParams) -> bool:
        """Runs one multiplexer session; True when it closed down normally (back to AT mode)."""
        self.proxy.expect()  # maybe our AP: its proxy is waited for again
        mux = Mux(
            self.line,
            role=MuxRole.RESPONDER,
            params=params,
            tracer=self.tracer,
            local=Actor.CP,
            remote=Actor.AP,
            accept=lambda dlci: dlci in (1, PROXY_DLCI),
        )
        self.mux = mux
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._accept, mux, nursery)
            await mux.run()
            nursery.cancel_scope.cancel()
        self.mux = None
        if mux.line_eof:
            return False
        self.line.unread(mux.leftover)  # AT text the AP wrote right behind its closing frame
        return True  # a close-down leaves the line usable; end of file does not

    async def _accept(self, mux: Mux, nursery: trio.Nursery) -> None:
        while True:
            try:
                dlc = await mux.accept_dlc()
            except Exception:
                return
            if dlc.dlci == 1:
                nursery.start_soon(self._modem_control, dlc)
            elif dlc.dlci == PROXY_DLCI:
                nursery.start_soon(self._proxy_control, mux, dlc)

    async def _modem_control(self, dlc: DlcStream) -> None:
        server = AtServer(dlc, tracer=self.tracer, local=Actor.CP, remote=Actor.AP)
        server.settings = self.line_settings  # a copy: DLC 1's changes stay on DLC 1
        self.commands.install(server, allow_cmux=False)
        try:
            await server.run()
        finally:
            self.commands.forget(server)

    async def _proxy_control(self, mux: Mux, dlc: DlcStream) -> None:
        chat = AtChat(dlc, tracer=self.tracer, local=Actor.CP, remote=Actor.AP)
        for prefix, handler in self.proxy.urc_handlers:
            chat.add_urc_handler(prefix, handler)
        self.proxy.attach(mux, chat)
        try:
            await chat.run()
        finally:
            self.proxy.detach(chat)
