"""Goodput of one TCP connection through the radio link model: the CP's own stack (net/stack.py) against the Linux
kernel's TCP over the same emulated link, both through the same relay (issue 15's benchmark).

Both clients reach the same kernel server at 203.0.113.10 through the packet gateway in tun mode (net/pgw.py), over
a radio link (net/radio.py) of the same profile and seed: our stack sends its packets onto the link directly, the
kernel's client lives in a second network namespace whose TUN the bench relays onto its own link. So the two paths
differ only in the TCP at the client end. Each case moves SIZE bytes server -> client ("down", the OTA server's
direction) and client -> server ("up"); goodput counts payload bytes from connect to the last byte.

Prints ONE JSON line: goodput in kbit/s of each and the ratios ours/kernel on `lte` and on `lte` with 1 % loss,
with our stack's default buffers (512 KiB send, 256 KiB receive: TcpConfig) and (`*_1mib_buffers_ratio`) with
1 MiB ones.
Needs root (or unprivileged user namespaces), unshare, nsenter and ip.  Usage: bench_ip_goodput.py [SIZE_BYTES]
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import subprocess
import sys
import time
from ipaddress import IPv4Address

import trio

from bipsim.net.pgw import SERVER_ADDRESS, Pgw
from bipsim.net.radio import PROFILES, LinkProfile, radio_link
from bipsim.net.stack import IpStack
from bipsim.net.tcp import TcpConfig
from bipsim.net.tun import TunNamespace, open_tun_namespace

PORT = 5500
BIG_BUFFERS = TcpConfig(receive_buffer=1 << 20, send_buffer=1 << 20)
_STACK_SEEDS = itertools.count(1)
OURS = IPv4Address("198.51.100.2")
KERNEL = IPv4Address("198.51.100.3")

SERVER = r"""
import socket, sys, threading
n = int(sys.argv[1])
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("203.0.113.10", int(sys.argv[2])))
ls.listen(8)
print("ready", flush=True)
def serve(c):
    mode = c.recv(1)
    if mode == b"D":
        c.sendall(bytes(n))
    else:
        left = n
        while left > 0:
            d = c.recv(65536)
            if not d:
                break
            left -= len(d)
        c.sendall(b"k")
    c.close()
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

CLIENT = r"""
import socket, sys, time
mode, n = sys.argv[1], int(sys.argv[2])
t0 = time.monotonic()
c = socket.create_connection(("203.0.113.10", int(sys.argv[3])))
c.sendall(mode.encode())
if mode == "D":
    got = 0
    while True:
        d = c.recv(65536)
        if not d:
            break
        got += len(d)
    assert got == n, got
else:
    c.sendall(bytes(n))
    assert c.recv(1) == b"k"
print(time.monotonic() - t0, flush=True)
"""


async def _ours(
    pgw: Pgw, profile: LinkProfile, seed: int, mode: str, size: int, config: TcpConfig | None = None
) -> float:
    async with trio.open_nursery() as nursery:
        cp, pgw_end, link = radio_link(profile, seed)
        await nursery.start(link.run)
        await pgw.attach(OURS, pgw_end)
        # a new port and ISS per case: the same 4-tuple as the last case's would meet the server's TIME-WAIT
        stack = IpStack(OURS, cp.send_nowait, rng=random.Random(next(_STACK_SEEDS)), tcp_config=config)
        await nursery.start(stack.run)

        async def reader() -> None:
            while True:
                try:
                    packet = await cp.receive()
                except trio.EndOfChannel:  # detached at the end of the case
                    return
                stack.receive_packet(packet)

        nursery.start_soon(reader)
        start = time.monotonic()
        stream = await stack.open_tcp(SERVER_ADDRESS, PORT, timeout=30)
        await stream.send_all(mode.encode())
        if mode == "D":
            got = 0
            while chunk := await stream.receive_some(65536):
                got += len(chunk)
            assert got == size, got
        else:
            await stream.send_all(bytes(size))
            assert await stream.receive_some(1) == b"k"
        elapsed = time.monotonic() - start
        await stream.aclose()
        pgw.detach(OURS, "bench case done")
        nursery.cancel_scope.cancel()
    return elapsed


async def _kernel(
    pgw: Pgw, client_ns: TunNamespace, profile: LinkProfile, seed: int, mode: str, size: int
) -> float:
    async with trio.open_nursery() as nursery:
        near, pgw_end, link = radio_link(profile, seed)
        await nursery.start(link.run)
        await pgw.attach(KERNEL, pgw_end)

        async def up() -> None:
            while True:
                near.send_nowait(await client_ns.read_packet())

        async def down() -> None:
            while True:
                try:
                    packet = await near.receive()
                except trio.EndOfChannel:  # detached at the end of the case
                    return
                client_ns.write_packet(packet)

        nursery.start_soon(up)
        nursery.start_soon(down)
        done = await trio.run_process(
            client_ns.command([sys.executable, "-c", CLIENT, mode, str(size), str(PORT)]),
            capture_stdout=True,
            check=True,
        )
        pgw.detach(KERNEL, "bench case done")
        nursery.cancel_scope.cancel()
    return float(done.stdout.decode().strip())


async def main(size: int) -> dict[str, object]:
    pgw = Pgw("tun")
    client_ns = await open_tun_namespace(
        name="bipsimc0", gateway=f"{KERNEL}/24", local_addresses=(), routes=("203.0.113.0/24",)
    )
    result: dict[str, object] = {"bench": "ip_goodput", "size": size}
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pgw.run)
            assert pgw.tun is not None
            server = await trio.lowlevel.open_process(
                pgw.tun.command([sys.executable, "-c", SERVER, str(size), str(PORT)]), stdout=subprocess.PIPE
            )
            try:
                assert server.stdout is not None
                assert (await server.stdout.receive_some(100)).startswith(b"ready")
                cases = {"lte": PROFILES["lte"], "lte_loss1": dataclasses.replace(PROFILES["lte"], loss=0.01)}
                for name, profile in cases.items():
                    for mode, label in (("D", "down"), ("U", "up")):
                        with trio.fail_after(120):
                            ours = await _ours(pgw, profile, 7, mode, size)
                            kernel = await _kernel(pgw, client_ns, profile, 7, mode, size)
                        result[f"{name}_{label}_ours_kbit_s"] = round(size * 8 / ours / 1000, 1)
                        result[f"{name}_{label}_kernel_kbit_s"] = round(size * 8 / kernel / 1000, 1)
                        result[f"{name}_{label}_ratio"] = round(kernel / ours, 3)
                        # the same with buffers the size of the kernel's autotuned ones: the window, not the
                        # TCP rules, is then out of the comparison (lte's bandwidth-delay product is ~90 KB)
                        with trio.fail_after(120):
                            tuned = await _ours(pgw, profile, 7, mode, size, BIG_BUFFERS)
                        result[f"{name}_{label}_ours_1mib_buffers_ratio"] = round(kernel / tuned, 3)
            finally:
                server.kill()
                with trio.CancelScope(shield=True):
                    await server.wait()
            nursery.cancel_scope.cancel()
    finally:
        client_ns.close()
    result["ratio_lte"] = min(result["lte_down_ratio"], result["lte_up_ratio"])  # type: ignore[type-var]
    result["ratio_lte_loss1"] = min(result["lte_loss1_down_ratio"], result["lte_loss1_up_ratio"])  # type: ignore[type-var]
    return result


if __name__ == "__main__":
    print(json.dumps(trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 2 << 20)))
