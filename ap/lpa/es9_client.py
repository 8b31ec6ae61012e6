"""The LPA's ES9+ client (GSMA SGP.22 section 5.6, the JSON binding of 6.5): initiateAuthentication,
authenticateClient, getBoundProfilePackage, handleNotification and cancelSession as HTTPS POSTs to the SM-DP+
(docs/protocols.md, "eUICC and the cloud backup").

TLS trusts only the GSMA CI of the test PKI (SGP.22 2.6.6: the LPA verifies the SM-DP+'s TLS certificate, DPauth's,
up to the CI), with the host name checked. HTTP/1.1 through h11 (ota/http_client.py), one connection per request. The bodies are
ota/es9_json.py's; every request and answer is an `lpa.smdp` trace event (ap <-> smdp, hex: the JSON body).
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from bipsim.ota.es9_json import (
    ES9_PATH,
    REQUEST_HEADERS,
    Es9Error,
    Es9FormatError,
    b64,
    decode_response,
    encode_request,
)
from bipsim.ota.http_client import Failure, HttpClientError, request
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer

REQUEST_TIMEOUT = 30.0
MAX_ANSWER = 1 << 20  # bytes of an answer body we read (a bound profile package is well under)

# (target, body) -> (HTTP status, body): how a request reaches the SM-DP+ (HTTPS by default; a test's fake)
Transport = Callable[[str, bytes], Awaitable[tuple[int, bytes]]]


class Es9Unreachable(Exception):
    """The SM-DP+ could not be reached, or its connection broke off (TLS refused, reset, timeout)."""


def _der_tlv(tag: bytes, value: bytes) -> bytes:
    n = len(value)
    length = (
        bytes((n,))
        if n < 0x80
        else bytes((0x80 | ((n.bit_length() + 7) // 8),)) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return tag + length + value


class Es9Client:
    """ES9+ towards the SM-DP+ at `address` (HOST:PORT). `ca_pem` is the CI certificate the TLS chain must end
    at (or `context`, e.g. bipsim.uicc.euicc.pki.client_ssl_context); `transport` replaces HTTPS (tests)."""

    def __init__(
        self,
        address: str,
        *,
        ca_pem: bytes | None = None,
        context: ssl.SSLContext | None = None,
        tracer: Tracer = NULL_TRACER,
        transport: Transport | None = None,
    ) -> None:
        host, sep, port = address.rpartition(":")
        if not sep:
            host, port = address, "443"
        if not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"{address!r} is not an SM-DP+ address HOST[:PORT]")
        self.address = address
        self.host, self.port = host.strip("[]"), int(port)
        self.tracer = tracer
        self.requests = 0  # requests sent: the scenarios count them
        if transport is None:
            if context is None:
                if ca_pem is None:
                    raise ValueError("ES9+ over HTTPS needs the CI certificate to trust")
                context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
            self._context: ssl.SSLContext | None = context
            transport = self._https
        else:
            self._context = None
        self._transport = transport

    async def _https(self, target: str, body: bytes) -> tuple[int, bytes]:
        assert self._context is not None
        host_header = f"[{self.host}]" if ":" in self.host else self.host
        headers = [
            ("host", f"{host_header}:{self.port}"),
            ("connection", "close"),
            ("content-length", str(len(body))),
            *REQUEST_HEADERS,
        ]
        try:
            answer = await request(
                self._open, "POST", target, headers, body, max_answer=MAX_ANSWER, timeout=REQUEST_TIMEOUT
            )
        except HttpClientError as exc:
            if exc.failure is Failure.TOO_LARGE:
                raise Es9Unreachable(f"the SM-DP+'s answer is over {MAX_ANSWER} bytes") from None
            raise Es9Unreachable(f"POST {target}: {exc.cause or exc}") from None
        return answer.status, answer.body

    async def _open(self) -> trio.abc.Stream:
        """TCP to the SM-DP+ and the TLS handshake over it (the certificate checked against the CI)."""
        assert self._context is not None
        tcp = await trio.open_tcp_stream(self.host, self.port)
        stream = trio.SSLStream(tcp, self._context, server_hostname=self.host)
        try:
            await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream

    async def call(self, function: str, fields: dict[str, Any], *, step: str | None = None) -> dict[str, Any]:
        """One ES9+ function: the answer's fields (Es9Error when it Failed, Es9FormatError when it is not an ES9+
        answer, Es9Unreachable when no answer came)."""
        body = encode_request(function, fields)
        target = ES9_PATH + function
        self.requests += 1
        self.tracer.emit(
            Actor.AP,
            Actor.SMDP,
            Layer.APP,
            f"ES9+ {function} request",
            body,
            step=step,
            kind=Kind.LPA_ES9,
            fields={"function": function, "direction": "request", "host": self.host, "port": self.port},
        )
        try:
            status, answer = await self._transport(target, body)
        except Es9Unreachable as exc:
            self._answer(function, b"", {"status": 0, "error": str(exc)}, error=True)
            raise
        facts: dict[str, Any] = {"status": status}
        try:
            if status not in (200, 204):
                raise Es9FormatError(f"HTTP status {status}")
            decoded = decode_response(answer)
        except Es9Error as exc:
            facts.update(subject_code=exc.subject_code, reason_code=exc.reason_code, error=exc.message)
            self._answer(function, answer, facts, error=True)
            raise
        self._answer(function, answer, facts)
        return decoded

    def _answer(self, function: str, body: bytes, facts: dict[str, Any], *, error: bool = False) -> None:
        self.tracer.emit(
            Actor.SMDP,
            Actor.AP,
            Layer.APP,
            f"ES9+ {function} answer {facts.get('status')}" + (f": {facts.get('error')}" if error else ""),
            body,
            error=error,
            kind=Kind.LPA_ES9,
            fields={"function": function, "direction": "response", **facts},
        )

    # --- the functions (SGP.22 5.6 / 6.5.2) --------------------------------------------------------------------

    async def initiate_authentication(
        self, *, euicc_challenge: bytes, euicc_info1: bytes, smdp_address: str, step: str | None = None
    ) -> dict[str, bytes]:
        """initiateAuthentication (6.5.2.6): transactionId and the DER of serverSigned1, serverSignature1 (5F37),
        euiccCiPKIdToBeUsed (04) and serverCertificate, as the eUICC's AuthenticateServer takes them."""
        answer = await self.call(
            "initiateAuthentication",
            {"euiccChallenge": euicc_challenge, "euiccInfo1": euicc_info1, "smdpAddress": smdp_address},
            step=step,
        )
        signature = b64(answer.get("serverSignature1"), "serverSignature1")
        if not signature.startswith(b"\x5f\x37"):  # the bare signature: give it its [APPLICATION 55] tag
            signature = _der_tlv(b"\x5f\x37", signature)
        pkid = b64(answer.get("euiccCiPKIdToBeUsed"), "euiccCiPKIdToBeUsed")
        if not (pkid[:1] == b"\x04" and len(pkid) == 2 + pkid[1]):  # the bare key identifier
            pkid = _der_tlv(b"\x04", pkid)
        return {
            "transactionId": _hex(answer, "transactionId"),
            "serverSigned1": b64(answer.get("serverSigned1"), "serverSigned1"),
            "serverSignature1": signature,
            "euiccCiPKIdToBeUsed": pkid,
            "serverCertificate": b64(answer.get("serverCertificate"), "serverCertificate"),
        }

    async def authenticate_client(
        self, *, transaction_id: bytes, authenticate_server_response: bytes, step: str | None = None
    ) -> dict[str, bytes]:
        """authenticateClient (6.5.2.8): profileMetadata (StoreMetadataRequest, BF25), smdpSigned2,
        smdpSignature2 (5F37) and smdpCertificate, as DER."""
        answer = await self.call(
            "authenticateClient",
            {
                "transactionId": transaction_id.hex().upper(),
                "authenticateServerResponse": authenticate_server_response,
            },
            step=step,
        )
        signature = b64(answer.get("smdpSignature2"), "smdpSignature2")
        if not signature.startswith(b"\x5f\x37"):
            signature = _der_tlv(b"\x5f\x37", signature)
        return {
            "transactionId": _hex(answer, "transactionId"),
            "profileMetadata": b64(answer.get("profileMetadata"), "profileMetadata"),
            "smdpSigned2": b64(answer.get("smdpSigned2"), "smdpSigned2"),
            "smdpSignature2": signature,
            "smdpCertificate": b64(answer.get("smdpCertificate"), "smdpCertificate"),
        }

    async def get_bound_profile_package(
        self, *, transaction_id: bytes, prepare_download_response: bytes, step: str | None = None
    ) -> bytes:
        """getBoundProfilePackage (6.5.2.7): the BoundProfilePackage's DER (BF36)."""
        answer = await self.call(
            "getBoundProfilePackage",
            {
                "transactionId": transaction_id.hex().upper(),
                "prepareDownloadResponse": prepare_download_response,
            },
            step=step,
        )
        return b64(answer.get("boundProfilePackage"), "boundProfilePackage")

    async def handle_notification(self, pending_notification: bytes, *, step: str | None = None) -> None:
        """handleNotification (6.5.2.9): a PendingNotification (the ProfileInstallationResult of the install)."""
        await self.call("handleNotification", {"pendingNotification": pending_notification}, step=step)

    async def cancel_session(
        self, *, transaction_id: bytes, cancel_session_response: bytes, step: str | None = None
    ) -> None:
        """cancelSession (6.5.2.10) with the eUICC's CancelSessionResponse."""
        await self.call(
            "cancelSession",
            {"transactionId": transaction_id.hex().upper(), "cancelSessionResponse": cancel_session_response},
            step=step,
        )


def _hex(answer: dict[str, Any], name: str) -> bytes:
    value = answer.get(name)
    try:
        if not isinstance(value, str) or not value:
            raise ValueError
        return bytes.fromhex(value)
    except ValueError:
        raise Es9FormatError(f"{name}: not hex text") from None
