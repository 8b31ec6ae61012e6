"""Throughput of one 27.010 DLC over a pty against the raw pty, same payload, same chunk sizes, same run.

Both transfers run in one trio process over a fresh pseudo-terminal (master -> slave): the baseline writes the
chunks straight to the pty and reads them on the other side; the CMUX run puts an initiator mux on the master and
a responder mux on the slave (N1 as +CMUX would negotiate it, large enough for a chunk in one frame) and moves the
same chunks through DLC 1. Prints one JSON line: both rates in MB/s per chunk size, the ratio per chunk size, and
the overall ratio raw time / cmux time over all sizes (target >= 0.9). Each chunk costs the mux one encoded frame
and one more task hop on the receiving side, so small chunks show the per-frame cost in Python.
"""

from __future__ import annotations

import json
import os
import random
import time

import trio

from bipsim.link.cmux import CmuxParams, Mux, MuxRole
from bipsim.link.pty import PtyStream, open_pty, set_raw

SIZE = 8 << 20
CHUNKS = (1024, 4096, 16384, 65536)
ROUNDS = 5
N1 = 32767


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


async def raw_time(payload: bytes, chunk: int) -> float:
    a, b = _pty()
    try:
        return await _move(a, b, payload, chunk)
    finally:
        await a.aclose()
        await b.aclose()


async def cmux_time(payload: bytes, chunk: int) -> float:
    a, b = _pty()
    params = CmuxParams(n1=N1)
    initiator = Mux(a, role=MuxRole.INITIATOR, params=params)
    responder = Mux(b, role=MuxRole.RESPONDER, params=params)
    try:
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
    finally:
        await a.aclose()
        await b.aclose()


async def main() -> None:
    payload = random.Random(27010).randbytes(SIZE)
    raw: dict[int, float] = {}
    mux: dict[int, float] = {}
    for chunk in CHUNKS:
        # interleaved rounds, best of each: both see the same machine state
        raw_runs, mux_runs = [], []
        for _ in range(ROUNDS):
            raw_runs.append(await raw_time(payload, chunk))
            mux_runs.append(await cmux_time(payload, chunk))
        raw[chunk], mux[chunk] = min(raw_runs), min(mux_runs)
    print(
        json.dumps(
            {
                "bench": "cmux_throughput",
                "bytes": SIZE,
                "chunks": list(CHUNKS),
                "n1": N1,
                "cmux_MBps": {str(c): round(SIZE / mux[c] / 1e6, 1) for c in CHUNKS},
                "raw_pty_MBps": {str(c): round(SIZE / raw[c] / 1e6, 1) for c in CHUNKS},
                "ratio_by_chunk": {str(c): round(raw[c] / mux[c], 3) for c in CHUNKS},
                "ratio": round(sum(raw.values()) / sum(mux.values()), 3),
            }
        )
    )


if __name__ == "__main__":
    trio.run(main)
