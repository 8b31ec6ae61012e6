"""The OTA server on every core it is given: `bipsim ota-server --workers K` (docs/performance.md, "The OTA server
on K cores").

K worker processes each listen on the one port with SO_REUSEPORT, so the kernel spreads new connections over them
and no acceptor process stands in the way; each worker runs the whole connection (TLS 1.2 PSK, HTTP, ota/server.py).
A card's admin session spans connections (a reconnect, a resume, Connection: close after 100 requests) and the
kernel may hand each to another worker, so the card's progress (ota/admin.py: its state, pending script, log) lives in
exactly one worker, its owner, chosen by a stable hash of the card's X-Admin-From identity. A worker answers the
requests of the cards it owns itself and asks the owner for the others over a UNIX socket in a private directory: one
request, one answer, as length-prefixed JSON frames tagged with a number, many in flight on one connection.

TLS and HTTP (the CPU) run where the connection landed; the admin step (a dictionary update and a script to encode)
runs at the owner. The parent only starts the workers, restarts one that dies (the cards it owned start their plans
again, as after a server restart: ota/admin.py's REPOST of an unknown card), and on SIGTERM stops them, adds up
their summaries and merges their results logs (each worker writes its own, `<results>.w<N>`, as it goes).

`python -m bipsim.ota.server_pool CONFIG` runs one worker.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio

from bipsim.errors import CliError
from bipsim.ota.admin import AdminServer, Answer
from bipsim.ota.http_connection import HttpRequest
from bipsim.ota.server import OtaServer
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind

FRAME_LIMIT = (
    8 * 1024 * 1024
)  # a request or answer body is at most 1 MiB (uicc/http_limits.py), base64 and JSON


def card_key(request: HttpRequest) -> str | None:
    """The card a request is about, as ota/admin.py names it (`iccid:<ICCID>`), or None when X-Admin-From is not a
    card's (the local admin core answers 400 for it)."""
    parts = request.header("x-admin-from").strip("/").split("/")
    if len(parts) != 3 or parts[0] != "se-id" or parts[1] not in ("iccid", "eid"):
        return None
    return f"{parts[1]}:{parts[2]}"


def owner_of(card: str, workers: int) -> int:
    """The worker owning a card: CRC-32 of its name modulo K, the same in every process and every run."""
    return zlib.crc32(card.encode()) % workers


def encode_frame(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    return len(data).to_bytes(4, "big") + data


class FrameReader:
    """Length-prefixed frames out of a byte stream (sans-IO: bytes in, messages out)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self.buffer += data
        out = []
        while len(self.buffer) >= 4:
            size = int.from_bytes(self.buffer[:4], "big")
            if size > FRAME_LIMIT:
                raise ValueError(f"frame of {size} bytes over the limit")
            if len(self.buffer) < 4 + size:
                break
            message = json.loads(bytes(self.buffer[4 : 4 + size]))
            del self.buffer[: 4 + size]
            if not isinstance(message, dict):
                raise ValueError("a frame must hold a JSON object")
            out.append(message)
        return out


def request_message(number: int, request: HttpRequest, identity: str | None) -> dict[str, Any]:
    return {
        "id": number,
        "method": request.method,
        "target": request.target,
        "headers": request.headers,
        "body": base64.b64encode(request.body).decode(),
        "identity": identity,
    }


def request_of(message: dict[str, Any]) -> tuple[HttpRequest, str | None]:
    request = HttpRequest(
        str(message["method"]),
        str(message["target"]),
        {str(k): str(v) for k, v in dict(message["headers"]).items()},
        base64.b64decode(message["body"]),
    )
    identity = message.get("identity")
    return request, None if identity is None else str(identity)


def answer_message(number: int, answer: Answer) -> dict[str, Any]:
    return {
        "id": number,
        "status": answer.status,
        "headers": answer.headers,
        "body": base64.b64encode(answer.body).decode(),
        "close": answer.close,
    }


def answer_of(message: dict[str, Any]) -> Answer:
    return Answer(
        int(message["status"]),
        [(str(k), str(v)) for k, v in message["headers"]],
        base64.b64decode(message["body"]),
        bool(message["close"]),
    )


class OwnerClient:
    """This worker's connection to one owner: requests tagged with a number, answers matched by it, many in
    flight. A lost owner (it died; the parent restarts it) fails the requests in flight; the next call connects
    again."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stream: trio.SocketStream | None = None
        self._waiting: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._number = 0
        self._connect_lock = trio.Lock()
        self._send_lock = trio.Lock()

    async def call(self, request: HttpRequest, identity: str | None, nursery: trio.Nursery) -> Answer:
        stream = await self._connected(nursery)
        self._number += 1
        number = self._number
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[number] = send
        try:
            async with self._send_lock:
                await stream.send_all(encode_frame(request_message(number, request, identity)))
            async with receive:
                message = await receive.receive()
        except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise trio.BrokenResourceError(f"card owner unreachable: {exc}") from exc
        finally:
            self._waiting.pop(number, None)
        return answer_of(message)

    async def _connected(self, nursery: trio.Nursery) -> trio.SocketStream:
        async with self._connect_lock:
            if self._stream is None:
                stream = await trio.open_unix_socket(self.path)
                self._stream = stream
                nursery.start_soon(self._read, stream)
            return self._stream

    async def _read(self, stream: trio.SocketStream) -> None:
        reader = FrameReader()
        try:
            while data := await stream.receive_some(65536):
                for message in reader.feed(data):
                    waiter = self._waiting.pop(int(message.get("id", -1)), None)
                    if waiter is not None:
                        waiter.send_nowait(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ValueError):
            pass
        finally:
            if self._stream is stream:
                self._stream = None
            for waiter in self._waiting.values():
                waiter.close()
            self._waiting.clear()
            await trio.aclose_forcefully(stream)


class PoolServer(OtaServer):
    """One worker of the pool: an OtaServer whose admin step runs at the card's owner."""

    def __init__(
        self, admin: AdminServer, *, index: int, workers: int, directory: str, **kwargs: Any
    ) -> None:
        super().__init__(admin, **kwargs)
        self.index = index
        self.workers = workers
        self.directory = directory
        self.owners = {i: OwnerClient(socket_path(directory, i)) for i in range(workers) if i != index}
        self.forwarded = 0
        self._nursery: trio.Nursery | None = None

    async def answer(self, request: HttpRequest, identity: str | None) -> Answer:
        card = card_key(request)
        owner = self.index if card is None else owner_of(card, self.workers)
        if owner == self.index or self._nursery is None:
            return self.admin.handle(request, psk_identity=identity)
        self.forwarded += 1
        try:
            return await self.owners[owner].call(request, identity, self._nursery)
        except (trio.BrokenResourceError, OSError) as exc:
            # the owner is gone (being restarted): the card is told to come back later (RFC 9110 503)
            self.tracer.emit(
                Actor.OTA,
                Actor.OTA,
                Layer.APP,
                f"owner worker {owner} of {card} unreachable: {exc}",
                error=True,
                kind=Kind.APP_ERROR,
                fields={"where": "worker link", "error": str(exc), "owner": owner},
            )
            return self.admin.error(503, f"the worker keeping {card} is restarting")

    async def serve_pool(self, host: str, port: int, *, task_status: trio.TaskStatus[None]) -> None:
        """The owner's UNIX socket and the shared TCP port, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            path = socket_path(self.directory, self.index)
            with_suppress_unlink(path)
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await sock.bind(path)
            sock.listen(256)
            owner_listener = trio.SocketListener(sock)
            nursery.start_soon(trio.serve_listeners, self.owner_connection, [owner_listener])
            await nursery.start(functools.partial(self.serve, host, port, reuse_port=True))
            task_status.started()

    async def owner_connection(self, stream: trio.SocketStream) -> None:
        """Requests from the other workers for cards this one owns."""
        reader = FrameReader()
        try:
            async with stream:
                while data := await stream.receive_some(65536):
                    for message in reader.feed(data):
                        request, identity = request_of(message)
                        answer = self.admin.handle(request, psk_identity=identity)
                        await stream.send_all(encode_frame(answer_message(int(message["id"]), answer)))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.tracer.emit(
                Actor.OTA,
                Actor.OTA,
                Layer.APP,
                f"worker link closed: {exc}",
                kind=Kind.APP_EVENT,
                fields={"worker": self.index, "reason": str(exc)},
            )
        except (
            ValueError,
            KeyError,
            TypeError,
        ) as exc:  # a malformed frame from a peer worker: drop the link
            self.tracer.emit(
                Actor.OTA,
                Actor.OTA,
                Layer.APP,
                f"malformed frame from a worker: {exc}",
                error=True,
                kind=Kind.APP_ERROR,
                fields={"where": "worker link", "error": str(exc)},
            )


def with_suppress_unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def socket_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"owner-{index}.sock")


def shard(path: str | None, index: int) -> str | None:
    """Worker `index`'s own file for a results log or trace: `name.w<index>.suffix`."""
    if path is None:
        return None
    file = Path(path)
    return str(file.with_name(f"{file.stem}.w{index}{file.suffix}"))


@dataclass
class WorkerConfig:
    index: int
    workers: int
    host: str
    port: int
    directory: str
    keys: dict[str, str] | None  # identity -> hex key; None: plain HTTP
    campaign: str | None
    admin_path: str
    results: str | None
    trace: str | None
    session: str | None
    drop_after: int | None


def run_worker(config: WorkerConfig) -> None:
    """One worker process: serves until SIGTERM, then prints its summary line."""
    from bipsim.commands.common import install_shutdown, make_tracer, until_signalled
    from bipsim.commands.ota_server import server_summary
    from bipsim.ota.campaign import Campaign

    install_shutdown(f"bipsim ota-server worker {config.index}")
    keys = None if config.keys is None else {k: bytes.fromhex(v) for k, v in config.keys.items()}
    admin = AdminServer(
        Campaign.load(config.campaign),
        path=config.admin_path,
        results_path=shard(config.results, config.index),
    )
    tracer = make_tracer(shard(config.trace, config.index), config.session)
    server = PoolServer(
        admin,
        index=config.index,
        workers=config.workers,
        directory=config.directory,
        keys=keys,
        tracer=tracer,
        drop_after=config.drop_after,
    )

    async def main() -> None:
        async def serve() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve_pool, config.host, config.port)
                print("ready", flush=True)

        await until_signalled(serve)

    try:
        trio.run(main)
    finally:
        admin.save()
        tracer.close()
    summary = server_summary(server)
    summary["forwarded"] = server.forwarded
    print("summary: " + json.dumps(summary), flush=True)


SUMMED = (
    "cards",
    "completed",
    "sessions",
    "connections",
    "refused",
    "handshake_failures",
    "timeouts",
    "crashes",
    "forgotten",
    "forwarded",
)


class Pool:
    """The parent of K workers (`bipsim ota-server --workers K`)."""

    def __init__(self, base: WorkerConfig, *, out: Any = None) -> None:
        self.base = base
        self.summaries: dict[int, dict[str, Any]] = {}
        self.restarts = 0
        self.out = out or sys.stdout

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Reserves the port (bound, not listening: it takes no connections), starts the workers, reports the port
        once every worker listens, and keeps them running until cancelled."""
        reserve = socket.socket(
            socket.AF_INET6 if ":" in self.base.host else socket.AF_INET, socket.SOCK_STREAM
        )
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            reserve.bind((self.base.host, self.base.port))
            port = reserve.getsockname()[1]
            with tempfile.TemporaryDirectory(prefix="bipsim-ota-pool-") as directory:
                os.chmod(directory, 0o700)
                async with trio.open_nursery() as nursery:
                    for index in range(self.base.workers):
                        config = WorkerConfig(**{**asdict(self.base), "index": index, "port": port})
                        config.directory = directory
                        await nursery.start(self._keep_running, config)
                    task_status.started(port)
        finally:
            reserve.close()

    async def _keep_running(self, config: WorkerConfig, *, task_status: trio.TaskStatus[None]) -> None:
        started = False

        def first_ready() -> None:
            nonlocal started
            started = True
            task_status.started()

        ready: Callable[[], None] = first_ready
        while True:
            code = await self._run_one(config, ready)
            if not started:  # it never listened (the port, the keys): no restart would do better
                raise CliError(f"worker {config.index} did not start (exit status {code})")
            if code in (0, -signal.SIGTERM) or code is None:
                return
            self.restarts += 1

            def restarted(code: int = code) -> None:
                print(
                    f"bipsim ota-server: worker {config.index} ended ({code}); restarted, its cards start again",
                    file=sys.stderr,
                    flush=True,
                )

            ready = restarted

    async def _run_one(self, config: WorkerConfig, ready: Callable[[], None] | None) -> int | None:
        with tempfile.NamedTemporaryFile("w", dir=config.directory, suffix=".json", delete=False) as file:
            json.dump(asdict(config), file)
        command = [sys.executable, "-m", "bipsim.ota.server_pool", file.name]
        process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
        assert process.stdout is not None
        buffer = b""
        try:
            while chunk := await process.stdout.receive_some(65536):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    text = line.decode("utf-8", "replace").strip()
                    if text == "ready" and ready is not None:
                        ready()
                        ready = None
                    elif text.startswith("summary: "):
                        self.summaries[config.index] = json.loads(text.removeprefix("summary: "))
            return await process.wait()
        finally:
            if process.returncode is None:
                with trio.CancelScope(shield=True):
                    process.terminate()
                    with trio.move_on_after(10):
                        while chunk := await process.stdout.receive_some(65536):
                            buffer += chunk
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
                for line in buffer.split(b"\n"):
                    text = line.decode("utf-8", "replace").strip()
                    if text.startswith("summary: "):
                        self.summaries[config.index] = json.loads(text.removeprefix("summary: "))

    def summary(self) -> dict[str, float]:
        total: dict[str, float] = {
            key: sum(int(s.get(key, 0)) for s in self.summaries.values()) for key in SUMMED
        }
        total["cpu_s"] = round(sum(float(s.get("cpu_s", 0)) for s in self.summaries.values()), 3)
        total["workers"] = self.base.workers
        total["restarts"] = self.restarts
        return total

    def merge_results(self) -> None:
        """The workers' results logs as one (their cards are disjoint: each card has one owner)."""
        if self.base.results is None:
            return
        merged: dict[str, Any] = {}
        for index in range(self.base.workers):
            path = shard(self.base.results, index)
            assert path is not None
            try:
                merged.update(json.loads(Path(path).read_text(encoding="utf-8")))
            except (FileNotFoundError, ValueError):
                continue
        target = Path(self.base.results)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(merged, indent=2), encoding="utf-8")
        os.replace(tmp, target)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m bipsim.ota.server_pool CONFIG_JSON_FILE", file=sys.stderr)
        return 2
    text = Path(argv[1]).read_text(encoding="utf-8")
    os.unlink(argv[1])  # it holds the keys: gone once read
    run_worker(WorkerConfig(**json.loads(text)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
