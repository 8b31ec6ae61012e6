"""Throughput of one 27.010 DLC against the raw line it runs on, same payload, same chunk sizes, same run.

Two lines, one JSON line:

- `pty pair` (the headline `ratio`, the issue's target >= 0.9): the pty pair of `bipsim pty-pair --baud N`
  (bipsim.link.pty_relay), paced like the UART it stands for. The initiator mux writes on side A, the responder
  reads on side B; the raw baseline writes the same chunks on A and reads them on B. This is what CMUX costs a
  real AP-CP line: its framing bytes and any gap the mux leaves between frames. Measured at each rate of BAUDS.
- `unpaced`: one pty (master -> slave) at memory speed, everything in one process. Here the "line" costs a few
  microseconds per write and read, so the figure is the Python cost of 27.010 per frame and per read. The same run
  also measures `bare framing`: the chunks framed with encode_frame and parsed with FrameParser and nothing else
  (no mux, no DLC, no tasks): the floor of any pure-Python 27.010 on this pty. `cmux_vs_bare` says how close the
  mux is to that floor.

N1 is the one the AP asks for with AT+CMUX (1500 bytes): chunks above it go out as several frames, as they do
in the product.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Awaitable, Callable

import trio

from bipsim.ap.ap_service import DEFAULT_CMUX
from bipsim.link.cmux import CmuxParams, Mux, MuxRole
from bipsim.link.cmux_frame import FrameParser, FrameType, encode_frame
from bipsim.link.pty import PtyStream, open_pty, set_raw
from bipsim.link.pty_relay import PtyPair

CHUNKS = (1024, 4096, 16384, 65536)
N1 = DEFAULT_CMUX.n1  # what the AP asks for with AT+CMUX (1500): a 4 KiB chunk is three frames
UNPACED_SIZE = 8 << 20
UNPACED_ROUNDS = 5
BAUDS = (921_600, 4_000_000)  # the usual top rate of a USB-serial modem port, and a high-speed UART
PACED_SECONDS = 1.0  # payload per paced run: this long at the line's rate
# a transfer over lines A -> B: (A, B, payload, chunk) -> seconds
Transfer = Callable[[trio.abc.Stream, trio.abc.Stream, bytes, int], Awaitable[float]]


def _pty() -> tuple[PtyStream, PtyStream]:
    master, path = open_pty()
    slave = os.open(path, os.O_RDWR | os.O_NOCTTY)
    set_raw(slave)
    return PtyStream(master, name="master"), PtyStream(slave, name=path)


async def _move(
    send: trio.abc.SendStream, receive: trio.abc.ReceiveStream, payload: bytes, chunk: int
) -> float:
    """Seconds to move payload through send -> receive in chunks, checking it arrived intact."""
    got = bytearray()

    async def reader() -> None:
        while len(got) < len(payload):
            data = await receive.receive_some(65536)
            if not data:
                raise RuntimeError(f"end of file after {len(got)} bytes")
            got.extend(data)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        view = memoryview(payload)
        for i in range(0, len(payload), chunk):
            await send.send_all(view[i : i + chunk])
    elapsed = time.perf_counter() - start
    if bytes(got) != payload:
        raise RuntimeError("payload corrupted")
    return elapsed


class _Framed(trio.abc.Stream):
    """Bare framing: each chunk sent as UIH frames of at most N1 bytes in one write, parsed on receipt; nothing
    else."""

    def __init__(self, line: trio.abc.Stream) -> None:
        self.line = line
        self.parser = FrameParser()
        self.pending = bytearray()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)  # the frames of a chunk in one write
        frames = [
            encode_frame(1, FrameType.UIH, True, False, view[i : i + N1]) for i in range(0, len(view), N1)
        ]
        await self.line.send_all(b"".join(frames))

    async def wait_send_all_might_not_block(self) -> None:
        await self.line.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while not self.pending:
            data = await self.line.receive_some(65536)
            if not data:
                return b""
            for frame in self.parser.feed(data):
                self.pending += frame.info
        out = bytes(self.pending)
        self.pending.clear()
        return out

    async def aclose(self) -> None:
        await self.line.aclose()


async def _bare(a: trio.abc.Stream, b: trio.abc.Stream, payload: bytes, chunk: int) -> float:
    return await _move(_Framed(a), _Framed(b), payload, chunk)


async def _cmux(a: trio.abc.Stream, b: trio.abc.Stream, payload: bytes, chunk: int) -> float:
    params = CmuxParams(n1=N1)
    initiator = Mux(a, role=MuxRole.INITIATOR, params=params)
    responder = Mux(b, role=MuxRole.RESPONDER, params=params)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(initiator.run)
        nursery.start_soon(responder.run)
        local = await initiator.open_dlc(1)
        remote = await responder.accept_dlc()
        elapsed = await _move(local, remote, payload, chunk)
        await initiator.close_down()
        nursery.cancel_scope.cancel()
    if initiator.parser.bad_fcs or responder.parser.bad_fcs:
        raise RuntimeError("FCS errors on a clean line")
    return elapsed


async def _on_pty(how: Transfer, payload: bytes, chunk: int) -> float:
    a, b = _pty()
    try:
        return await how(a, b, payload, chunk)
    finally:
        await a.aclose()
        await b.aclose()


async def _on_pair(how: Transfer, baud: int, payload: bytes, chunk: int) -> float:
    pair = PtyPair.create(baud=baud)
    a, b = PtyStream.open(pair.paths[0]), PtyStream.open(pair.paths[1])
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pair.run)
            elapsed = await how(a, b, payload, chunk)
            nursery.cancel_scope.cancel()
        return elapsed
    finally:
        await a.aclose()
        await b.aclose()
        await pair.aclose()


def _ratios(base: dict[int, float], ours: dict[int, float]) -> tuple[dict[str, float], float]:
    by_chunk = {str(c): round(base[c] / ours[c], 3) for c in CHUNKS}
    return by_chunk, round(sum(base.values()) / sum(ours.values()), 3)


def _rates(size: int, times: dict[int, float], scale: float) -> dict[str, float]:
    return {str(c): round(size / times[c] / scale, 1) for c in CHUNKS}


async def main() -> None:
    rng = random.Random(27010)
    paced: dict[str, object] = {}
    headline = 1.0
    for baud in BAUDS:
        size = int(baud / 10 * PACED_SECONDS)
        payload = rng.randbytes(size)
        raw = {c: await _on_pair(_move, baud, payload, c) for c in CHUNKS}
        mux = {c: await _on_pair(_cmux, baud, payload, c) for c in CHUNKS}
        by_chunk, ratio = _ratios(raw, mux)
        headline = min(headline, ratio)
        paced[str(baud)] = {
            "bytes": size,
            "bound_Bps": baud // 10,
            "cmux_Bps": _rates(size, mux, 1),
            "raw_Bps": _rates(size, raw, 1),
            "ratio_by_chunk": by_chunk,
            "ratio": ratio,
        }
    payload = rng.randbytes(UNPACED_SIZE)
    best: dict[str, dict[int, float]] = {"raw": {}, "bare": {}, "cmux": {}}
    for chunk in CHUNKS:
        runs: dict[str, list[float]] = {name: [] for name in best}
        for _ in range(UNPACED_ROUNDS):  # interleaved rounds, best of each: all see the same machine state
            runs["raw"].append(await _on_pty(_move, payload, chunk))
            runs["bare"].append(await _on_pty(_bare, payload, chunk))
            runs["cmux"].append(await _on_pty(_cmux, payload, chunk))
        for name in best:
            best[name][chunk] = min(runs[name])
    cmux_by_chunk, cmux_ratio = _ratios(best["raw"], best["cmux"])
    bare_by_chunk, bare_ratio = _ratios(best["raw"], best["bare"])
    _, cmux_vs_bare = _ratios(best["bare"], best["cmux"])
    print(
        json.dumps(
            {
                "bench": "cmux_throughput",
                "chunks": list(CHUNKS),
                "n1": N1,
                "line": "pty pair paced as `bipsim pty-pair --baud N`",
                "pty_pair": paced,
                "ratio": headline,
                "unpaced": {
                    "line": "one pty, one process, memory speed",
                    "bytes": UNPACED_SIZE,
                    "cmux_MBps": _rates(UNPACED_SIZE, best["cmux"], 1e6),
                    "bare_framing_MBps": _rates(UNPACED_SIZE, best["bare"], 1e6),
                    "raw_pty_MBps": _rates(UNPACED_SIZE, best["raw"], 1e6),
                    "ratio_by_chunk": cmux_by_chunk,
                    "ratio": cmux_ratio,
                    "bare_framing_ratio_by_chunk": bare_by_chunk,
                    "bare_framing_ratio": bare_ratio,
                    "cmux_vs_bare": cmux_vs_bare,
                },
            }
        )
    )


if __name__ == "__main__":
    trio.run(main)
