"""Goodput of one TCP connection through the radio link model: the CP's own stack (net/stack.py) against the Linux
kernel's TCP over the same emulated link, both through the same relay (issue 15's benchmark).

Both clients reach the same kernel server at 203.0.113.10 through the packet gateway in tun mode (net/pgw.py), over
a radio link (net/radio.py) of the same profile and seed: our stack sends its packets onto the link directly, the
kernel's client lives in a second network namespace whose TUN the bench relays onto its own link. So the two paths
differ only in the TCP at the client end. Each case moves SIZE bytes server -> client ("down", the OTA server's
direction) and client -> server ("up"); goodput counts payload bytes from connect to the last byte.

`lte` runs once (seed 7). `lte` with 1 % loss runs with each of SEEDS, because where the losses fall decides the
figure: per seed and direction the ratio ours/kernel, and for the upload (where the client's congestion control
is the sender's) also the kernel client forced to CUBIC (TCP_CONGESTION), the loss-based control our stack
follows. The kernel's congestion control is the namespace's default (`kernel_congestion`: the host's, which a new
network namespace inherits: bbr on the machine of docs/performance.md). The kernel's upload samples its own
tcp_info every 10 ms and ours its cwnd, summarised per case (`*_cc`: median and largest cwnd in segments,
retransmissions, DSACKs seen), to show what each sender did after its losses.

Prints ONE JSON line: goodput in kbit/s of each and the ratios; `ratio_lte` is the smaller of lte's two;
`ratio_lte_loss1` is the MINIMUM over the seeds and both directions (the issue's "at least 0.8 with 1 % loss" is
a claim about any connection under that loss, not about a lucky draw) with our stack running the congestion
control the kernel's client runs (`kernel_congestion`: reno, cubic or bbr, all three in net/tcp.py), so that the
two TCP implementations are compared, not two algorithms; `ratio_lte_loss1_median` the median of the same ratios.
`ratio_lte_loss1_our_default` (and `_median`) is the same minimum with our default congestion control (reno)
whatever the kernel runs: against a kernel on BBR it measures RFC 5681 against BBR under random loss;
`ratio_lte_loss1_up_vs_cubic_min`/`_median` the upload against the kernel's CUBIC, and
`ratio_lte_loss1_up_ours_bbr_min`/`_median` our stack with `TcpConfig(congestion="bbr")` against the kernel's
default (its lossy uploads: `*_ours_bbr_*`). The lte cases
also run with 1 MiB buffers (`*_1mib_buffers_ratio`) instead of our defaults (512 KiB send, 256 KiB receive).
Needs root (or unprivileged user namespaces), unshare, nsenter and ip.  Usage: bench_ip_goodput.py [SIZE_BYTES]
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import statistics
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
SEEDS = (7, 8, 9, 10)
BIG_BUFFERS = TcpConfig(receive_buffer=1 << 20, send_buffer=1 << 20)
BBR = TcpConfig(congestion="bbr")
CUBIC = TcpConfig(congestion="cubic")
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
import json, socket, statistics, struct, sys, threading, time
mode, n, port, cc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
t0 = time.monotonic()
c = socket.socket()
if cc != "default":
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
c.connect(("203.0.113.10", port))
cwnds, done = [], threading.Event()
def sample():
    # struct tcp_info (linux/tcp.h): tcpi_snd_ssthresh, tcpi_snd_cwnd at 76, 80; total_retrans at 100;
    # tcpi_dsack_dups at 216 (Linux 5.5 and later)
    while not done.wait(0.01):
        info = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
        cwnds.append(struct.unpack_from("<I", info, 80)[0])
sampler = threading.Thread(target=sample)
if mode == "U":
    sampler.start()
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
elapsed = time.monotonic() - t0
done.set()
info = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
summary = {
    "congestion": c.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).split(b"\0")[0].decode(),
    "cwnd_median": statistics.median(cwnds) if cwnds else None,
    "cwnd_max": max(cwnds, default=None),
    "ssthresh": struct.unpack_from("<I", info, 76)[0],
    "retransmissions": struct.unpack_from("<I", info, 100)[0],
    "dsacks": struct.unpack_from("<I", info, 216)[0] if len(info) >= 220 else None,
}
if mode == "U":
    sampler.join()
print(json.dumps({"elapsed": elapsed, "cc": summary}), flush=True)
"""


async def _ours(
    pgw: Pgw, profile: LinkProfile, seed: int, mode: str, size: int, config: TcpConfig | None = None
) -> tuple[float, dict[str, object]]:
    """Seconds from connect to the last byte, and what our sender's congestion control did (uploads)."""
    cwnds: list[int] = []
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
        conn = stream.connection

        async def sample() -> None:
            while True:  # every 10 ms, as the kernel client samples its tcp_info
                cwnds.append(conn.cwnd // conn.eff_mss)
                await trio.sleep(0.01)

        if mode == "U":
            nursery.start_soon(sample)
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
        summary: dict[str, object] = {
            "congestion": conn.config.congestion,
            "cwnd_median": statistics.median(cwnds) if cwnds else None,
            "cwnd_max": max(cwnds, default=None),
            "ssthresh": min(conn.ssthresh, 1 << 31) // conn.eff_mss,
            "retransmissions": conn.retransmissions,
        }
        await stream.aclose()
        pgw.detach(OURS, "bench case done")
        nursery.cancel_scope.cancel()
    return elapsed, summary


async def _kernel(
    pgw: Pgw,
    client_ns: TunNamespace,
    profile: LinkProfile,
    seed: int,
    mode: str,
    size: int,
    congestion: str = "default",
) -> tuple[float, dict[str, object]]:
    """The same through the kernel's client, with the namespace's default congestion control or `congestion`."""
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
            client_ns.command([sys.executable, "-c", CLIENT, mode, str(size), str(PORT), congestion]),
            capture_stdout=True,
            check=True,
        )
        pgw.detach(KERNEL, "bench case done")
        nursery.cancel_scope.cancel()
    answer = json.loads(done.stdout)
    return float(answer["elapsed"]), answer["cc"]


def _kbit_s(size: int, seconds: float) -> float:
    return round(size * 8 / seconds / 1000, 1)


async def main(size: int) -> dict[str, object]:
    pgw = Pgw("tun")
    client_ns = await open_tun_namespace(
        name="bipsimc0", gateway=f"{KERNEL}/24", local_addresses=(), routes=("203.0.113.0/24",)
    )
    result: dict[str, object] = {"bench": "ip_goodput", "size": size, "seeds": list(SEEDS)}
    lossy: list[float] = []
    against_cubic: list[float] = []
    bbr_ratios: list[float] = []
    same_cc: list[float] = []
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
                lte, loss1 = PROFILES["lte"], dataclasses.replace(PROFILES["lte"], loss=0.01)
                for mode, label in (("D", "down"), ("U", "up")):
                    with trio.fail_after(120):
                        ours, _ = await _ours(pgw, lte, 7, mode, size)
                        kernel, info = await _kernel(pgw, client_ns, lte, 7, mode, size)
                        # the same with buffers the size of the kernel's autotuned ones: the window, not the
                        # TCP rules, is then out of the comparison (lte's bandwidth-delay product is ~90 KB)
                        tuned, _ = await _ours(pgw, lte, 7, mode, size, BIG_BUFFERS)
                    result["kernel_congestion"] = info["congestion"]
                    result[f"lte_{label}_ours_kbit_s"] = _kbit_s(size, ours)
                    result[f"lte_{label}_kernel_kbit_s"] = _kbit_s(size, kernel)
                    result[f"lte_{label}_ratio"] = round(kernel / ours, 3)
                    result[f"lte_{label}_ours_1mib_buffers_ratio"] = round(kernel / tuned, 3)
                for seed in SEEDS:
                    for mode, label in (("D", "down"), ("U", "up")):
                        key = f"lte_loss1_seed{seed}_{label}"
                        with trio.fail_after(180):
                            ours, ours_cc = await _ours(pgw, loss1, seed, mode, size)
                            kernel, kernel_cc = await _kernel(pgw, client_ns, loss1, seed, mode, size)
                        result[f"{key}_ours_kbit_s"] = _kbit_s(size, ours)
                        result[f"{key}_kernel_kbit_s"] = _kbit_s(size, kernel)
                        result[f"{key}_ratio"] = round(kernel / ours, 3)
                        lossy.append(kernel / ours)
                        if mode == "D":  # the kernel's server is the sender either way
                            same_cc.append(kernel / ours)
                        if mode == "U":
                            with trio.fail_after(180):
                                cubic, cubic_cc = await _kernel(
                                    pgw, client_ns, loss1, seed, mode, size, "cubic"
                                )
                                bbr, bbr_cc = await _ours(pgw, loss1, seed, mode, size, BBR)
                            result[f"{key}_kernel_cubic_kbit_s"] = _kbit_s(size, cubic)
                            result[f"{key}_ratio_vs_cubic"] = round(cubic / ours, 3)
                            against_cubic.append(cubic / ours)
                            result[f"{key}_ours_bbr_kbit_s"] = _kbit_s(size, bbr)
                            result[f"{key}_ours_bbr_ratio"] = round(kernel / bbr, 3)
                            bbr_ratios.append(kernel / bbr)
                            # our upload with the kernel client's own congestion control (reno: `ours`)
                            alike = {"reno": ours, "bbr": bbr}.get(str(kernel_cc["congestion"]))
                            if alike is None and kernel_cc["congestion"] == "cubic":
                                with trio.fail_after(180):
                                    alike, _ = await _ours(pgw, loss1, seed, mode, size, CUBIC)
                                result[f"{key}_ours_cubic_kbit_s"] = _kbit_s(size, alike)
                            if alike is None:  # the like-for-like figure needs the kernel's algorithm here
                                raise RuntimeError(
                                    f"the kernel's client runs {kernel_cc['congestion']}: not in net/tcp.py"
                                )
                            result[f"{key}_same_cc_ratio"] = round(kernel / alike, 3)
                            same_cc.append(kernel / alike)
                            result[f"{key}_cc"] = {
                                "ours": ours_cc,
                                "ours_bbr": bbr_cc,
                                "kernel": kernel_cc,
                                "kernel_cubic": cubic_cc,
                            }
            finally:
                server.kill()
                with trio.CancelScope(shield=True):
                    await server.wait()
            nursery.cancel_scope.cancel()
    finally:
        client_ns.close()
    result["ratio_lte"] = min(result["lte_down_ratio"], result["lte_up_ratio"])  # type: ignore[type-var]
    # the minimum, not the median: see the module's docstring
    result["ratio_lte_loss1"] = round(min(same_cc), 3)
    result["ratio_lte_loss1_median"] = round(statistics.median(same_cc), 3)
    result["ratio_lte_loss1_our_default"] = round(min(lossy), 3)
    result["ratio_lte_loss1_our_default_median"] = round(statistics.median(lossy), 3)
    result["ratio_lte_loss1_up_vs_cubic_min"] = round(min(against_cubic), 3)
    result["ratio_lte_loss1_up_vs_cubic_median"] = round(statistics.median(against_cubic), 3)
    result["ratio_lte_loss1_up_ours_bbr_min"] = round(min(bbr_ratios), 3)
    result["ratio_lte_loss1_up_ours_bbr_median"] = round(statistics.median(bbr_ratios), 3)
    return result


if __name__ == "__main__":
    print(json.dumps(trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 2 << 20)))
