"""ES10 from the AP (GSMA SGP.22 section 5.7, ES10a/b/c): the LPA's requests to the eUICC's ISD-R over the CP's
3GPP TS 27.007 logical-channel commands, as open-source LPAs with an AT backend send them (docs/protocols.md,
"The LPA on the AP").

`AT+CCHO="<ISD-R AID in lower case>"` opens a channel (`+CCHO: <n>`); each ES10 request, the DER of its SGP.22
type, goes in STORE DATA commands (GlobalPlatform Card Specification 11.11; SGP.22 5.7.2: at most 255 bytes a
block, P1 0x11 for more blocks and 0x91 for the last, P2 the block number from 0) sent as
`AT+CGLA=<n>,<hex length>,"81E2..."`: class 81 whatever channel the modem chose, since the CP recodes the channel
bits (27.007 8.43). A 61 xx answer is fetched with GET RESPONSE (ISO/IEC 7816-4 5.3.4, T=0).

A bound profile package is loaded in the segments of SGP.22 2.5.5, each one STORE DATA sequence; the eUICC answers
each with 90 00 and no data until the last segment or an error, then with the ProfileInstallationResult.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import trio

from bipsim.ap.slot_lock import slot_lock
from bipsim.link.at_chat import AtResponse, AtTimeout
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer

ISD_R_AID = bytes.fromhex("A0000005591010FFFFFFFF8900000100")
BLOCK = 255  # STORE DATA bytes a block (SGP.22 5.7.2)
STORE_DATA_CLA = 0x81  # the class lpac sends on any channel; the CP puts the channel's bits in
P1_MORE = 0x11
P1_LAST = 0x91
MAX_GET_RESPONSE = 256  # GET RESPONSE rounds for one answer at most (a card that says 61 xx for ever)
COMMAND_TIMEOUT = 20.0
CME_SIM_BUSY = 14
SIM_BUSY_RETRY = 0.2  # seconds between +CCHO attempts while the card starts (as the OMAPI RIL waits)
SIM_BUSY_ATTEMPTS = 50


class AtPort(Protocol):
    """What ES10 needs of DLC 1: the AP's AT chat (bipsim.link.at_chat.AtChat) or a test's fake."""

    async def command(
        self, line: str, *, timeout: float | None = None, step: str | None = None
    ) -> AtResponse: ...


class Es10Error(Exception):
    """ES10 could not be carried: the modem refused a command, the card answered an error status word, or the
    answer was not the function's. `sw` is the card's status word when there is one."""

    def __init__(self, message: str, sw: int | None = None) -> None:
        super().__init__(message)
        self.sw = sw


# --- TLV helpers (ISO/IEC 8825-1 DER, as SGP.22's ASN.1 is encoded) ----------------------------------------------


def der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: bytes, value: bytes) -> bytes:
    return tag + der_length(len(value)) + value


@dataclass(frozen=True)
class Tlv:
    tag: bytes
    header: bytes  # tag and length
    value: bytes

    @property
    def encoded(self) -> bytes:
        return self.header + self.value


def read_tlv(data: bytes, offset: int = 0) -> tuple[Tlv, int]:
    """The TLV at `offset` and the offset after it; Es10Error when it is cut short or its length is not DER."""
    start = offset
    if offset >= len(data):
        raise Es10Error("a TLV is missing")
    offset += 1
    if data[start] & 0x1F == 0x1F:  # more tag bytes follow while bit 8 is set
        while True:
            if offset >= len(data):
                raise Es10Error("a TLV's tag is cut short")
            offset += 1
            if not data[offset - 1] & 0x80:
                break
    tag = data[start:offset]
    if offset >= len(data):
        raise Es10Error("a TLV has no length")
    first = data[offset]
    offset += 1
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 3 or offset + count > len(data):
            raise Es10Error("a TLV's length is not DER")
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    if offset + length > len(data):
        raise Es10Error(f"a TLV with tag {tag.hex().upper()} is cut short")
    return Tlv(tag, data[start:offset], data[offset : offset + length]), offset + length


def children(value: bytes) -> list[Tlv]:
    out = []
    offset = 0
    while offset < len(value):
        item, offset = read_tlv(value, offset)
        out.append(item)
    return out


def store_data_apdus(data: bytes, *, cla: int = STORE_DATA_CLA) -> list[bytes]:
    """The STORE DATA commands that carry `data` (SGP.22 5.7.2): blocks of at most 255 bytes, P1 0x11 for every
    block but the last (0x91), P2 the block number from 0."""
    if not data:
        raise ValueError("STORE DATA carries at least one byte")
    blocks = [data[i : i + BLOCK] for i in range(0, len(data), BLOCK)]
    if len(blocks) > 256:
        raise ValueError("more than 256 STORE DATA blocks: P2 cannot number them")
    return [
        bytes((cla, 0xE2, P1_LAST if n == len(blocks) - 1 else P1_MORE, n, len(block))) + block
        for n, block in enumerate(blocks)
    ]


def bpp_segments(bpp: bytes) -> list[bytes]:
    """The segments of a BoundProfilePackage (BF36) the LPA sends one by one (SGP.22 2.5.5): BF36's tag and length
    with InitialiseSecureChannelRequest (BF23); firstSequenceOf87 (A0) whole; sequenceOf88's (A1) tag and length,
    then each 88; secondSequenceOf87 (A2) whole when present; sequenceOf86's (A3) tag and length, then each 86."""
    outer, end = read_tlv(bpp)
    if outer.tag != b"\xbf\x36" or end != len(bpp):
        raise Es10Error("the bound profile package is not one BF36 TLV")
    parts = children(outer.value)
    tags = [part.tag for part in parts]
    if tags[:2] != [b"\xbf\x23", b"\xa0"] or b"\xa1" not in tags or tags[-1] != b"\xa3":
        raise Es10Error(f"the bound profile package's parts are {[t.hex().upper() for t in tags]}")
    segments = [outer.header + parts[0].encoded]
    for part in parts[1:]:
        if part.tag in (b"\xa1", b"\xa3"):
            segments.append(part.header)
            segments.extend(item.encoded for item in children(part.value))
        else:
            segments.append(part.encoded)
    return segments


def _payload(response: AtResponse, prefix: str) -> str:
    for line in response.lines:
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    # 27.007 gives +CCHO's <sessionid> without a prefix; some modems add one, some leave it out of +CGLA too
    return response.lines[0].strip() if response.lines else ""


class Es10Client:
    """ES10a/b/c over one AT port. `open` once, then the functions, named as SGP.22 names them; each request and
    answer is traced as `lpa.euicc` (fields function, direction; hex: the DER)."""

    def __init__(self, port: AtPort, *, tracer: Tracer = NULL_TRACER) -> None:
        self.port = port
        self.tracer = tracer
        self.session: int | None = None

    async def _at(self, line: str, step: str | None = None) -> AtResponse:
        try:
            return await self.port.command(line, timeout=COMMAND_TIMEOUT, step=step)
        except AtTimeout as exc:
            raise Es10Error(f"no answer from the modem to {line.split('=')[0]}: {exc}") from None

    async def open(self) -> int:
        """AT+CCHO with the ISD-R's AID in lower case, as lpac sends it; the modem's session id. A card still
        starting (+CME ERROR: 14, SIM busy: 27.007 9.2.1, a transient state) is asked again."""
        for _ in range(SIM_BUSY_ATTEMPTS):
            # +CCHO goes to the slot the line has chosen: held under the line's slot lock, so no other user of
            # DLC 1 has it on another slot meanwhile (ap/slot_lock.py); the ISD-R is slot 1's card
            async with slot_lock(self.port):
                answer = await self._at(f'AT+CCHO="{ISD_R_AID.hex()}"')
            if answer.cme_error != CME_SIM_BUSY:
                break
            await trio.sleep(SIM_BUSY_RETRY)
        if not answer.ok:
            raise Es10Error(f"the modem could not open a channel to the ISD-R: {answer.final}")
        text = _payload(answer, "+CCHO:")
        if not text.isdigit():
            raise Es10Error(f"the modem's +CCHO answer holds no session id: {text!r}")
        self.session = int(text)
        return self.session

    async def close(self) -> None:
        if self.session is None:
            return
        session, self.session = self.session, None
        answer = await self._at(f"AT+CCHC={session}")
        if not answer.ok:
            raise Es10Error(f"the modem could not close session {session}: {answer.final}")

    async def transmit(self, apdu: bytes, step: str | None = None) -> bytes:
        """One C-APDU by AT+CGLA; the R-APDU with its status word."""
        if self.session is None:
            await self.open()
        line = f'AT+CGLA={self.session},{2 * len(apdu)},"{apdu.hex().upper()}"'
        answer = await self._at(line, step)
        if not answer.ok:
            raise Es10Error(f"the modem could not send the APDU: {answer.final}")
        text = _payload(answer, "+CGLA:")
        _, _, quoted = text.partition(",")
        try:
            response = bytes.fromhex(quoted.strip().strip('"'))
        except ValueError:
            raise Es10Error(f"the modem's +CGLA answer is not hex: {text!r}") from None
        if len(response) < 2:
            raise Es10Error("the modem's +CGLA answer has no status word")
        return response

    async def store_data(self, data: bytes, step: str | None = None) -> bytes:
        """`data` in STORE DATA blocks; the answer of the last block with the 61 xx rest fetched (status word
        90 00 stripped). Es10Error with the status word when a block is refused."""
        answer = b""
        for apdu in store_data_apdus(data):
            answer = await self.transmit(apdu, step)
            sw = int.from_bytes(answer[-2:], "big")
            if apdu[2] == P1_MORE and sw != 0x9000:
                raise Es10Error(f"STORE DATA block {apdu[3]} answered {sw:04X}", sw)
        out = answer[:-2]
        for _ in range(MAX_GET_RESPONSE):
            if answer[-2] != 0x61:
                break
            answer = await self.transmit(bytes((0x00, 0xC0, 0x00, 0x00, answer[-1])), step)
            out += answer[:-2]
        else:
            raise Es10Error("the card answered 61 xx without end")
        sw = int.from_bytes(answer[-2:], "big")
        if sw != 0x9000:
            raise Es10Error(f"the ISD-R answered {sw:04X}", sw)
        return out

    def _trace(self, function: str, direction: str, data: bytes, step: str | None = None) -> None:
        src, dst = (Actor.AP, Actor.UICC) if direction == "request" else (Actor.UICC, Actor.AP)
        self.tracer.emit(
            src,
            dst,
            Layer.APP,
            f"ES10 {function} {direction} ({len(data)} bytes)",
            data=data,
            step=step,
            kind=Kind.LPA_ES10,
            fields={"function": function, "direction": direction},
        )

    async def call(self, function: str, request: bytes, step: str | None = None) -> bytes:
        """One ES10 function: its request's DER in, the answer's DER out, both traced."""
        self._trace(function, "request", request, step)
        answer = await self.store_data(request)
        self._trace(function, "response", answer)
        return answer

    # --- the functions (SGP.22 5.7) ----------------------------------------------------------------------------

    async def get_eid(self, step: str | None = None) -> str:
        """GetEID (5.7.20): GetEuiccDataRequest with tagList 5A; the EID's 32 digits."""
        answer = await self.call("GetEID", bytes.fromhex("BF3E035C015A"), step)
        outer, _ = read_tlv(answer)
        for item in children(outer.value) if outer.tag == b"\xbf\x3e" else []:
            if item.tag == b"\x5a" and len(item.value) == 16:
                return item.value.hex().upper()
        raise Es10Error(f"GetEID answered {answer.hex().upper()}")

    async def get_euicc_info1(self) -> bytes:
        """GetEUICCInfo (5.7.8), EUICCInfo1: its DER, as ES9+ initiateAuthentication carries it."""
        answer = await self.call("GetEUICCInfo1", bytes.fromhex("BF2000"))
        _expect(answer, b"\xbf\x20", "GetEUICCInfo1")
        return answer

    async def get_euicc_challenge(self) -> bytes:
        """GetEUICCChallenge (5.7.7): the 16-byte euiccChallenge."""
        answer = await self.call("GetEUICCChallenge", bytes.fromhex("BF2E00"))
        outer = _expect(answer, b"\xbf\x2e", "GetEUICCChallenge")
        for item in children(outer.value):
            if item.tag == b"\x80" and len(item.value) == 16:
                return item.value
        raise Es10Error(f"GetEUICCChallenge answered {answer.hex().upper()}")

    async def authenticate_server(
        self,
        *,
        server_signed1: bytes,
        server_signature1: bytes,
        euicc_ci_pkid: bytes,
        server_certificate: bytes,
        ctx_params1: bytes,
    ) -> bytes:
        """AuthenticateServer (5.7.13): the request assembled from the DER the SM-DP+ sent (so the signed bytes
        stay the SM-DP+'s own); the AuthenticateServerResponse's DER, ok or error."""
        request = tlv(
            b"\xbf\x38",
            server_signed1 + server_signature1 + euicc_ci_pkid + server_certificate + ctx_params1,
        )
        answer = await self.call("AuthenticateServer", request)
        _expect(answer, b"\xbf\x38", "AuthenticateServer")
        return answer

    async def prepare_download(
        self, *, smdp_signed2: bytes, smdp_signature2: bytes, smdp_certificate: bytes, hash_cc: bytes = b""
    ) -> bytes:
        """PrepareDownload (5.7.5): the PrepareDownloadResponse's DER, ok or error."""
        cc = tlv(b"\x04", hash_cc) if hash_cc else b""
        request = tlv(b"\xbf\x21", smdp_signed2 + smdp_signature2 + cc + smdp_certificate)
        answer = await self.call("PrepareDownload", request)
        _expect(answer, b"\xbf\x21", "PrepareDownload")
        return answer

    async def load_bound_profile_package(
        self, bpp: bytes, *, step: str | None = None, segment_step: str | None = None
    ) -> bytes:
        """LoadBoundProfilePackage (5.7.6): each segment of SGP.22 2.5.5 in its own STORE DATA sequence, until
        the eUICC answers a ProfileInstallationResult (BF37: after the last segment, or at an error); its DER."""
        segments = bpp_segments(bpp)
        for index, segment in enumerate(segments):
            self._trace("LoadBoundProfilePackage", "request", segment, step if index == 0 else segment_step)
            answer = await self.store_data(segment)
            if answer:
                self._trace("LoadBoundProfilePackage", "response", answer)
                _expect(answer, b"\xbf\x37", "LoadBoundProfilePackage")
                return answer
        raise Es10Error("the eUICC answered no ProfileInstallationResult after the last segment")

    async def get_profiles_info(self) -> list[dict[str, Any]]:
        """GetProfilesInfo (5.7.15) for all profiles: one dict per profile, iccid (digits, F padding removed),
        state (0 disabled, 1 enabled), name, provider, class where the eUICC gave them."""
        answer = await self.call("GetProfilesInfo", bytes.fromhex("BF2D00"))
        outer = _expect(answer, b"\xbf\x2d", "GetProfilesInfo")
        items = children(outer.value)
        if not items or items[0].tag != b"\xa0":
            raise Es10Error(f"GetProfilesInfo answered an error: {answer.hex().upper()}")
        profiles = []
        for info in children(items[0].value):
            facts: dict[str, Any] = {}
            for item in children(info.value):
                if item.tag == b"\x5a":
                    facts["iccid"] = iccid_digits(item.value)
                elif item.tag == b"\x9f\x70":
                    facts["state"] = int.from_bytes(item.value, "big")
                elif item.tag == b"\x92":
                    facts["name"] = item.value.decode("utf-8", "replace")
                elif item.tag == b"\x91":
                    facts["provider"] = item.value.decode("utf-8", "replace")
                elif item.tag == b"\x95":
                    facts["class"] = int.from_bytes(item.value, "big")
            profiles.append(facts)
        return profiles

    async def _result(self, function: str, tag: bytes, request: bytes) -> int:
        answer = await self.call(function, request)
        outer = _expect(answer, tag, function)
        for item in children(outer.value):
            if item.tag == b"\x80":
                return int.from_bytes(item.value, "big")
        raise Es10Error(f"{function} answered no result: {answer.hex().upper()}")

    async def enable_profile(self, iccid: str, *, refresh: bool = True) -> int:
        """EnableProfile (5.7.16) by ICCID: the result (0 ok, 1 iccidOrAidNotFound, 2 profileNotInDisabledState,
        3 disallowedByPolicy, 5 catBusy, 127 undefinedError)."""
        request = tlv(
            b"\xbf\x31",
            tlv(b"\xa0", tlv(b"\x5a", iccid_bytes(iccid))) + tlv(b"\x81", b"\xff" if refresh else b"\x00"),
        )
        return await self._result("EnableProfile", b"\xbf\x31", request)

    async def disable_profile(self, iccid: str, *, refresh: bool = True) -> int:
        """DisableProfile (5.7.17) by ICCID: the result."""
        request = tlv(
            b"\xbf\x32",
            tlv(b"\xa0", tlv(b"\x5a", iccid_bytes(iccid))) + tlv(b"\x81", b"\xff" if refresh else b"\x00"),
        )
        return await self._result("DisableProfile", b"\xbf\x32", request)

    async def delete_profile(self, iccid: str) -> int:
        """DeleteProfile (5.7.18) by ICCID: the result."""
        return await self._result(
            "DeleteProfile", b"\xbf\x33", tlv(b"\xbf\x33", tlv(b"\x5a", iccid_bytes(iccid)))
        )

    async def list_notification(self) -> list[tuple[int, bytes]]:
        """ListNotification (5.7.9): (seqNumber, the NotificationMetadata's DER) of each pending notification."""
        answer = await self.call("ListNotification", bytes.fromhex("BF2800"))
        outer = _expect(answer, b"\xbf\x28", "ListNotification")
        items = children(outer.value)
        if not items or items[0].tag != b"\xa0":
            raise Es10Error(f"ListNotification answered an error: {answer.hex().upper()}")
        out = []
        for metadata in children(items[0].value):
            for item in children(metadata.value):
                if item.tag == b"\x80":
                    out.append((int.from_bytes(item.value, "big"), metadata.encoded))
        return out

    async def remove_notification_from_list(self, seq_number: int) -> int:
        """RemoveNotificationFromList (5.7.11, NotificationSentRequest BF30): the result (0 ok, 1 nothingToDelete)."""
        value = seq_number.to_bytes(max(1, (seq_number.bit_length() + 8) // 8), "big")
        return await self._result(
            "RemoveNotificationFromList", b"\xbf\x30", tlv(b"\xbf\x30", tlv(b"\x80", value))
        )

    async def cancel_session(self, transaction_id: bytes, reason: int) -> bytes:
        """CancelSession (5.7.14): the CancelSessionResponse's DER, for ES9+ cancelSession."""
        request = tlv(b"\xbf\x41", tlv(b"\x80", transaction_id) + tlv(b"\x81", bytes((reason,))))
        answer = await self.call("CancelSession", request)
        _expect(answer, b"\xbf\x41", "CancelSession")
        return answer


# --- the few SGP.22 values the LPA builds or reads itself (DER by hand: the AP never compiles the ASN.1 module;
# tests/test_lpa.py checks each against asn1tools and uicc/euicc/rsp.asn) -----------------------------------------


def ctx_params1(matching_id: str, tac: bytes) -> bytes:
    """CtxParams1 (SGP.22 5.7.13) with ctxParamsForCommonAuthentication: the matchingId and a DeviceInfo of `tac`
    and no device capabilities (automatic tags: A0 { 80 matchingId, A1 { 80 tac, A1 {} } })."""
    device_info = tlv(b"\xa1", tlv(b"\x80", tac) + tlv(b"\xa1", b""))
    return tlv(b"\xa0", tlv(b"\x80", matching_id.encode("utf-8")) + device_info)


@dataclass(frozen=True)
class Metadata:
    """What the LPA takes from StoreMetadataRequest (BF25, authenticateClient's profileMetadata)."""

    iccid: str
    ppr_ids: tuple[bytes, int] | None  # profilePolicyRules as asn1tools gives a BIT STRING: (bits, count)


def parse_metadata(der: bytes) -> Metadata:
    """The ICCID (5A) and pprIds ([25], tag 99) of a StoreMetadataRequest; Es10Error when it is not one."""
    outer = _expect(der, b"\xbf\x25", "profileMetadata")
    iccid = ""
    ppr: tuple[bytes, int] | None = None
    for item in children(outer.value):
        if item.tag == b"\x5a" and len(item.value) == 10:
            iccid = iccid_digits(item.value)
        elif item.tag == b"\x99":
            if not item.value or item.value[0] > 7:
                raise Es10Error("profileMetadata: pprIds is not a BIT STRING")
            bits = item.value[1:]
            ppr = (bits, 8 * len(bits) - item.value[0])
    if not iccid:
        raise Es10Error("profileMetadata carries no ICCID")
    return Metadata(iccid, ppr)


@dataclass(frozen=True)
class InstallResult:
    """What the LPA reads of a ProfileInstallationResult (BF37, SGP.22 5.7.6): success or the error's
    bppCommandId and errorReason, and the seqNumber of its notification."""

    ok: bool
    seq_number: int
    bpp_command_id: int | None = None
    error_reason: int | None = None


def parse_installation_result(der: bytes) -> InstallResult:
    """BF37 { BF27 { 80 transactionId, BF2F notificationMetadata { 80 seqNumber ... }, 06 smdpOid,
    A2 finalResult { A0 success | A1 { 80 bppCommandId, 81 errorReason } } }, 5F37 }; Es10Error otherwise."""
    outer = _expect(der, b"\xbf\x37", "LoadBoundProfilePackage")
    data = next((item for item in children(outer.value) if item.tag == b"\xbf\x27"), None)
    if data is None:
        raise Es10Error("ProfileInstallationResult without its data (BF27)")
    seq = -1
    final: Tlv | None = None
    for item in children(data.value):
        if item.tag == b"\xbf\x2f":
            for field_ in children(item.value):
                if field_.tag == b"\x80":
                    seq = int.from_bytes(field_.value, "big", signed=True)
        elif item.tag == b"\xa2":
            final = item
    results = children(final.value) if final is not None else []
    if len(results) != 1 or results[0].tag not in (b"\xa0", b"\xa1"):
        raise Es10Error("ProfileInstallationResult without a finalResult")
    if results[0].tag == b"\xa0":
        return InstallResult(True, seq)
    codes = {item.tag: int.from_bytes(item.value, "big") for item in children(results[0].value)}
    return InstallResult(False, seq, codes.get(b"\x80"), codes.get(b"\x81"))


def _expect(answer: bytes, tag: bytes, function: str) -> Tlv:
    outer, end = read_tlv(answer)
    if outer.tag != tag or end != len(answer):
        raise Es10Error(f"{function} answered {answer[:8].hex().upper()}..., not one {tag.hex().upper()} TLV")
    return outer


def iccid_bytes(iccid: str) -> bytes:
    """The ICCID's digits in the nibble-swapped BCD of EF_ICCID (TS 102 221 13.2), F padded to 10 bytes."""
    digits = iccid.upper().ljust(20, "F")
    return bytes.fromhex("".join(digits[i + 1] + digits[i] for i in range(0, 20, 2)))


def iccid_digits(value: bytes) -> str:
    """The ICCID of its swapped-BCD bytes, without the F padding."""
    text = value.hex().upper()
    return "".join(text[i + 1] + text[i] for i in range(0, len(text), 2)).rstrip("F")
