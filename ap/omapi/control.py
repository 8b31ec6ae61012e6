"""The AP's OMAPI control socket (docs/protocols.md, "OMAPI on the AP": "The control socket"): how `bipsim omapi`
and scenario scripts call OMAPI on a running AP, as an application would.

TCP on 127.0.0.1 by default, one JSON object a line each way. Requests (`op`):

- `status`: readers with card presence, the variable, availability and rule count as the last start-up found them
  (`as_of`: "start-up"; a card pulled or put back since shows at the next `boot`); the NFC switch and the gate.
- `run`: one application's OMAPI sequence: SEService (as `package` with certificate hash `hash`), the Reader named
  `reader` or, when it is null, the chooser's pick; openSession; openLogicalChannel(`aid`) (or openBasicChannel
  with `basic`); getSelectResponse when `select_response`; transmit of each of `apdus`; close. The answer holds
  `responses` (each R-APDU in hex, exactly as the applet answered) or `exception` (the OMAPI name) and `reason`.
- `boot`: the terminal's framework starts again (steps 201..206 and 301..305 anew).
- Every request may carry `wait`: the seconds it waits for the start-up steps when the AP has no modem session yet
  (default and at most READY_TIMEOUT); after it, or at once with `wait` 0, the answer is the error "no modem
  session". `bipsim omapi --status` sends 0 and so answers at once.
- `run` with `keep_open` leaves the channel open and answers its `handle`; `transmit` (`handle`, `apdus`) sends more
  APDUs on it and `close` (`handle`) closes it with its session: a client that holds a channel across requests.

Answers always carry `ok`; a request that is not JSON, too long (more than MAX_LINE bytes) or names no known `op`
gets `{"ok": false, "error": ...}` and the connection stays usable.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from bipsim.ap.omapi.errors import OmapiError
from bipsim.ap.omapi.service import BASIC_CHANNEL_REASON, AppIdentity, Channel, SEService
from bipsim.ap.omapi.stack import OmapiStack
from bipsim.link.line_requests import serve_line_requests
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer

MAX_LINE = 65536
READY_TIMEOUT = (
    60.0  # a request waits this long for the start-up steps (the modem session may still be coming)
)


class RequestError(ValueError):
    pass


def _hex(request: dict[str, Any], key: str, *, required: bool = True) -> bytes | None:
    value = request.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise RequestError(f"{key}: give hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise RequestError(f"{key}: {value[:40]!r} is not hex") from None


class ControlServer:
    def __init__(self, stack: OmapiStack, *, tracer: Tracer = NULL_TRACER) -> None:
        self.stack = stack
        self.tracer = tracer
        self.address: tuple[str, int] | None = None
        self.kept: dict[int, tuple[SEService, Channel]] = {}  # channels a run left open, by handle
        self._next_handle = 0

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()
        self.address = (str(bound[0]), int(bound[1]))
        self.tracer.emit(
            Actor.AP,
            Actor.AP,
            Layer.APP,
            f"OMAPI control socket listening on {bound[0]}:{bound[1]}",
            kind=Kind.OMAPI_CONTROL,
            fields={"host": str(bound[0]), "port": int(bound[1])},
        )
        print(f"omapi listening on {bound[0]}:{bound[1]}", flush=True)
        task_status.started(int(bound[1]))
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        async def answer(line: bytes) -> bytes:
            return json.dumps(await self.answer(line)).encode()

        too_long = json.dumps({"ok": False, "error": "request line too long"}).encode()
        await serve_line_requests(stream, answer, max_line=MAX_LINE, too_long=too_long)

    async def answer(self, line: bytes) -> dict[str, Any]:
        """The answer to one request line (never raises for a bad request)."""
        op: object = None
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise RequestError("a request is a JSON object")
            op = request.get("op")
            wait = request.get("wait", READY_TIMEOUT)
            if not isinstance(wait, int | float) or isinstance(wait, bool) or wait < 0:
                raise RequestError("wait: give the seconds to wait for the start-up (0 or more)")
            with trio.move_on_after(min(float(wait), READY_TIMEOUT)):
                await self.stack.ready.wait()
            if self.stack.service is None:
                raise RequestError("no modem session: the OMAPI service has not started")
            if op == "status":
                answer = self.status()
            elif op == "run":
                answer = await self.run(request)
            elif op in ("transmit", "close"):
                answer = await self.on_kept(request, op)
            elif op == "boot":
                await self.stack.reboot()
                answer = self.status()
            else:
                raise RequestError(f"unknown op {op!r} (status, run, transmit, close, boot)")
        except (RequestError, LookupError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            answer = {"ok": False, "error": str(exc)}
        self.tracer.emit(
            Actor.AP,
            Actor.AP,
            Layer.APP,
            f"OMAPI control request: {'ok' if answer.get('ok') else answer.get('exception') or answer.get('error')}",
            kind=Kind.OMAPI_CONTROL,
            error=not answer.get("ok"),
            fields={"op": op if isinstance(op, str) else None, "ok": bool(answer.get("ok"))},
        )
        return answer

    def status(self) -> dict[str, Any]:
        service = self.stack.service
        assert service is not None
        readers = []
        for slot, record in sorted(service.framework.cards.items()):
            readers.append(
                {
                    "name": f"SIM{slot}",
                    "present": record.present,
                    "variable": record.enforce_carrier_privilege,
                    "available": slot in service.available,
                    "rules": len(record.rules.rules) if record.rules is not None else None,
                    "reason": record.reason,
                }
            )
        return {
            "ok": True,
            "as_of": "start-up",  # `present`, `variable`, `available`: the last start-up's, not a new card check
            "readers": readers,
            "nfc": service.phone.nfc,
            "gate": service.phone.gate.value,
            "variable_reads": service.phone.reads,
        }

    async def run(self, request: dict[str, Any]) -> dict[str, Any]:
        service = self.stack.service
        assert service is not None
        package = request.get("package", "org.bipsim.omapi.client")
        if not isinstance(package, str) or not package:
            raise RequestError("package: give the application's package name")
        cert_hash = _hex(request, "hash")
        assert cert_hash is not None
        aid = _hex(request, "aid")
        assert aid is not None
        apdus_raw = request.get("apdus", [])
        if not isinstance(apdus_raw, list):
            raise RequestError("apdus: give a list of hex APDUs")
        apdus = [_hex({"apdu": item}, "apdu") for item in apdus_raw]
        reader_name = request.get("reader")
        if reader_name is not None and not isinstance(reader_name, str):
            raise RequestError("reader: a reader name such as SIM1, or null for the chooser")
        out: dict[str, Any] = {"ok": False, "reader": reader_name}
        se = service.se_service(AppIdentity(package, cert_hash))
        channel: Channel | None = None
        kept = False
        try:
            readers = await se.get_readers()
            out["readers"] = [reader.name for reader in readers]
            reader = await se.reader(reader_name) if reader_name is not None else await se.choose_reader()
            out["reader"] = reader.name
            session = await reader.open_session()
            if request.get("basic"):
                channel = await session.open_basic_channel(aid)
            else:
                channel = await session.open_logical_channel(aid)
            if channel is None:
                why = BASIC_CHANNEL_REASON if request.get("basic") else "no logical channel left on the card"
                out.update(channel=None, reason=f"no channel available (the open returned null: {why})")
                return out
            out["channel"] = channel.session_id
            if request.get("select_response"):
                select = await channel.get_select_response()
                out["select_response"] = select.hex().upper() if select is not None else None
            out["responses"] = await self._transmit_all(channel, apdus)
            if request.get("keep_open"):
                self._next_handle += 1
                self.kept[self._next_handle] = (se, channel)
                out["handle"] = self._next_handle
                kept = True
            else:
                await channel.close()
                await session.close()
            out["ok"] = True
        except OmapiError as exc:
            out.update(exception=exc.name, reason=exc.reason)
            if channel is not None and channel.is_open():
                await channel.close()
        finally:
            if not kept:
                await se.shutdown()
        return out

    @staticmethod
    async def _transmit_all(channel: Channel, apdus: list[bytes | None]) -> list[str]:
        responses = []
        for apdu in apdus:
            assert apdu is not None
            responses.append((await channel.transmit(apdu)).hex().upper())
        return responses

    async def on_kept(self, request: dict[str, Any], op: str) -> dict[str, Any]:
        """`transmit` and `close` on a channel a `run` with `keep_open` left open (its `handle`)."""
        handle = request.get("handle")
        if not isinstance(handle, int) or handle not in self.kept:
            raise RequestError(f"handle: {handle!r} is no open channel of this socket")
        se, channel = self.kept[handle]
        out: dict[str, Any] = {"ok": False, "handle": handle}
        try:
            if op == "transmit":
                raw = request.get("apdus", [])
                if not isinstance(raw, list):
                    raise RequestError("apdus: give a list of hex APDUs")
                out["responses"] = await self._transmit_all(
                    channel, [_hex({"apdu": item}, "apdu") for item in raw]
                )
            else:
                del self.kept[handle]
                await se.shutdown()
            out["ok"] = True
        except OmapiError as exc:
            out.update(exception=exc.name, reason=exc.reason)
        return out


async def request(host: str, port: int, message: dict[str, Any], *, timeout: float = 120.0) -> dict[str, Any]:
    """Sends one request to an AP's control socket and returns its answer (the client of `bipsim omapi`)."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(json.dumps(message).encode() + b"\n")
            buffer = b""
            while b"\n" not in buffer:
                data = await stream.receive_some(65536)
                if not data:
                    raise ConnectionError("the AP closed the control connection without an answer")
                buffer += data
    answer = json.loads(buffer.split(b"\n", 1)[0])
    if not isinstance(answer, dict):
        raise ConnectionError("the AP's answer is not a JSON object")
    return answer
