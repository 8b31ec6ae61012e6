"""The fuzz properties of the eSIM side (issue 23's bad input): the eUICC's ISD-R on STORE DATA (uicc/applets/isd_r.py,
GSMA SGP.22 5.7, ES10 in chained STORE DATA), and what the LPA reads from its peers: the eUICC's ES10 answers
(ap/lpa/es10_client.py), the cloud's backup records (ap/lpa/records.py) and the SM-DP+'s ES9+ JSON and activation
codes (ota/es9_json.py). Kept apart from targets.py so that the other targets do not load the SGP.22 ASN.1 module.

Each takes what a peer could send and checks the answer the specifications give for bad input (a status word, an
SGP.22 error inside the answer, the typed error of the parser), never another exception, and that the card stays
usable and its state loadable.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from bipsim.ap.lpa import records
from bipsim.ap.lpa.es10_client import Es10Error, parse_installation_result, parse_metadata, read_tlv
from bipsim.cp.card_driver import get_response_class
from bipsim.ota import es9_json
from bipsim.uicc.applets.isd_r import ISD_R_AID, IsdR
from bipsim.uicc.card import SimCard, on_channel
from bipsim.uicc.euicc.asn1 import ES10_REQUEST_TAGS
from bipsim.uicc.euicc.upp import builtin_upps, upp_fields
from bipsim.uicc.profile import CardProfile, load_profile

STORE_DATA = 0xE2
# the status words the ISD-R and the card's channel handling may answer (TS 102 221 10.2.1, SGP.22 5.7.1)
ALLOWED_SW1 = {0x61, 0x62, 0x63, 0x67, 0x68, 0x69, 0x6A, 0x6B, 0x6C, 0x6D, 0x6E, 0x6F, 0x90, 0x91}


@cache
def euicc_profile() -> CardProfile:
    """The built-in `euicc` card profile with its test PKI in a folder of this process (made once: the ECDSA keys
    take a moment), so that fuzzing never writes the user's own PKI folder; the folder goes at exit."""
    folder = Path(tempfile.mkdtemp(prefix="bipsim-fuzz-pki-"))
    atexit.register(shutil.rmtree, folder, True)
    return load_profile("euicc").with_overrides(euicc_pki=str(folder))


def install_builtin_profiles(card: SimCard) -> None:
    """The built-in operator profiles installed on the card's eUICC (disabled; the second with PPR1), so that the
    fuzzed Enable, Disable, Delete and SetNickname requests have profiles to act on: a download cannot be fuzzed
    into place (its signatures)."""
    (applet,) = card.applets.applets
    assert isinstance(applet, IsdR)
    for number, (name, upp) in enumerate(sorted(builtin_upps().items())):
        ppr = ("ppr1",) if number else ()
        applet.profile_store.install(iccid=upp_fields(upp)["iccid"], upp=upp, name=name, ppr_ids=ppr)


def builtin_iccids() -> list[str]:
    """The ICCIDs of the built-in operator profiles (install_builtin_profiles)."""
    return sorted(upp_fields(upp)["iccid"] for upp in builtin_upps().values())


def open_isd_r(card: SimCard) -> int:
    """MANAGE CHANNEL open and SELECT of the ISD-R by AID, as an LPA over +CCHO does; the channel number."""
    answer = card.process(b"\x00\x70\x00\x00\x01")
    assert answer[-2:] == b"\x90\x00", answer.hex()
    channel = answer[0]
    selected = card.process(
        bytes((on_channel(0x00, channel), 0xA4, 0x04, 0x00, len(ISD_R_AID))) + ISD_R_AID + b"\x00"
    )
    assert selected[-2] in (0x90, 0x61), selected.hex()
    return channel


def _answer(card: SimCard, cla: int, apdu: bytes) -> bytes:
    """One APDU and, after 61 xx, its GET RESPONSE (the LPA's T=0 handling): the whole answer's data and SW."""
    answer = card.process(apdu)
    assert isinstance(answer, bytes) and len(answer) >= 2 and answer[-2] in ALLOWED_SW1, answer.hex()
    if answer[-2] == 0x61:
        more = card.process(bytes((get_response_class(cla), 0xC0, 0, 0, answer[-1])))
        assert len(more) >= 2 and more[-2] in ALLOWED_SW1, more.hex()
        return more
    return answer


def isd_r(requests: Sequence[tuple[bytes, int, int]]) -> None:
    """The ISD-R on ES10 requests in STORE DATA, each (request, block size, chaining damage): the request is cut
    into blocks (P1 11 for more, 91 for the last, P2 the block number, SGP.22 5.7.2); a damage number other than
    0 changes one block's P1 or P2. Every APDU gets a status word (never an exception, never the card's 6F 00
    fault), the card keeps no fault, and afterwards the ISD-R still answers GetEuiccInfo1 (BF20) and the card's
    state loads into a fresh card as it was."""
    with tempfile.TemporaryDirectory() as folder:
        state = Path(folder) / "card.json"
        card = SimCard(euicc_profile(), state_path=state)
        install_builtin_profiles(card)
        _store_data(card, requests)
        card.save_state()
        card.sync_state()
        assert SimCard(euicc_profile(), state_path=state).snapshot() == card.snapshot()


def _store_data(card: SimCard, requests: Sequence[tuple[bytes, int, int]]) -> None:
    channel = open_isd_r(card)
    cla = on_channel(0x80, channel)  # STORE DATA: the proprietary class on the ISD-R's channel
    for request, size, damage in requests:
        blocks = [request[at : at + size] for at in range(0, len(request), size)] or [b""]
        for number, block in enumerate(blocks):
            p1 = 0x91 if number == len(blocks) - 1 else 0x11
            p2 = number & 0xFF
            if damage and number == damage % len(blocks):
                p1, p2 = (p1 ^ 0x80, p2) if damage & 1 else (p1, (p2 + 1 + damage) & 0xFF)
            apdu = bytes((cla, STORE_DATA, p1, p2))
            apdu += bytes((len(block),)) + block if block else b""
            _answer(card, cla, apdu)
    assert not card.faults, card.faults
    info1 = _answer(card, cla, bytes((cla, STORE_DATA, 0x91, 0x00, 0x03, 0xBF, 0x20, 0x00, 0x00)))
    assert info1[-2:] == b"\x90\x00" and info1[:2] == b"\xbf\x20", info1.hex()


def es10_request_tags() -> list[int]:
    """The outer tags of the ES10 functions the ISD-R serves (SGP.22 5.7), for building requests around them."""
    return sorted(ES10_REQUEST_TAGS)


def es10_answers(der: bytes) -> None:
    """What the LPA reads from the eUICC's answers: a TLV, a StoreMetadataRequest (profileMetadata) and a
    ProfileInstallationResult, each parsed or refused with Es10Error."""
    for parse in (read_tlv, parse_metadata, parse_installation_result):
        try:
            parse(der)
        except Es10Error:
            pass


def cloud_records(texts: Sequence[str], eid: str, limit: int) -> None:
    """A cloud's records as the LPA fetches them back: each one decoded or RecordError, and the whole set joined
    into a package or refused with RecordError (never another exception, never more bytes than profile_len)."""
    decoded = []
    for text in texts:
        try:
            decoded.append(records.decode_record(text))
        except records.RecordError as exc:
            assert exc.args, "a RecordError says what is wrong"
    try:
        package = records.join_records(list(texts), eid=eid, limit=limit)
    except records.RecordError:
        return
    assert decoded and len(package) == decoded[0].profile_len


def es9_bodies(body: bytes) -> None:
    """An SM-DP+'s ES9+ answer and a request to it, as JSON bytes: decoded, or Es9Error (the LPA's and the server's
    typed refusal); the fields read from a decoded request are refused the same way."""
    try:
        es9_json.decode_response(body)
    except es9_json.Es9Error:
        pass
    try:
        fields = es9_json.decode_request(body)
        es9_json.text_field(fields, "transactionId")
        es9_json.b64_field(fields, "euiccSigned1")
        es9_json.hex_field(fields, "transactionId")
    except es9_json.Es9Error:
        pass


def activation_code(text: str) -> None:
    """An activation code as a user types or scans it (SGP.22 4.1): parsed, or ActivationCodeError; a parsed one
    reads back the same from its own text."""
    try:
        code = es9_json.parse_activation_code(text)
    except es9_json.ActivationCodeError:
        return
    assert code.smdp_address and es9_json.parse_activation_code(str(code)) == code
