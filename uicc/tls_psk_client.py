"""A sans-IO TLS 1.2 client with pre-shared keys, as a UICC runs it for GlobalPlatform Amendment B (SCP81).

RFC 5246 (TLS 1.2) with RFC 4279 (PSK key exchange) and RFC 5487 / 5288 suites:
TLS_PSK_WITH_AES_128_CBC_SHA256 (0x00AE), TLS_PSK_WITH_AES_128_CBC_SHA (0x008C), TLS_PSK_WITH_AES_128_GCM_SHA256
(0x00A8). The PRF is P_SHA256 for all three. CBC records are MAC-then-encrypt with an explicit random IV; GCM records
carry an 8-byte explicit nonce. Bytes in with `receive(data)`, bytes out with `data_to_send()`; application data in
with `send(data)`, out through the events `receive` returns. Alerts from the peer raise TlsAlert; our own failures
send the matching alert and raise TlsError. Every random byte the client draws (client_random, CBC IVs) comes from
one injectable source, `random`, so that a seeded card produces the same bytes run after run (trace replay).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = b"\x03\x03"


class ContentType(IntEnum):
    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23


class HandshakeType(IntEnum):
    CLIENT_HELLO = 1
    SERVER_HELLO = 2
    SERVER_KEY_EXCHANGE = 12
    SERVER_HELLO_DONE = 14
    CLIENT_KEY_EXCHANGE = 16
    FINISHED = 20


class AlertDescription(IntEnum):
    CLOSE_NOTIFY = 0
    UNEXPECTED_MESSAGE = 10
    BAD_RECORD_MAC = 20
    HANDSHAKE_FAILURE = 40
    ILLEGAL_PARAMETER = 47
    DECODE_ERROR = 50
    DECRYPT_ERROR = 51
    PROTOCOL_VERSION = 70
    INTERNAL_ERROR = 80
    UNKNOWN_PSK_IDENTITY = 115


@dataclass(frozen=True)
class Suite:
    code: int
    name: str
    mac: str | None  # hashlib name for CBC suites; None for GCM
    mac_length: int
    key_length: int = 16
    fixed_iv_length: int = 0


SUITES: dict[int, Suite] = {
    0x00AE: Suite(0x00AE, "TLS_PSK_WITH_AES_128_CBC_SHA256", "sha256", 32),
    0x008C: Suite(0x008C, "TLS_PSK_WITH_AES_128_CBC_SHA", "sha1", 20),
    0x00A8: Suite(0x00A8, "TLS_PSK_WITH_AES_128_GCM_SHA256", None, 0, 16, 4),
}


class TlsState(Enum):
    START = "start"
    WAIT_SERVER_HELLO = "wait ServerHello"
    WAIT_SERVER_DONE = "wait ServerHelloDone"
    WAIT_CCS = "wait ChangeCipherSpec"
    WAIT_FINISHED = "wait Finished"
    CONNECTED = "connected"
    CLOSED = "closed"
    FAILED = "failed"


class TlsError(Exception):
    def __init__(self, description: AlertDescription, reason: str) -> None:
        super().__init__(f"{reason} (alert {description.name.lower()})")
        self.description = description


class TlsAlert(Exception):
    """The peer sent a fatal alert (or close_notify)."""

    def __init__(self, level: int, description: int) -> None:
        try:
            name = AlertDescription(description).name.lower()
        except ValueError:
            name = str(description)
        super().__init__(f"peer alert {name} (level {level})")
        self.level = level
        self.description = description


def p_sha256(secret: bytes, seed: bytes, size: int) -> bytes:
    out = b""
    a = seed
    while len(out) < size:
        a = hmac.new(secret, a, hashlib.sha256).digest()
        out += hmac.new(secret, a + seed, hashlib.sha256).digest()
    return out[:size]


def prf(secret: bytes, label: bytes, seed: bytes, size: int) -> bytes:
    return p_sha256(secret, label + seed, size)


def psk_premaster(psk: bytes) -> bytes:
    """RFC 4279 section 2: other_secret (N zero bytes) and the PSK, each with a 2-byte length."""
    n = struct.pack("!H", len(psk))
    return n + bytes(len(psk)) + n + psk


class _Direction:
    """One direction's record protection."""

    def __init__(
        self,
        suite: Suite | None,
        key: bytes = b"",
        mac_key: bytes = b"",
        salt: bytes = b"",
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.suite = suite
        self.random = random
        self.key = key
        self.mac_key = mac_key
        self.salt = salt
        self.seq = 0

    def _mac(self, kind: int, data: bytes) -> bytes:
        assert self.suite is not None and self.suite.mac is not None
        header = struct.pack("!QB2sH", self.seq, kind, VERSION, len(data))
        return hmac.new(self.mac_key, header + data, self.suite.mac).digest()

    def protect(self, kind: int, data: bytes) -> bytes:
        suite = self.suite
        if suite is None:
            return data
        if suite.mac is None:
            explicit = struct.pack("!Q", self.seq)
            aad = struct.pack("!QB2sH", self.seq, kind, VERSION, len(data))
            out = explicit + AESGCM(self.key).encrypt(self.salt + explicit, data, aad)
        else:
            mac = self._mac(kind, data)
            pad = 15 - (len(data) + len(mac)) % 16
            plain = data + mac + bytes((pad,)) * (pad + 1)
            iv = self.random(16)
            encryptor = Cipher(algorithms.AES(self.key), modes.CBC(iv)).encryptor()
            out = iv + encryptor.update(plain) + encryptor.finalize()
        self.seq += 1
        return out

    def unprotect(self, kind: int, data: bytes) -> bytes:
        suite = self.suite
        if suite is None:
            return data
        if suite.mac is None:
            if len(data) < 8 + 16:
                raise TlsError(AlertDescription.BAD_RECORD_MAC, "GCM record too short")
            explicit, body = data[:8], data[8:]
            aad = struct.pack("!QB2sH", self.seq, kind, VERSION, len(body) - 16)
            try:
                plain = AESGCM(self.key).decrypt(self.salt + explicit, body, aad)
            except Exception as exc:
                raise TlsError(AlertDescription.BAD_RECORD_MAC, "GCM authentication failed") from exc
        else:
            if len(data) < 32 or len(data) % 16:
                raise TlsError(AlertDescription.BAD_RECORD_MAC, "CBC record has a bad length")
            decryptor = Cipher(algorithms.AES(self.key), modes.CBC(data[:16])).decryptor()
            plain_padded = decryptor.update(data[16:]) + decryptor.finalize()
            pad = plain_padded[-1]
            size = len(plain_padded) - pad - 1 - suite.mac_length
            good = size >= 0 and plain_padded[size + suite.mac_length : -1] == bytes((pad,)) * pad
            plain = plain_padded[: max(size, 0)]
            mac = plain_padded[max(size, 0) : max(size, 0) + suite.mac_length]
            if not good or not hmac.compare_digest(mac, self._mac(kind, plain)):
                raise TlsError(AlertDescription.BAD_RECORD_MAC, "record MAC or padding is wrong")
        self.seq += 1
        return plain


class TlsPskClient:
    """One TLS 1.2 PSK client connection."""

    def __init__(
        self,
        identity: bytes,
        psk: bytes,
        suites: tuple[int, ...] = (0x00AE, 0x008C, 0x00A8),
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.identity = identity
        self.random = random
        self.psk = psk
        self.offered = suites
        self.state = TlsState.START
        self.suite: Suite | None = None
        self.hint = b""
        self._out = bytearray()
        self._in = bytearray()
        self._handshake_buffer = bytearray()
        self._transcript = bytearray()
        self._read = _Direction(None)
        self._write = _Direction(None)
        self.client_random = random(32)
        self.server_random = b""
        self.master = b""
        self._pending_keys: tuple[_Direction, _Direction] | None = None

    # --- output ---------------------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _record(self, kind: int, data: bytes) -> None:
        for start in range(0, max(len(data), 1), 16384):
            fragment = self._write.protect(kind, data[start : start + 16384])
            self._out += struct.pack("!B2sH", kind, VERSION, len(fragment)) + fragment

    def _handshake(self, kind: HandshakeType, body: bytes) -> None:
        message = struct.pack("!B", kind) + len(body).to_bytes(3, "big") + body
        self._transcript += message
        self._record(ContentType.HANDSHAKE, message)

    def _alert(self, description: AlertDescription, fatal: bool = True) -> None:
        self._record(ContentType.ALERT, bytes((2 if fatal else 1, description)))

    def start(self) -> bytes:
        """The ClientHello."""
        suites = b"".join(struct.pack("!H", s) for s in self.offered)
        body = VERSION + self.client_random + b"\x00" + struct.pack("!H", len(suites)) + suites + b"\x01\x00"
        self._handshake(HandshakeType.CLIENT_HELLO, body)
        self.state = TlsState.WAIT_SERVER_HELLO
        return self.data_to_send()

    def send(self, data: bytes) -> bytes:
        if self.state is not TlsState.CONNECTED:
            raise TlsError(AlertDescription.INTERNAL_ERROR, "not connected")
        self._record(ContentType.APPLICATION_DATA, data)
        return self.data_to_send()

    def close(self) -> bytes:
        if self.state is TlsState.CONNECTED:
            self._alert(AlertDescription.CLOSE_NOTIFY, fatal=False)
        self.state = TlsState.CLOSED
        return self.data_to_send()

    # --- input -----------------------------------------------------------------------------------------------

    def receive(self, data: bytes) -> bytes:
        """Feeds bytes from the server; returns decrypted application data (may be empty)."""
        self._in += data
        app = bytearray()
        try:
            while len(self._in) >= 5:
                kind, version, length = struct.unpack("!B2sH", self._in[:5])
                if length > 16384 + 2048:
                    raise TlsError(AlertDescription.DECODE_ERROR, "record too long")
                if len(self._in) < 5 + length:
                    break
                fragment = bytes(self._in[5 : 5 + length])
                del self._in[: 5 + length]
                plain = self._read.unprotect(kind, fragment)
                if kind == ContentType.ALERT:
                    if len(plain) >= 2:
                        if plain[1] == AlertDescription.CLOSE_NOTIFY:
                            self.state = TlsState.CLOSED
                            raise TlsAlert(plain[0], plain[1])
                        self.state = TlsState.FAILED
                        raise TlsAlert(plain[0], plain[1])
                elif kind == ContentType.CHANGE_CIPHER_SPEC:
                    if self.state is not TlsState.WAIT_CCS or self._pending_keys is None:
                        raise TlsError(AlertDescription.UNEXPECTED_MESSAGE, "unexpected ChangeCipherSpec")
                    self._read = self._pending_keys[1]
                    self.state = TlsState.WAIT_FINISHED
                elif kind == ContentType.HANDSHAKE:
                    self._handshake_buffer += plain
                    self._handshake_messages()
                elif kind == ContentType.APPLICATION_DATA:
                    if self.state is not TlsState.CONNECTED:
                        raise TlsError(
                            AlertDescription.UNEXPECTED_MESSAGE, "application data before Finished"
                        )
                    app += plain
                else:
                    raise TlsError(AlertDescription.UNEXPECTED_MESSAGE, f"unknown record type {kind}")
        except TlsError as exc:
            self._alert(exc.description)
            self.state = TlsState.FAILED
            raise
        return bytes(app)

    def _handshake_messages(self) -> None:
        buffer = self._handshake_buffer
        while len(buffer) >= 4:
            kind = buffer[0]
            length = int.from_bytes(buffer[1:4], "big")
            if len(buffer) < 4 + length:
                return
            message = bytes(buffer[: 4 + length])
            body = message[4:]
            del buffer[: 4 + length]
            if kind == HandshakeType.SERVER_HELLO and self.state is TlsState.WAIT_SERVER_HELLO:
                self._transcript += message
                self._server_hello(body)
            elif kind == HandshakeType.SERVER_KEY_EXCHANGE and self.state is TlsState.WAIT_SERVER_DONE:
                self._transcript += message
                hint_length = int.from_bytes(body[:2], "big")
                self.hint = body[2 : 2 + hint_length]
            elif kind == HandshakeType.SERVER_HELLO_DONE and self.state is TlsState.WAIT_SERVER_DONE:
                self._transcript += message
                self._client_flight()
            elif kind == HandshakeType.FINISHED and self.state is TlsState.WAIT_FINISHED:
                expected = prf(self.master, b"server finished", hashlib.sha256(self._transcript).digest(), 12)
                if not hmac.compare_digest(body, expected):
                    raise TlsError(
                        AlertDescription.DECRYPT_ERROR, "server Finished does not verify (wrong PSK?)"
                    )
                self._transcript += message
                self.state = TlsState.CONNECTED
            else:
                raise TlsError(
                    AlertDescription.UNEXPECTED_MESSAGE,
                    f"handshake message {kind} in state {self.state.value}",
                )

    def _server_hello(self, body: bytes) -> None:
        if len(body) < 38 or body[:2] != VERSION:
            raise TlsError(AlertDescription.PROTOCOL_VERSION, "server did not choose TLS 1.2")
        self.server_random = body[2:34]
        session_length = body[34]
        at = 35 + session_length
        if len(body) < at + 3:
            raise TlsError(AlertDescription.DECODE_ERROR, "ServerHello cut short")
        code = int.from_bytes(body[at : at + 2], "big")
        if code not in self.offered or code not in SUITES:
            raise TlsError(
                AlertDescription.ILLEGAL_PARAMETER, f"server chose suite 0x{code:04X} we did not offer"
            )
        if body[at + 2] != 0:
            raise TlsError(AlertDescription.ILLEGAL_PARAMETER, "server chose compression")
        self.suite = SUITES[code]
        self.state = TlsState.WAIT_SERVER_DONE

    def _client_flight(self) -> None:
        suite = self.suite
        assert suite is not None
        self._handshake(
            HandshakeType.CLIENT_KEY_EXCHANGE, struct.pack("!H", len(self.identity)) + self.identity
        )
        self.master = prf(
            psk_premaster(self.psk), b"master secret", self.client_random + self.server_random, 48
        )
        mac, key, iv = suite.mac_length, suite.key_length, suite.fixed_iv_length
        block = prf(
            self.master, b"key expansion", self.server_random + self.client_random, 2 * (mac + key + iv)
        )
        client_mac, server_mac = block[:mac], block[mac : 2 * mac]
        client_key, server_key = block[2 * mac : 2 * mac + key], block[2 * mac + key : 2 * mac + 2 * key]
        client_iv = block[2 * mac + 2 * key : 2 * mac + 2 * key + iv]
        server_iv = block[2 * mac + 2 * key + iv :]
        writer = _Direction(suite, client_key, client_mac, client_iv, self.random)
        reader = _Direction(suite, server_key, server_mac, server_iv)
        self._record(ContentType.CHANGE_CIPHER_SPEC, b"\x01")
        self._write = writer
        verify = prf(self.master, b"client finished", hashlib.sha256(self._transcript).digest(), 12)
        self._handshake(HandshakeType.FINISHED, verify)
        self._pending_keys = (writer, reader)
        self.state = TlsState.WAIT_CCS

    @property
    def connected(self) -> bool:
        return self.state is TlsState.CONNECTED
