"""A host LPA with an AT backend, for the tests that reach the eUICC of a real `bipsim cp --profile euicc` as
open-source LPAs do (issue 23, "What it must show" item 9). Nothing here imports bipsim: the host side is written
from the public behaviour of lpac (github.com/estkme-group/lpac), its AT driver driver/apdu/at_etsi.c with
at_cmd_unix.c and its ES10 transport euicc/euicc.c, and from GSMA SGP.22 for the requests it builds:

- the line is opened raw (cfmakeraw); every command ends in CR LF; the modem's echo is not switched off (lpac never
  sends ATE0) and lines beginning with "AT" are skipped; a command's result is its final line, `OK` or `ERROR`
  (lpac recognises no other final result: it never sets +CMEE);
- connect: `AT`, then the test forms `AT+CCHO=?`, `AT+CCHC=?`, `AT+CGLA=?`, each to be answered OK;
- open: `AT+CCHO="<AID in lower-case hex>"`, the session id is what follows the `+CCHO: ` prefix;
- transmit: `AT+CGLA=<id>,<2 * APDU length>,"<APDU in lower-case hex>"`, the answer is the second comma-separated
  field of the `+CGLA: ` line without its quotes;
- ES10 (SGP.22 5.7.1): the DER request in STORE DATA blocks of at most 120 bytes, CLA 80 with lpac's own channel
  index in its low bits (1 for its first channel, whatever session id the modem gave), INS E2, P1 11 (more blocks)
  or 91 (last), P2 the block number from 0; after `61 xx` a GET RESPONSE `8x C0 00 00 xx`; the data of every
  answer concatenated; an answer whose SW1 is not 9x ends the function;
- a download (SGP.22 3.1.3): ES9+ over HTTPS in the JSON binding of SGP.22 6.5 (the standard library's http.client
  and ssl, trusting the CI), the ES10b requests put together from the DER the SM-DP+ sent, and the Bound Profile
  Package sent in the segments of SGP.22 2.5.5, each its own ES10 command.
"""

from __future__ import annotations

import os
import select
import termios
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ISD_R_AID = bytes.fromhex("A0000005591010FFFFFFFF8900000100")
BLOCK = 120  # lpac's STORE DATA block size (euicc/euicc.c, es10x_command_iter)
RSP_ASN = Path(__file__).resolve().parent.parent / "uicc" / "euicc" / "rsp.asn"


class HostError(AssertionError):
    """The modem answered what a host LPA cannot use (ERROR, no prefix, a line that never ended)."""


class StatusError(HostError):
    """An ES10 function ended with a status word that is not 9000 (lpac's es10x_transmit_iter gives up)."""

    def __init__(self, sw: int) -> None:
        super().__init__(f"status word {sw:04X}")
        self.sw = sw


@dataclass
class Exchange:
    """One command line and what came back: the lines between (echo removed) and the final result."""

    command: str
    lines: list[str]
    final: str


@dataclass
class AtLine:
    """The DTE end of a serial line, opened as lpac opens it (at_cmd_unix.c, at_device_open)."""

    device: Path
    deadline: float = 60.0  # seconds one command may take on a loaded machine before the host gives up
    transcript: list[Exchange] = field(default_factory=list)
    _fd: int = -1
    _buffer: bytes = b""

    def __post_init__(self) -> None:
        self._fd = os.open(self.device, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self._fd)
        termios.tcflush(self._fd, termios.TCIOFLUSH)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _line(self, until: float) -> str:
        while b"\n" not in self._buffer:
            left = until - time.monotonic()
            ready, _, _ = select.select([self._fd], [], [], max(left, 0))
            if not ready:
                raise HostError(f"no line end in {self.deadline} s; have {self._buffer!r}")
            chunk = os.read(self._fd, 4096)
            if not chunk:
                raise HostError("the line closed")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.split(b"\r", 1)[0].decode("ascii", "replace")

    def command(self, line: str) -> Exchange:
        """Sends `line` + CR LF and reads until a final result (lpac's at_expect stops at a line that is exactly
        OK or ERROR)."""
        os.write(self._fd, line.encode("ascii") + b"\r\n")
        until = time.monotonic() + self.deadline
        lines: list[str] = []
        while True:
            text = self._line(until)
            if not text or text[:2].upper() == "AT":
                continue  # a blank line of the V.250 framing, or the modem's echo of our command
            if text in ("OK", "ERROR") or text.startswith("+CME ERROR"):
                # lpac would wait past a +CME ERROR for ever: it is kept as the final result so a test fails at once
                exchange = Exchange(line, lines, text)
                self.transcript.append(exchange)
                return exchange
            lines.append(text)


def prefixed(exchange: Exchange, prefix: str) -> str:
    """What follows `prefix` on the answer's line (lpac keeps the last such line), HostError without one."""
    found = [line[len(prefix) :].lstrip(" ") for line in exchange.lines if line.startswith(prefix)]
    if exchange.final != "OK" or not found:
        raise HostError(f"{exchange.command}: {exchange.lines} {exchange.final}")
    return found[-1]


@dataclass
class HostLpa:
    """lpac's AT driver and ES10 transport over an AtLine. `sent` keeps every APDU as it left the host."""

    line: AtLine
    sent: list[bytes] = field(default_factory=list)
    channels: dict[int, str] = field(default_factory=dict)  # lpac's channel index -> the modem's session id

    def connect(self) -> None:
        for command in ("AT", "AT+CCHO=?", "AT+CCHC=?", "AT+CGLA=?"):
            if self.line.command(command).final != "OK":
                raise HostError(f"the modem lacks {command}")

    def open_channel(self, aid: bytes) -> int:
        """lpac's index of a new channel to `aid` (1 for the first), the modem's session id kept as a string."""
        identifier = prefixed(self.line.command(f'AT+CCHO="{aid.hex()}"'), "+CCHO: ")
        index = min(set(range(1, 5)) - set(self.channels))
        self.channels[index] = identifier
        return index

    def close_channel(self, index: int) -> Exchange:
        return self.line.command(f"AT+CCHC={self.channels.pop(index)}")

    def transmit(self, index: int, apdu: bytes) -> bytes:
        self.sent.append(apdu)
        exchange = self.line.command(f'AT+CGLA={self.channels[index]},{2 * len(apdu)},"{apdu.hex()}"')
        answer = prefixed(exchange, "+CGLA: ").split(",")
        if len(answer) < 2:
            raise HostError(f"+CGLA answer without data: {exchange.lines}")
        return bytes.fromhex(answer[1].strip('"'))

    def exchange(self, index: int, apdu: bytes) -> tuple[bytes, int]:
        """One APDU and its GET RESPONSEs after 61 xx: the data of all answers, the last status word."""
        data = b""
        while True:
            answer = self.transmit(index, apdu)
            if len(answer) < 2:
                raise HostError(f"an answer of {len(answer)} bytes")
            data += answer[:-2]
            sw1, sw2 = answer[-2], answer[-1]
            if sw1 != 0x61:
                return data, sw1 << 8 | sw2
            apdu = bytes((0x80 | index, 0xC0, 0x00, 0x00, sw2))

    def store_data(self, index: int, request: bytes, *, block: int = BLOCK) -> bytes:
        """An ES10 function: `request` in STORE DATA blocks, its DER answer; StatusError on a refusal."""
        answer = b""
        blocks = [request[at : at + block] for at in range(0, len(request), block)] or [b""]
        for number, chunk in enumerate(blocks):
            p1 = 0x91 if number == len(blocks) - 1 else 0x11
            data, sw = self.exchange(index, bytes((0x80 | index, 0xE2, p1, number, len(chunk))) + chunk)
            answer += data
            if sw >> 12 != 0x9:
                raise StatusError(sw)
        return answer


# --- SGP.22 on the host: the ASN.1 module compiled by asn1tools itself, keys and certificates by cryptography ----


def rsp_spec() -> Any:
    """The project's SGP.22 module (uicc/euicc/rsp.asn) compiled here by asn1tools, DER."""
    import warnings

    import asn1tools

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # asn1tools' parser calls pyparsing's old names
        return asn1tools.compile_files([str(RSP_ASN)], "der")


def tlvs(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """The BER-TLVs of `data` (ISO/IEC 8825-1): (tag, value, the whole TLV as it stands)."""
    found = []
    at = 0
    while at < len(data):
        start = at
        tag = data[at]
        at += 1
        if tag & 0x1F == 0x1F:
            while True:
                tag = tag << 8 | data[at]
                at += 1
                if not data[at - 1] & 0x80:
                    break
        length = data[at]
        at += 1
        if length & 0x80:
            count = length & 0x7F
            length = int.from_bytes(data[at : at + count], "big")
            at += count
        value = data[at : at + length]
        if len(value) != length:
            raise HostError(f"TLV {tag:X} wants {length} bytes, {len(value)} left")
        at += length
        found.append((tag, value, data[start:at]))
    return found


@dataclass(frozen=True)
class HostPki:
    """The certificates and the SM-DP+ DPauth key of the test PKI's folder, read from its PEM files."""

    ci: Any
    dpauth: Any
    dpauth_key: Any

    @classmethod
    def load(cls, folder: Path) -> HostPki:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        def cert(name: str) -> Any:
            return x509.load_pem_x509_certificate((folder / f"{name}.pem").read_bytes())

        key = load_pem_private_key((folder / "dpauth.key").read_bytes(), password=None)
        return cls(cert("ci"), cert("dpauth"), key)

    @property
    def ci_pkid(self) -> bytes:
        from cryptography import x509

        return bytes(self.ci.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest)


def plain_signature(key: Any, data: bytes) -> bytes:
    """ECDSA-SHA256 as SGP.22's '5F37' carries it: r||s, 32 bytes each (BSI TR-03111)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify_plain(certificate: Any, signature: bytes, data: bytes) -> None:
    """Raises cryptography's InvalidSignature unless `signature` (r||s) is the certificate key's over `data`."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    certificate.public_key().verify(der, data, ec.ECDSA(hashes.SHA256()))


def authenticate_server_request(
    spec: Any, keys: HostPki, *, challenge: bytes, transaction_id: bytes, server_challenge: bytes
) -> bytes:
    """ES10b.AuthenticateServer (SGP.22 5.7.13) as an SM-DP+ would have made it in initiateAuthentication:
    serverSigned1 signed with the DPauth key (serverSignature1 covers its DER, tag '30' included), the CI's key
    identifier, the DPauth certificate and ctxParams1."""
    signed1 = {
        "transactionId": transaction_id,
        "euiccChallenge": challenge,
        "serverAddress": "127.0.0.1:8443",
        "serverChallenge": server_challenge,
    }
    from cryptography.hazmat.primitives.serialization import Encoding

    return bytes(
        spec.encode(
            "AuthenticateServerRequest",
            {
                "serverSigned1": signed1,
                "serverSignature1": plain_signature(keys.dpauth_key, spec.encode("ServerSigned1", signed1)),
                "euiccCiPKIdToBeUsed": keys.ci_pkid,
                "serverCertificate": keys.dpauth.public_bytes(Encoding.DER),
                "ctxParams1": (
                    "ctxParamsForCommonAuthentication",
                    {
                        "matchingId": "OP1",
                        "deviceInfo": {
                            "tac": bytes.fromhex("35290611"),
                            "deviceCapabilities": {"eutranSupportedRelease": bytes.fromhex("0d0000")},
                        },
                    },
                ),
            },
        )
    )


# --- a profile download as `lpac profile download` does it (SGP.22 3.1.3) -------------------------------------------


def der(tag: bytes, value: bytes) -> bytes:
    """A DER TLV (ISO/IEC 8825-1 8.1.3: the short length form up to 127, else 81/82/83 and the length)."""
    size = len(value)
    if size < 0x80:
        return tag + bytes((size,)) + value
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return tag + bytes((0x80 | len(octets),)) + octets + value


def tagged(data: bytes, tag: bytes) -> bytes:
    """`data` as the data object `tag`: as it is when it is one already (the ES9+ JSON carries the DER of the
    whole object), else wrapped."""
    return data if data.startswith(tag) else der(tag, data)


def bpp_segments(bpp: bytes) -> list[bytes]:
    """The Bound Profile Package in the segments SGP.22 2.5.5 has the LPA send, each in its own ES10 command:
    BF36's tag and length with InitialiseSecureChannel (BF23); A0 whole; A1's tag and length, then each 88; A2
    whole when present; A3's tag and length, then each 86."""
    (outer,) = tlvs(bpp)
    children = tlvs(outer[1])

    def head(tlv: tuple[int, bytes, bytes]) -> bytes:
        return tlv[2][: len(tlv[2]) - len(tlv[1])]

    by_tag = {tag: (tag, value, raw) for tag, value, raw in children}
    segments = [head(outer) + by_tag[0xBF23][2], by_tag[0xA0][2], head(by_tag[0xA1])]
    segments += [raw for _, _, raw in tlvs(by_tag[0xA1][1])]
    if 0xA2 in by_tag:
        segments.append(by_tag[0xA2][2])
    segments.append(head(by_tag[0xA3]))
    segments += [raw for _, _, raw in tlvs(by_tag[0xA3][1])]
    return segments


class Es9Failed(HostError):
    """An ES9+ function that did not execute: its name, the HTTP status and functionExecutionStatus."""

    def __init__(self, function: str, http_status: int, status: dict[str, Any]) -> None:
        super().__init__(f"{function}: HTTP {http_status} {status}")
        self.function = function
        self.status = status


@dataclass
class Es9Host:
    """ES9+ over HTTPS as SGP.22 6.5 binds it (the LPA's side): POST /gsma/rsp2/es9plus/<function> with
    X-Admin-Protocol and a JSON body, ASN.1 values in base64, transactionId in hex; the SM-DP+'s TLS certificate
    must chain to the CI and name the host."""

    address: str  # HOST:PORT
    ca: Path  # the CI's certificate (PEM)
    calls: list[tuple[str, int]] = field(default_factory=list)  # function, HTTP status

    def call(self, function: str, body: dict[str, Any]) -> dict[str, Any]:
        import http.client
        import json
        import ssl

        host, port = self.address.rsplit(":", 1)
        context = ssl.create_default_context(cafile=str(self.ca))
        connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=60)
        try:
            connection.request(
                "POST",
                f"/gsma/rsp2/es9plus/{function}",
                body=json.dumps(
                    {
                        "header": {
                            "functionRequesterIdentifier": "host-lpa",
                            "functionCallIdentifier": function,
                        },
                        **body,
                    }
                ),
                headers={"X-Admin-Protocol": "gsma/rsp/v2.2.0", "Content-Type": "application/json"},
            )
            response = connection.getresponse()
            text = response.read()
        finally:
            connection.close()
        self.calls.append((function, response.status))
        if response.status == 204:
            return {}
        answer: dict[str, Any] = json.loads(text)
        status = answer.get("header", {}).get("functionExecutionStatus", {})
        if response.status != 200 or status.get("status") != "Executed-Success":
            raise Es9Failed(function, response.status, status)
        return answer


def b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    import base64

    return base64.b64decode(text, validate=True)
