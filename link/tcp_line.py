"""The modem's line on a TCP socket (`bipsim cp --listen HOST:PORT`, docs/protocols.md "--listen").

oFono's phonesim plugin and other DTE software that speak AT over TCP connect to the modem as TCP clients. The CP
serves one client at a time, as one serial line has one DTE: the client's connection is the line until it closes,
then the next client is taken. A client that connects while another is served waits in the listen backlog until the
first leaves. The socket binds 127.0.0.1 unless another address is given.
"""

from __future__ import annotations

import socket as _socket
import sys
from collections.abc import Callable

import trio


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class TcpLineListener:
    """The line opener of `--listen`: bind() once at start (OSError when the address is taken or not ours), then
    open() returns the next client's connection as the line (a trio SocketStream). `port` is the bound port (the
    one the kernel chose when 0 was asked for), said once on stderr through `notice`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        who: str = "bipsim cp",
        notice: Callable[[str], None] = _stderr,
    ) -> None:
        self.host, self.port, self.who, self.notice = host, port, who, notice
        self.opened = 0
        self._sock: trio.socket.SocketType | None = None

    @property
    def name(self) -> str:
        """The line's name in traces and messages: tcp://HOST:PORT."""
        return f"tcp://{self.host}:{self.port}"

    async def bind(self) -> None:
        infos = await trio.socket.getaddrinfo(self.host, self.port, type=_socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = trio.socket.socket(family, kind, proto)
        try:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            await sock.bind(address)
            # a backlog of one: the next DTE may wait while the current one is served (one line, one DTE)
            sock.listen(1)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]
        self.notice(f"{self.who}: listening on {self.name} (one client at a time)")

    async def open(self) -> trio.abc.Stream:
        """Waits for the next client and returns its connection as the line."""
        if self._sock is None:
            await self.bind()
        assert self._sock is not None
        conn, peer = await self._sock.accept()
        # AT lines are short and interactive: no Nagle delay on answers
        conn.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        self.opened += 1
        self.notice(f"{self.who}: client {peer[0]}:{peer[1]} connected on {self.name}")
        return trio.SocketStream(conn)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
