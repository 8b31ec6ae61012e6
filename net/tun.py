"""A TUN interface inside a private network namespace, for the packet gateway's `--network tun` mode
(docs/protocols.md, "The packet gateway").

The process itself stays in the host's namespace: a short helper, started with `unshare -n` (as root) or
`unshare -Urn` (an unprivileged user namespace), opens /dev/net/tun with TUNSETIFF (IFF_TUN | IFF_NO_PI, the
Linux kernel's Documentation/networking/tuntap.rst), gives the interface the gateway's address (198.51.100.1/24 by
default: RFC 5737 TEST-NET-2) and the server address 203.0.113.10 on `lo` (TEST-NET-3), brings them up, and hands
the TUN descriptor and a descriptor of the namespace back over a UNIX socket (SCM_RIGHTS, unix(7)). The namespace
lives as long as that descriptor is open and goes away with it: there is nothing to clean up, even after a crash.
Programs run inside it with `nsenter` (`TunNamespace.command`), so the kernel's TCP there is a real peer.
"""

from __future__ import annotations

import array
import errno
import fcntl
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

__all__ = ["TunNamespace", "TunUnavailable", "listen_in_namespace", "open_tun_namespace"]

TUNSETIFF = 0x400454CA  # _IOW('T', 202, int), linux/if_tun.h
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_PACKET = 65535


class TunUnavailable(OSError):
    """The TUN mode cannot run here; the message says why (no unshare, namespaces refused, no /dev/net/tun)."""


@dataclass
class TunNamespace:
    """A TUN interface in its own network namespace, owned by this process (`close` ends both)."""

    tun_fd: int
    netns_fd: int
    userns_fd: int | None
    name: str
    gateway: ipaddress.IPv4Interface
    local_addresses: tuple[ipaddress.IPv4Address, ...]
    closed: bool = field(default=False)

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the namespace (through nsenter, with the namespace's descriptors of this process)."""
        pid = os.getpid()
        prefix = ["nsenter"]
        if self.userns_fd is not None:
            prefix += [f"--user=/proc/{pid}/fd/{self.userns_fd}", "--preserve-credentials"]
        prefix.append(f"--net=/proc/{pid}/fd/{self.netns_fd}")
        return [*prefix, "--", *argv]

    async def read_packet(self) -> bytes:
        """The next IPv4 packet the namespace's kernel sent into the TUN."""
        while True:
            await trio.lowlevel.wait_readable(self.tun_fd)
            try:
                return os.read(self.tun_fd, MAX_PACKET)
            except BlockingIOError:
                continue

    def write_packet(self, packet: bytes) -> bool:
        """Hands one IPv4 packet to the namespace's kernel; False when the kernel refused it (a malformed packet
        is EINVAL, a full queue ENOBUFS/EAGAIN: dropped, as a router drops)."""
        if self.closed:
            return False
        try:
            os.write(self.tun_fd, packet)
        except OSError as exc:
            if exc.errno in (
                errno.EINVAL,
                errno.EAGAIN,
                errno.ENOBUFS,
                errno.EIO,
                errno.EFAULT,
                errno.EBADFD,
            ):
                return False
            raise
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fd in (self.tun_fd, self.netns_fd, self.userns_fd):
            if fd is not None:
                try:
                    trio.lowlevel.notify_closing(fd)
                except RuntimeError:
                    pass  # outside trio
                os.close(fd)


def _unshare_prefix() -> list[str]:
    if shutil.which("unshare") is None:
        raise TunUnavailable("--network tun needs the unshare program (util-linux)")
    if shutil.which("ip") is None:
        raise TunUnavailable("--network tun needs the ip program (iproute2)")
    # root makes a network namespace of its own; anyone else an unprivileged user namespace with one inside
    return ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-Urn"]


async def open_tun_namespace(
    *,
    name: str = "bipsim0",
    gateway: str = "198.51.100.1/24",
    local_addresses: Sequence[str] = ("203.0.113.10",),
    routes: Sequence[str] = (),
    mtu: int = 1500,
) -> TunNamespace:
    """Makes the namespace and its TUN interface `name` with address `gateway`, `local_addresses` on lo, and the
    extra `routes` (destinations routed into the TUN, "203.0.113.0/24"); raises TunUnavailable with the reason."""
    prefix = _unshare_prefix()
    gateway_if = ipaddress.IPv4Interface(gateway)
    locals_ = tuple(ipaddress.IPv4Address(a) for a in local_addresses)
    for route in routes:
        ipaddress.IPv4Network(route)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        argv = [
            *prefix,
            sys.executable,
            "-m",
            "bipsim.net.tun",
            str(child.fileno()),
            name,
            str(gateway_if),
            str(mtu),
            ",".join(map(str, locals_)),
            ",".join(routes),
            "user" if "-Urn" in prefix else "net",
        ]
        try:
            result = await trio.run_process(
                argv, pass_fds=(child.fileno(),), capture_stdout=True, capture_stderr=True, check=False
            )
        finally:
            child.close()
        if result.returncode != 0:
            reason = result.stderr.decode(errors="replace").strip().splitlines()
            raise TunUnavailable(
                f"--network tun: could not make the namespace and its TUN ({' '.join(prefix)}): "
                + (reason[-1] if reason else f"exit status {result.returncode}")
            )
        parent.setblocking(False)
        try:
            _, fds, _, _ = socket.recv_fds(parent, 16, 3)
        except BlockingIOError:
            raise TunUnavailable("--network tun: the namespace helper handed back no descriptors") from None
    finally:
        parent.close()
    if len(fds) < 2:
        for fd in fds:
            os.close(fd)
        raise TunUnavailable("--network tun: the namespace helper handed back no descriptors")
    os.set_blocking(fds[0], False)
    return TunNamespace(
        tun_fd=fds[0],
        netns_fd=fds[1],
        userns_fd=fds[2] if len(fds) > 2 else None,
        name=name,
        gateway=gateway_if,
        local_addresses=locals_,
    )


def _helper(argv: list[str]) -> int:
    """Runs inside the new namespace: the TUN, the addresses, the routes; then hands the descriptors back."""
    sock_fd, name, gateway, mtu, locals_, routes, kind = argv
    # IPv4 only: no IPv6 router solicitations from the new interface into the packet plane
    for knob in ("all", "default"):
        try:
            with open(f"/proc/sys/net/ipv6/conf/{knob}/disable_ipv6", "w") as f:
                f.write("1")
        except OSError:
            pass  # no IPv6 in this kernel, or not ours to set: the gateway drops what is not IPv4
    try:
        tun = os.open("/dev/net/tun", os.O_RDWR)
    except OSError as exc:
        print(f"cannot open /dev/net/tun: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError as exc:
        print(f"TUNSETIFF {name}: {exc.strerror} (TUN needs CAP_NET_ADMIN in the namespace)", file=sys.stderr)
        return 1
    commands = [
        ["ip", "link", "set", "lo", "up"],
        ["ip", "link", "set", name, "mtu", mtu, "up"],
        ["ip", "addr", "add", gateway, "dev", name],
    ]
    commands += [["ip", "addr", "add", f"{a}/32", "dev", "lo"] for a in locals_.split(",") if a]
    commands += [["ip", "route", "add", r, "dev", name] for r in routes.split(",") if r]
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{' '.join(command)}: {done.stderr.strip()}", file=sys.stderr)
            return 1
    fds = [tun, os.open("/proc/self/ns/net", os.O_RDONLY)]
    if kind == "user":  # nsenter joins the user namespace first to have rights in its network namespace
        fds.append(os.open("/proc/self/ns/user", os.O_RDONLY))
    sock = socket.socket(fileno=int(sock_fd))
    sock.sendmsg([b"tun"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])
    return 0


if __name__ == "__main__":
    sys.exit(_helper(sys.argv[1:]))


# Run inside the tun mode's namespace (nsenter): a listening TCP socket there, handed back over the inherited UNIX
# socket (SCM_RIGHTS, unix(7)). The socket stays in the namespace it was made in, so the kernel's TCP there accepts
# the CP's connections; the CP's process accepts them from it and carries their bytes to the host.
_LISTEN_IN_NAMESPACE = """
import socket, sys
channel = socket.socket(fileno=int(sys.argv[1]))
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((sys.argv[2], int(sys.argv[3])))
listener.listen(16)
socket.send_fds(channel, [b"L"], [listener.fileno()])
"""


async def listen_in_namespace(
    command: Callable[[list[str]], list[str]], address: str, port: int
) -> trio.SocketListener:
    """A TCP listener at address:port inside a network namespace (`command` prefixes a program to run there, as
    TunNamespace.command does); OSError when the namespace refuses it."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        argv = command([sys.executable, "-c", _LISTEN_IN_NAMESPACE, str(child.fileno()), address, str(port)])
        result = await trio.run_process(argv, pass_fds=(child.fileno(),), capture_stderr=True, check=False)
        child.close()
        if result.returncode != 0:
            lines = result.stderr.decode(errors="replace").strip().splitlines()
            raise OSError(
                f"listening at {address}:{port} in the namespace: {lines[-1] if lines else 'failed'}"
            )
        parent.setblocking(False)
        _, fds, _, _ = socket.recv_fds(parent, 16, 1)
    finally:
        parent.close()
        if child.fileno() != -1:
            child.close()
    listener = socket.socket(fileno=fds[0])
    listener.setblocking(False)
    return trio.SocketListener(trio.socket.from_stdlib_socket(listener))
