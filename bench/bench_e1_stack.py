"""Embodiment 1's 1 MiB OTA download with the CP's own stack (an IpStack on the context's address, an ideal radio
link, the packet gateway in nat mode: docs/protocols.md "The packet data plane") against the host-socket bearer the
CP had before (`bipsim cp --network host`), in one run. Two figures:

- `session`: the whole OTA session of embodiment 1 (OTA server, CP and AP as processes on the built-in pty pair;
  two 512 KiB load files, as bench/bench_download.py), goodput over the window from FETCH OPEN CHANNEL to the
  server's close acknowledgement, once per bearer, interleaved over ROUNDS; `ratio` is own stack / host socket
  (the issue asks for at least 0.9). The card's RECEIVE DATA rounds set the pace, so this is what a user sees.
- `bearer`: the bearer alone, in this process: 1 MiB from a host server read from the stream OwnStackBearer.connect
  returns (AT%GETNET answered by the AP's proxy service over an in-memory line, a context activated), with and
  without the plane: what the stack itself costs against the kernel's TCP.

Prints one JSON line. `python bench/bench_e1_stack.py --quick` skips the sessions.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import trio
import trio.testing
from _embodiment_runs import download_campaign, session_window

from bipsim.ap.apn_db import ApnDatabase
from bipsim.ap.network import ApNetwork
from bipsim.ap.proxy import ProxyService
from bipsim.cp.bearer_own_stack import OwnStackBearer, PacketPlane, PlaneOptions
from bipsim.cp.network import CellularNetwork
from bipsim.cp.proxy_link import ProxyLink
from bipsim.link.at_chat import AtChat
from bipsim.scenarios.base import check_ota_completed
from bipsim.scenarios.embodiments import embodiment_config
from bipsim.scenarios.harness import Harness
from bipsim.uicc.cat import OpenChannel, TransportProtocol

SIZE = 1 << 20
ROUNDS = 3
SESSION_ROUNDS = 2
IMSI = "001010123456789"  # the test network of the shipped APN database


class _Mux:
    """What ProxyLink asks of a multiplexer: whether it is closed (the bearer never opens a DLC)."""

    closed = False


async def _send_mib(stream: trio.SocketStream) -> None:
    block = bytes(range(256)) * 256  # 64 KiB
    async with stream:
        for _ in range(SIZE // len(block)):
            await stream.send_all(block)


async def _download(bearer: OwnStackBearer, port: int, channel: int) -> float:
    request = OpenChannel(
        bearer_type=3,
        buffer_size=1400,
        protocol=TransportProtocol.TCP_CLIENT_REMOTE,
        port=port,
        destination="127.0.0.1",
    )
    started = time.perf_counter()
    stream = await bearer.connect(channel, request)
    got = 0
    while got < SIZE:
        data = await stream.receive_some(65536)
        if not data:
            break
        got += len(data)
    elapsed = time.perf_counter() - started
    await bearer.disconnect(channel, stream)
    if got != SIZE:
        raise RuntimeError(f"received {got} bytes of {SIZE}")
    return SIZE / elapsed


def session_goodput(network: str) -> float:
    """Bytes/s of one embodiment-1 session downloading SIZE bytes, the CP's `--network` being `network`."""
    directory = Path(tempfile.mkdtemp(prefix=f"bipsim-bench-e1-{network}-"))
    config = embodiment_config(1, campaign=download_campaign(SIZE), timeout=300, network=network)
    try:
        run = trio.run(Harness(config, directory).run)
        check_ota_completed(run)
    except BaseException:
        print(f"bench: the {network} session failed; its files are in {directory}", file=sys.stderr)
        raise
    shutil.rmtree(directory, ignore_errors=True)
    start, end = session_window(run)
    return SIZE / (end - start)


async def bearer_rates() -> dict[str, float]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), _send_mib, 0)
        port = listeners[0].socket.getsockname()[1]
        cp_end, ap_end = trio.testing.memory_stream_pair()
        service = ProxyService(ApNetwork(), ApnDatabase.load(), lambda: IMSI)
        nursery.start_soon(service.serve, ap_end)
        chat = AtChat(cp_end)
        nursery.start_soon(chat.run)
        link = ProxyLink()
        link.attach(_Mux(), chat)  # type: ignore[arg-type]
        network = CellularNetwork()
        plane = PacketPlane(network, PlaneOptions(radio="ideal"))
        await nursery.start(plane.run)
        own = OwnStackBearer(link, network, plane=plane)
        host = OwnStackBearer(link, network)
        stack_rates, host_rates = [], []
        for _ in range(ROUNDS):  # interleaved, so a busy moment of the machine hits both alike
            host_rates.append(await _download(host, port, 1))
            stack_rates.append(await _download(own, port, 2))
        nursery.cancel_scope.cancel()
    return {"own_stack": statistics.median(stack_rates), "host_socket": statistics.median(host_rates)}


def main() -> None:
    bearer = trio.run(bearer_rates)
    result: dict[str, object] = {
        "bench": "e1_stack",
        "bytes": SIZE,
        "bearer": {
            "own_stack_MBps": round(bearer["own_stack"] / 1e6, 3),
            "host_socket_MBps": round(bearer["host_socket"] / 1e6, 3),
            "ratio": round(bearer["own_stack"] / bearer["host_socket"], 4),
        },
    }
    if "--quick" not in sys.argv[1:]:
        own, host = [], []
        for _ in range(SESSION_ROUNDS):
            host.append(session_goodput("host"))
            own.append(session_goodput("nat"))
        result["session"] = {
            "rounds": SESSION_ROUNDS,
            "own_stack_kBps": round(statistics.median(own) / 1e3, 2),
            "host_socket_kBps": round(statistics.median(host) / 1e3, 2),
            "ratio": round(statistics.median(own) / statistics.median(host), 3),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
