"""What starts the card's OTA admin session: the SMS-PP push trigger (and the power-on and manual triggers).

An SMS-PP DOWNLOAD envelope (BER tag 'D1', TS 102 223 section 7.1 / TS 31.111 section 7.1) carries an SMS-DELIVER
TPDU (TS 23.040 section 9.2.2.1) whose user data holds a secured command packet (ETSI TS 102 225 section 5.1, its
SMS form in 3GPP TS 31.115 section 4): the user data header element '70' (CPI, length 0), then CPL, CHL, SPI, KIc,
KID, TAR, CNTR, PCNTR, RC/CC/DS and the secured data. The card checks it in the order of TS 102 225 section 5:
TAR known, deciphering (KIc: AES-CBC, zero IV, section 5.1.2), cryptographic checksum (KID: AES-CMAC, 8 bytes,
section 5.1.3.1) over CPL..PCNTR and the data with its padding, then the counter (SPI b5b4, section 5.1.1). A
failed check gets a response packet (PoR, TS 31.115 section 4.4: user data header element '71', RPL, RHL, TAR,
CNTR, PCNTR, status code of TS 102 225 table 5.5, [CC], data) and nothing is executed. PoRs for a packet that
failed its checks are sent unprotected; good ones are protected as the SPI's second octet asks.

The secured data is a remote command script (TS 102 226 section 5, compact or expanded) for the issuer security
domain (TAR '000000', TS 101 220 annex D). Its PUSH command (TS 102 226 section 9: CLA 80, INS EC, P1 01, P2 01
"request for BIP channel opening", data: OPEN CHANNEL COMPREHENSION-TLVs that take precedence over the card's own)
is the administration session trigger GlobalPlatform Amd B relies on: the card's BIP engine opens its channel to the
admin server. Other APDUs of the script go to the GP registry or the file system, as over HTTP.

SmsTriggerToolkit wraps the BIP engine as the card's Toolkit: SMS-PP DOWNLOAD envelopes are handled here, everything
else passes through, so neither the APDU processor nor the engine needs to know about secured packets.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

from bipsim.uicc.bip_engine import BipEngine
from bipsim.uicc.cat import EnvelopeTag, Tag, decode_envelope
from bipsim.uicc.remote_apdu import (
    RemoteApduError,
    decode_command_script,
    encode_command_script,
    encode_response_script,
)
from bipsim.uicc.tlv import Ctlv, TlvError, decode_ctlvs, encode_length
from bipsim.uicc.toolkit import ToolkitError

ISD_TAR = b"\x00\x00\x00"
CPI_IEI = 0x70  # TS 31.115 section 4.2: command packet identifier in the user data header
RPI_IEI = 0x71  # section 4.4: response packet identifier
ALGO_AES = 0x02  # KIc / KID low nibble (TS 102 225 5.1.2, 5.1.3.1): b2b1 '10' AES, b4b3 '00' CBC resp. CMAC
ALGO_IMPLICIT = 0x00
CC_LENGTH = 8
MAX_COUNTER = (1 << 40) - 1
PUSH = b"\x80\xec\x01\x01"  # TS 102 226 section 9.2: PUSH, request for BIP channel opening


class Status(IntEnum):
    """Response status codes, TS 102 225 table 5.5 (and TS 31.115 section 4.4)."""

    POR_OK = 0x00
    RC_CC_DS_FAILED = 0x01
    CNTR_LOW = 0x02
    CNTR_HIGH = 0x03
    CNTR_BLOCKED = 0x04
    CIPHERING_ERROR = 0x05
    UNIDENTIFIED_SECURITY_ERROR = 0x06
    INSUFFICIENT_MEMORY = 0x07
    MORE_TIME = 0x08
    TAR_UNKNOWN = 0x09
    INSUFFICIENT_SECURITY_LEVEL = 0x0A


class Check(IntEnum):
    """SPI b2b1 (and b4b3 of the second octet for the PoR)."""

    NONE = 0
    RC = 1
    CC = 2
    DS = 3


class CounterMode(IntEnum):
    """SPI b5b4."""

    NONE = 0
    AVAILABLE = 1  # counter present, no replay check
    HIGHER = 2  # process only if higher than the card's
    ONE_HIGHER = 3  # process only if exactly one higher


class PorMode(IntEnum):
    """SPI second octet b2b1."""

    NONE = 0
    REQUIRED = 1
    ON_ERROR = 2


@dataclass(frozen=True)
class Spi:
    """The security parameter indicator (TS 102 225 section 5.1.1)."""

    check: Check = Check.NONE
    cipher: bool = False
    counter: CounterMode = CounterMode.NONE
    por: PorMode = PorMode.REQUIRED
    por_check: Check = Check.NONE
    por_cipher: bool = False
    por_via_submit: bool = False

    def encode(self) -> bytes:
        first = self.check | (0x04 if self.cipher else 0) | self.counter << 3
        second = self.por | self.por_check << 2 | (0x10 if self.por_cipher else 0)
        second |= 0x20 if self.por_via_submit else 0
        return bytes((first, second))

    @classmethod
    def decode(cls, data: bytes) -> Spi:
        first, second = data[0], data[1]
        por = second & 0x03
        return cls(
            Check(first & 0x03),
            bool(first & 0x04),
            CounterMode(first >> 3 & 0x03),
            PorMode(por) if por != 3 else PorMode.REQUIRED,
            Check(second >> 2 & 0x03),
            bool(second & 0x10),
            bool(second & 0x20),
        )


@dataclass(frozen=True)
class Keyset:
    """One OTA key set (key version number 1..15): KIc for ciphering, KID for the checksum, both AES-128."""

    kvn: int
    kic: bytes
    kid: bytes


class PacketError(Exception):
    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(f"{status.name}: {reason}")
        self.status = status
        self.reason = reason


def _aes_cbc(key: bytes, data: bytes, *, decrypt: bool) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.CBC(bytes(16)))
    context = cipher.decryptor() if decrypt else cipher.encryptor()
    return context.update(data) + context.finalize()


def aes_cmac(key: bytes, data: bytes, length: int = CC_LENGTH) -> bytes:
    mac = CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()[:length]


def _pad_count(size: int) -> int:
    return -size % 16


# --- the sending side (an OTA platform; tests use it) ---------------------------------------------------------


def command_packet(
    data: bytes,
    *,
    spi: Spi,
    keys: Keyset | None = None,
    tar: bytes = ISD_TAR,
    counter: int = 0,
) -> bytes:
    """A command packet from CPL on (TS 102 225 5.1, TS 31.115 4.2), with its checksum and ciphering."""
    sig = CC_LENGTH if spi.check is Check.CC else 0
    if (spi.check is Check.CC or spi.cipher) and keys is None:
        raise ValueError("CC and ciphering need a key set")
    kic = (keys.kvn << 4 | ALGO_AES) if keys is not None and spi.cipher else 0
    kid = (keys.kvn << 4 | ALGO_AES) if keys is not None and spi.check is Check.CC else 0
    pcntr = _pad_count(6 + sig + len(data)) if spi.cipher else 0
    padded = data + bytes(pcntr)
    chl = 13 + sig
    cpl = 1 + chl + len(padded)
    head = struct.pack("!HB", cpl, chl) + spi.encode() + bytes((kic, kid)) + tar
    counters = counter.to_bytes(5, "big") + bytes((pcntr,))
    checksum = aes_cmac(keys.kid, head + counters + padded) if keys is not None and sig else b""
    tail = counters + checksum + padded
    if spi.cipher:
        assert keys is not None
        tail = _aes_cbc(keys.kic, tail, decrypt=False)
    return head + tail


def sms_user_data(packet: bytes) -> bytes:
    """The SMS user data: UDH with the CPI element (TS 31.115 4.2), then the command packet."""
    return bytes((2, CPI_IEI, 0)) + packet


def _bcd(number: str) -> bytes:
    digits = number + ("F" if len(number) % 2 else "")
    return bytes(int(digits[i + 1] + digits[i], 16) for i in range(0, len(digits), 2))


def sms_deliver(user_data: bytes, originator: str = "12345", *, udhi: bool = True) -> bytes:
    """An SMS-DELIVER TPDU (TS 23.040 9.2.2.1): PID 7F (USIM data download), DCS F6 (8-bit, class 2)."""
    first = 0x04 | (0x40 if udhi else 0)  # MTI 00, TP-MMS (no more messages), TP-UDHI
    address = bytes((len(originator), 0x81)) + _bcd(originator)
    scts = bytes.fromhex("52107020000000")
    return bytes((first,)) + address + b"\x7f\xf6" + scts + bytes((len(user_data),)) + user_data


def sms_pp_download(tpdu: bytes, address: bytes = b"\x91\x11\x22\x33") -> bytes:
    """The ENVELOPE (SMS-PP DOWNLOAD) data: 'D1', device identities network -> UICC, address, SMS TPDU."""
    objects = (
        Ctlv(Tag.DEVICE_IDENTITIES, b"\x83\x81", cr=True).encode()
        + Ctlv(Tag.ADDRESS, address).encode()
        + Ctlv(Tag.SMS_TPDU, tpdu, cr=True).encode()
    )
    return bytes((EnvelopeTag.SMS_PP_DOWNLOAD,)) + encode_length(len(objects)) + objects


def push_script(objects: list[Ctlv] | None = None, *, expanded: bool = False) -> bytes:
    """A remote command script holding the PUSH (request for BIP channel opening) with OPEN CHANNEL objects."""
    data = b"".join(o.encode() for o in objects or [])
    apdu = PUSH + bytes((len(data),)) + data if data else PUSH
    return encode_command_script([apdu], expanded=expanded, definite=True)


@dataclass(frozen=True)
class ResponsePacket:
    tar: bytes
    counter: int
    status: Status
    checksum: bytes
    data: bytes


def parse_por(user_data: bytes, *, spi: Spi | None = None, keys: Keyset | None = None) -> ResponsePacket:
    """Decodes (and, with `keys` and a protected `spi`, deciphers and verifies) a PoR's SMS user data."""
    if user_data[:3] != bytes((2, RPI_IEI, 0)):
        raise ValueError("no response packet identifier")
    body = user_data[3:]
    if len(body) < 3:
        raise ValueError("response packet shorter than its RPL and RHL")
    rpl, rhl = struct.unpack("!HB", body[:3])
    if rpl != len(body) - 2:
        raise ValueError("RPL does not match")
    if rhl < 10 or len(body) < 3 + rhl:
        raise ValueError(f"response header length {rhl} does not fit the packet")
    tar = body[3:6]
    rest = body[6:]
    protected = spi is not None and keys is not None and rhl > 10
    if protected and spi is not None and spi.por_cipher and keys is not None:
        rest = _aes_cbc(keys.kic, rest, decrypt=True)
    counter = int.from_bytes(rest[:5], "big")
    pcntr, status = rest[5], Status(rest[6])
    checksum = rest[7 : 7 + rhl - 10]
    data = rest[7 + rhl - 10 :]
    if protected and keys is not None and checksum:
        expected = aes_cmac(keys.kid, user_data[:3] + body[:6] + rest[:7] + data)
        if expected != checksum:
            raise ValueError("PoR checksum does not verify")
    return ResponsePacket(tar, counter, status, checksum, data[: len(data) - pcntr] if pcntr else data)


# --- the card side -------------------------------------------------------------------------------------------


@dataclass
class TarConfig:
    """An application reachable by secured packets, with its minimum security level."""

    execute: Callable[[list[bytes]], list[bytes]]
    need_cc: bool = False
    need_cipher: bool = False
    need_counter: bool = False


@dataclass
class Counters:
    """The replay counters, one per key set; persisted in the card state (a restarted card still refuses
    replays)."""

    values: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {str(k): v for k, v in self.values.items()}

    def load_dict(self, state: dict[str, Any]) -> None:
        self.values = {int(k): int(v) for k, v in state.items()}


@dataclass(frozen=True)
class Outcome:
    status: Status
    por: bytes  # SMS user data of the response packet; empty when the SPI asks for none
    reason: str = ""


class SecuredPacketReceiver:
    """The receiving entity of TS 102 225: checks command packets, runs them, builds the PoR."""

    def __init__(self, keysets: list[Keyset], tars: dict[bytes, TarConfig], counters: Counters) -> None:
        self.keysets = {k.kvn: k for k in keysets}
        self.tars = tars
        self.counters = counters

    def _keys(self, indicator: int, what: str) -> Keyset:
        if indicator & 0x0F != ALGO_AES:
            raise PacketError(Status.UNIDENTIFIED_SECURITY_ERROR, f"{what} algorithm 0x{indicator:02X}")
        keys = self.keysets.get(indicator >> 4)
        if keys is None:
            raise PacketError(Status.UNIDENTIFIED_SECURITY_ERROR, f"no key set {indicator >> 4} for {what}")
        return keys

    def receive(self, user_data: bytes) -> Outcome:
        """One SMS user data (UDH included) in, the outcome and its PoR out. Never raises for bad input."""
        udhl = user_data[0] if user_data else 0
        header = user_data[1 : 1 + udhl]
        if len(user_data) < 1 + udhl or bytes((CPI_IEI, 0)) not in _elements(header):
            return Outcome(Status.UNIDENTIFIED_SECURITY_ERROR, b"", "no command packet identifier")
        packet = user_data[1 + udhl :]
        if len(packet) < 16:
            return Outcome(Status.UNIDENTIFIED_SECURITY_ERROR, b"", "command packet shorter than its header")
        cpl, chl = struct.unpack("!HB", packet[:3])
        spi = Spi.decode(packet[3:5])
        kic, kid, tar = packet[5], packet[6], packet[7:10]
        counter = 0
        try:
            if cpl != len(packet) - 2 or chl < 13:
                raise PacketError(Status.UNIDENTIFIED_SECURITY_ERROR, "CPL or CHL does not match the packet")
            target = self.tars.get(tar)
            if target is None:
                raise PacketError(Status.TAR_UNKNOWN, f"TAR {tar.hex().upper()}")
            if (
                (target.need_cc and spi.check is not Check.CC)
                or (target.need_cipher and not spi.cipher)
                or (target.need_counter and spi.counter < CounterMode.HIGHER)
            ):
                raise PacketError(
                    Status.INSUFFICIENT_SECURITY_LEVEL, "below the TAR's minimum security level"
                )
            tail = packet[10:]
            if spi.cipher:
                keys = self._keys(kic, "KIc")
                if not tail or len(tail) % 16:
                    raise PacketError(Status.CIPHERING_ERROR, "ciphered part is not whole AES blocks")
                tail = _aes_cbc(keys.kic, tail, decrypt=True)
            sig = chl - 13
            counter, pcntr = int.from_bytes(tail[:5], "big"), tail[5]
            checksum, data = tail[6 : 6 + sig], tail[6 + sig :]
            if spi.check is Check.CC:
                keys = self._keys(kid, "KID")
                if sig not in (4, 8) or aes_cmac(keys.kid, packet[:10] + tail[:6] + data, sig) != checksum:
                    raise PacketError(Status.RC_CC_DS_FAILED, "cryptographic checksum does not verify")
            elif spi.check is not Check.NONE:
                raise PacketError(Status.UNIDENTIFIED_SECURITY_ERROR, f"{spi.check.name} is not supported")
            if pcntr > len(data):
                raise PacketError(Status.UNIDENTIFIED_SECURITY_ERROR, "PCNTR larger than the data")
            kvn = (kid if spi.check is Check.CC else kic) >> 4
            self._check_counter(spi.counter, kvn, counter)
            apdus = decode_command_script(data[: len(data) - pcntr])
        except PacketError as exc:
            return Outcome(exc.status, self._por(spi, tar, counter, exc.status, b"", None), exc.reason)
        except RemoteApduError as exc:
            status = Status.UNIDENTIFIED_SECURITY_ERROR
            return Outcome(status, self._por(spi, tar, counter, status, b"", None), f"script: {exc}")
        if spi.counter is not CounterMode.NONE:
            self.counters.values[kvn] = counter
        responses = target.execute(apdus)
        expanded = data[:1] in (b"\xaa", b"\xae")
        answer = encode_response_script(responses, expanded=expanded, definite=True)
        por_keys = self.keysets.get(kvn)
        return Outcome(Status.POR_OK, self._por(spi, tar, counter, Status.POR_OK, answer, por_keys))

    def _check_counter(self, mode: CounterMode, kvn: int, counter: int) -> None:
        if mode < CounterMode.HIGHER:
            return
        stored = self.counters.values.get(kvn, 0)
        if stored >= MAX_COUNTER:
            raise PacketError(Status.CNTR_BLOCKED, "counter reached its maximum")
        if counter <= stored:
            raise PacketError(Status.CNTR_LOW, f"counter {counter} not above {stored} (replay?)")
        if mode is CounterMode.ONE_HIGHER and counter != stored + 1:
            raise PacketError(Status.CNTR_HIGH, f"counter {counter} is not {stored} + 1")

    @staticmethod
    def _por(spi: Spi, tar: bytes, counter: int, status: Status, data: bytes, keys: Keyset | None) -> bytes:
        if spi.por is PorMode.NONE or (spi.por is PorMode.ON_ERROR and status is Status.POR_OK):
            return b""
        udh = bytes((2, RPI_IEI, 0))
        sig = CC_LENGTH if keys is not None and spi.por_check is Check.CC else 0
        cipher = keys is not None and spi.por_cipher
        pcntr = _pad_count(7 + sig + len(data)) if cipher else 0
        padded = data + bytes(pcntr)
        rhl = 10 + sig
        head = struct.pack("!HB", 1 + rhl + len(padded), rhl) + tar
        counters = counter.to_bytes(5, "big") + bytes((pcntr, status))
        checksum = aes_cmac(keys.kid, udh + head + counters + padded) if keys is not None and sig else b""
        tail = counters + checksum + padded
        if cipher and keys is not None:
            tail = _aes_cbc(keys.kic, tail, decrypt=False)
        return udh + head + tail


def _elements(header: bytes) -> list[bytes]:
    """The user data header's information elements as IEI + length bytes (their values left out)."""
    out, i = [], 0
    while i + 1 < len(header):
        out.append(header[i : i + 2])
        i += 2 + header[i + 1]
    return out


def user_data_of(tpdu: bytes) -> bytes:
    """The TP-UD of an SMS-DELIVER (TS 23.040 9.2.2.1); raises ValueError when it is not one."""
    if len(tpdu) < 2 or tpdu[0] & 0x03 != 0x00:
        raise ValueError("not an SMS-DELIVER")
    at = 2 + 1 + (tpdu[1] + 1) // 2  # first octet, TP-OA length, TON/NPI, digits
    at += 2 + 7  # PID, DCS, SCTS
    if len(tpdu) <= at:
        raise ValueError("SMS-DELIVER cut short")
    length = tpdu[at]
    user_data = tpdu[at + 1 : at + 1 + length]
    if len(user_data) != length:
        raise ValueError("TP-UDL larger than the user data")
    if not tpdu[0] & 0x40:
        raise ValueError("no user data header (TP-UDHI is 0)")
    return user_data


# --- the trigger -----------------------------------------------------------------------------------------------


@dataclass
class TriggerLog:
    outcomes: list[Outcome] = field(default_factory=list)
    sessions_started: int = 0


class SmsTriggerToolkit:
    """The card's Toolkit: SMS-PP DOWNLOAD envelopes are secured packets for the receiver; everything else goes to
    the BIP engine. A good PUSH starts the engine's session, with the PUSH's OPEN CHANNEL objects applied."""

    def __init__(
        self,
        engine: BipEngine,
        keysets: list[Keyset],
        counters: Counters,
        *,
        other_apdu: Callable[[bytes], bytes] | None = None,
        require_cc: bool = False,
        require_cipher: bool = False,
        require_counter: bool = False,
    ) -> None:
        self.engine = engine
        self.other_apdu = other_apdu
        self.log = TriggerLog()
        # the ISD's minimum security level (TS 102 226 8.2.1.3.2.1 "MSL"): unsecured pushes are allowed by default
        isd = TarConfig(self._isd, require_cc, require_cipher, require_counter)
        self.receiver = SecuredPacketReceiver(keysets, {ISD_TAR: isd}, counters)

    # Toolkit
    def terminal_profile(self, profile: bytes) -> None:
        self.engine.terminal_profile(profile)

    def pending_length(self) -> int:
        return self.engine.pending_length()

    def fetch(self) -> bytes:
        return self.engine.fetch()

    def terminal_response(self, data: bytes) -> None:
        self.engine.terminal_response(data)

    def envelope(self, data: bytes) -> bytes:
        if not data or data[0] != EnvelopeTag.SMS_PP_DOWNLOAD:
            return self.engine.envelope(data)
        try:
            envelope = decode_envelope(data)
            tpdu = envelope.get(Tag.SMS_TPDU)
            if tpdu is None:
                raise ValueError("no SMS TPDU object")
            user_data = user_data_of(tpdu.value)
        except (TlvError, ValueError) as exc:
            # TS 31.111 7.1.1.2: data the UICC cannot accept gets a status word, not a PoR
            raise ToolkitError(0x6F00, f"SMS-PP DOWNLOAD: {exc}") from exc
        outcome = self.receiver.receive(user_data)
        self.log.outcomes.append(outcome)
        return outcome.por

    def trigger(self) -> None:
        """The manual trigger (a menu selection or a test)."""
        self.engine.trigger()

    # the issuer security domain's remote APDUs
    def _isd(self, apdus: list[bytes]) -> list[bytes]:
        out = []
        for apdu in apdus:
            if apdu[:4] == PUSH:
                out.append(self._push(apdu[5 : 5 + apdu[4]] if len(apdu) > 4 else b""))
            elif self.other_apdu is not None:
                out.append(self.other_apdu(apdu))
            else:
                out.append(b"\x6d\x00")
        return out

    def _push(self, data: bytes) -> bytes:
        if self.engine.busy:
            return b"\x69\x85"  # a session is already running
        try:
            objects = decode_ctlvs(data)
        except TlvError:
            return b"\x6a\x80"
        config = self.engine.config
        for item in objects:
            value = item.value
            if item.tag == Tag.TRANSPORT_LEVEL and len(value) == 3:
                config = replace(config, protocol=value[0], port=int.from_bytes(value[1:], "big"))
            elif item.tag == Tag.OTHER_ADDRESS and len(value) == 5 and value[0] == 0x21:
                config = replace(config, host=".".join(str(b) for b in value[1:]))
            elif item.tag == Tag.BUFFER_SIZE and len(value) == 2:
                config = replace(config, buffer_size=int.from_bytes(value, "big"))
            elif item.tag == Tag.BEARER_DESCRIPTION and value:
                config = replace(config, bearer_type=value[0], bearer_parameters=value[1:])
        self.engine.config = config
        self.engine.trigger()
        self.log.sessions_started += 1
        return b"\x90\x00"


__all__ = [
    "Counters",
    "Keyset",
    "SmsTriggerToolkit",
    "Spi",
    "Status",
    "command_packet",
    "encode_command_script",
    "push_script",
    "sms_deliver",
    "sms_pp_download",
    "sms_user_data",
]
