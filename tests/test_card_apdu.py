"""The card's APDU processor (ETSI TS 102 221 sections 10-11, ISO/IEC 7816-4) on the default profile's file system:
SELECT by FID/path/AID, STATUS, READ/UPDATE BINARY and RECORD, GET RESPONSE, the CAT commands, MANAGE CHANNEL, and
the status words the specification gives for each case."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import pytest

from bipsim.errors import CliError
from bipsim.uicc.bip_engine import BipConfig, BipEngine
from bipsim.uicc.card import ATR, SimCard
from bipsim.uicc.cat import CommandType, decode_proactive, get_channel_status
from bipsim.uicc.fs import USIM_AID
from bipsim.uicc.profile import load_profile
from bipsim.uicc.test_clients import RequestResponseClient
from bipsim.uicc.tlv import decode_ber, decode_ber_list
from bipsim.uicc.toolkit import ToolkitError


class ScriptedToolkit:
    """A CAT application whose proactive commands are queued by the test; it records what the terminal sent."""

    def __init__(self) -> None:
        self.queue: deque[bytes] = deque()
        self.profiles: list[bytes] = []
        self.responses: list[bytes] = []
        self.envelopes: list[bytes] = []
        self.envelope_answer = b""
        self.busy = False

    def terminal_profile(self, profile: bytes) -> None:
        self.profiles.append(profile)

    def pending_length(self) -> int:
        return len(self.queue[0]) if self.queue else 0

    def fetch(self) -> bytes:
        return self.queue.popleft()

    def terminal_response(self, data: bytes) -> None:
        if not data:
            raise ToolkitError(0x6700, "empty terminal response")
        self.responses.append(data)

    def envelope(self, data: bytes) -> bytes:
        if self.busy:
            raise ToolkitError(0x9300, "toolkit busy")
        self.envelopes.append(data)
        return self.envelope_answer


def apdu(card: SimCard, text: str) -> tuple[bytes, str]:
    """Sends one APDU given as hex; returns (response data, SW as 4 hex digits)."""
    out = card.process(bytes.fromhex(text.replace(" ", "")))
    return out[:-2], out[-2:].hex().upper()


def select(card: SimCard, head: str, data: str) -> bytes:
    """SELECT returning the FCP through 61 xx / GET RESPONSE (T=0)."""
    length = len(data.replace(" ", "")) // 2
    body, sw = apdu(card, f"{head} {length:02X} {data}")
    assert body == b"" and sw.startswith("61"), sw
    fcp, sw = apdu(card, f"00C00000{sw[2:]}")
    assert sw == "9000"
    return fcp


def fcp_fields(fcp: bytes) -> dict[int, bytes]:
    outer = decode_ber(fcp, expect={0x62})
    return {item.tag: item.value for item in decode_ber_list(outer.value)}


@pytest.fixture
def card() -> SimCard:
    return SimCard(load_profile())


@pytest.fixture
def cat() -> tuple[SimCard, ScriptedToolkit]:
    toolkit = ScriptedToolkit()
    return SimCard(load_profile(), toolkit=toolkit), toolkit


# --- SELECT, STATUS, GET RESPONSE -------------------------------------------------------------------------------


def test_atr_and_reset(card: SimCard) -> None:
    assert card.atr() == ATR and card.reset() == ATR and ATR[0] == 0x3B


def test_select_mf_by_fid_returns_its_fcp(card: SimCard) -> None:
    fields = fcp_fields(select(card, "00A40004", "3F00"))
    assert fields[0x83] == b"\x3f\x00"
    assert fields[0x82][0] == 0x78  # a DF
    assert 0x80 not in fields  # a DF has no file size


def test_select_without_response_data_and_no_data_selects_mf(card: SimCard) -> None:
    assert apdu(card, "00A4000C023F00") == (b"", "9000")
    assert apdu(card, "00A4000C00")[1] == "9000"  # no data: the MF
    fields = fcp_fields(select(card, "00A40004", "2FE2"))
    assert fields[0x83] == b"\x2f\xe2" and fields[0x80] == b"\x00\x0a"  # EF_ICCID, 10 bytes


def test_select_by_aid_full_and_partial(card: SimCard) -> None:
    fields = fcp_fields(select(card, "00A40404", USIM_AID.hex()))
    assert fields[0x84] == USIM_AID
    assert apdu(card, "00A4040C07" + USIM_AID[:7].hex()) == (b"", "9000")  # right-truncated AID
    assert apdu(card, "00A4040C05A000000999")[1] == "6A82"


def test_select_by_path_from_mf_and_from_current_df(card: SimCard) -> None:
    fields = fcp_fields(select(card, "00A40804", "7FF0 6F07"))
    assert fields[0x83] == b"\x6f\x07"
    assert apdu(card, "00A4080C043F007FF0") == (b"", "9000")  # the leading 3F00 is tolerated
    # now in ADF_USIM: a path from the current DF
    fields = fcp_fields(select(card, "00A40904", "6FAD"))
    assert fields[0x83] == b"\x6f\xad"
    assert apdu(card, "00A4090C027F10")[1] == "6A82"  # DF_TELECOM is not below ADF_USIM
    assert apdu(card, "00A4080C027F10") == (b"", "9000")  # but it is below the MF


def test_select_errors(card: SimCard) -> None:
    assert apdu(card, "00A40004021234")[1] == "6A82"  # file not found
    assert apdu(card, "00A40504023F00")[1] == "6A86"  # P1 not supported
    assert apdu(card, "00A40204023F00")[1] == "6A82"  # P1 02 (an EF under the current DF): the MF is not one
    assert apdu(card, "00A4000403 3F00")[1] == "6700"  # Lc says 3, 2 bytes follow


def test_get_response_le_handling(card: SimCard) -> None:
    _, sw = apdu(card, "00A40004023F00")
    size = int(sw[2:], 16)
    # Le too long: 6C with the right length, and the data is still there for the repeated command
    assert apdu(card, f"00C00000{size + 5:02X}") == (b"", f"6C{size:02X}")
    first, sw = apdu(card, "00C0000004")  # Le too short: part of it and 61 with the rest
    assert len(first) == 4 and sw == f"61{size - 4:02X}"
    rest, sw = apdu(card, f"00C00000{size - 4:02X}")
    assert sw == "9000" and (first + rest)[0] == 0x62 and len(first + rest) == size
    assert apdu(card, "00C0000010")[1] == "6985"  # nothing left to get


def test_status_current_df_aid_and_no_data(card: SimCard) -> None:
    select(card, "00A40404", USIM_AID.hex())
    body, sw = apdu(card, "80F2000000")
    assert sw == "9000" and fcp_fields(body)[0x84] == USIM_AID
    assert apdu(card, "80F2000100") == (b"\x84\x10" + USIM_AID, "9000")
    assert apdu(card, "80F2000C00") == (b"", "9000")
    assert apdu(card, "80F2000500")[1] == "6A86"


# --- file contents of the default profile -----------------------------------------------------------------------


def test_ef_iccid_holds_the_profile_iccid(card: SimCard) -> None:
    select(card, "00A40004", "2FE2")
    # 8988211000000000001 nibble-swapped, padded with F (TS 102 221 section 13.2)
    assert apdu(card, "00B000000A") == (bytes.fromhex("988812010000000000F1"), "9000")


def test_usim_files_of_the_default_profile(card: SimCard) -> None:
    select(card, "00A40404", USIM_AID.hex())
    select(card, "00A40004", "6F07")
    # IMSI 001010123456789: length 8, then 0 with odd parity 9, then the digits nibble-swapped (TS 31.102 4.2.2)
    assert apdu(card, "00B0000009") == (bytes.fromhex("080910101032547698"), "9000")
    select(card, "00A40004", "6FAD")
    assert apdu(card, "00B0000004") == (bytes.fromhex("00000002"), "9000")  # MNC length 2
    select(card, "00A40004", "6F38")
    ust, sw = apdu(card, "00B000000A")
    assert sw == "9000"

    def offered(service: int) -> bool:
        return bool(ust[(service - 1) // 8] & (1 << ((service - 1) % 8)))

    # SMS-PP data download (the OTA push), SMS/SMSP storage, service 33, BIP-related 72 and 80
    assert all(offered(n) for n in (10, 12, 28, 33, 72, 80))
    assert not offered(1) and not offered(27)


def test_read_binary_by_sfi_and_offsets(card: SimCard) -> None:
    select(card, "00A40404", USIM_AID.hex())
    assert apdu(card, "00B0870002") == (b"\x08\x09", "9000")  # SFI 7 = EF_IMSI
    assert apdu(card, "00B0000702") == (b"\x76\x98", "9000")
    assert apdu(card, "00B0000804") == (b"\x98", "6282")  # end of file reached before Le bytes
    assert apdu(card, "00B0000901")[1] == "6B00"  # offset 9 of a 9-byte file: outside it
    assert apdu(card, "00B0001001")[1] == "6B00"  # offset beyond the file
    assert apdu(card, "00B0990001")[1] == "6A82"  # no file with SFI 25


def test_update_binary_and_read_back(card: SimCard) -> None:
    select(card, "00A40404", USIM_AID.hex())
    select(card, "00A40004", "6F46")  # EF_SPN
    assert apdu(card, "00D6000103 414243") == (b"", "9000")
    assert apdu(card, "00B0000004") == (b"\x00ABC", "9000")
    assert apdu(card, "00D6001102 0000")[1] == "6B00"  # would write past the end


def test_sms_records_read_update(card: SimCard) -> None:
    select(card, "00A40404", USIM_AID.hex())
    fields = fcp_fields(select(card, "00A40004", "6F3C"))
    assert fields[0x82][:2] == b"\x42\x21" and fields[0x82][2:4] == (176).to_bytes(2, "big")
    record, sw = apdu(card, "00B20104B0")
    assert sw == "9000" and record == b"\x00" + b"\xff" * 175  # free record
    new = b"\x01" + bytes(range(175))
    assert apdu(card, "00DC0104B0" + new.hex()) == (b"", "9000")
    assert apdu(card, "00B20104B0") == (new, "9000")
    assert apdu(card, "00B2010410")[1] == "6CB0"  # wrong Le: the record length
    assert apdu(card, "00B20B04B0")[1] == "6A83"  # record 11 does not exist
    assert apdu(card, "00DC010402 0102")[1] == "6700"  # not a whole record
    assert apdu(card, "00B0000001")[1] == "6981"  # READ BINARY on a record file
    fields = fcp_fields(select(card, "00A40004", "6F42"))
    assert fields[0x82][2:5] == b"\x00\x28\x01"  # EF_SMSP: one record of 40 bytes
    assert apdu(card, "00B2010428") == (b"\xff" * 40, "9000")


def test_no_current_ef(card: SimCard) -> None:
    assert apdu(card, "00B0000001")[1] == "6986"
    assert apdu(card, "00B2010400")[1] == "6986"


# --- classes, instructions, logical channels --------------------------------------------------------------------


def test_unknown_instruction_and_class(card: SimCard) -> None:
    assert apdu(card, "00EE000000")[1] == "6D00"
    assert apdu(card, "80EE000000")[1] == "6D00"
    assert apdu(card, "F0A4000000")[1] == "6E00"
    assert apdu(card, "00A4")[1] == "6700"  # shorter than a header


def test_gsm_class_a0(card: SimCard) -> None:
    assert apdu(card, "A0A40000023F00")[1].startswith("61")
    assert apdu(card, "A0F2000000")[1] == "9000"


def test_class_byte_codes_channels_0_to_19() -> None:
    """TS 102 221 section 10.1.1, table 10.3: 0X/8X carry channels 0..3 in b2b1, 4X/CX channels 4..19 in b4..b1."""
    from bipsim.uicc.card import logical_channel, on_channel

    assert [logical_channel(c) for c in (0x00, 0x03, 0x81, 0x40, 0x4F, 0x60, 0xC5)] == [0, 3, 1, 4, 19, 4, 9]
    assert [on_channel(0x00, n) for n in (0, 3, 4, 19)] == [0x00, 0x03, 0x40, 0x4F]
    assert on_channel(0x80, 5) == 0xC1  # proprietary class stays proprietary
    assert on_channel(0x0C, 2) == 0x0E and on_channel(0x4F, 1) == 0x01  # SM bits kept, channel recoded
    assert all(logical_channel(on_channel(cla, n)) == n for cla in (0x00, 0x80, 0x40) for n in range(20))
    with pytest.raises(ValueError):
        on_channel(0x00, 20)


def test_channels_beyond_3_are_opened_and_used(card: SimCard) -> None:
    for expected in range(1, 6):
        assert apdu(card, "0070000001") == (bytes((expected,)), "9000")
    select(card, "41A40004", "2FE2")  # class 41: channel 5
    assert apdu(card, "41B0000001") == (b"\x98", "9000")
    assert apdu(card, "40B0000001")[1] == "6986"  # channel 4 has no current EF
    assert apdu(card, "0070800500") == (b"", "9000")
    assert apdu(card, "41B0000001")[1] == "6881"


def test_manage_channel_open_use_close(card: SimCard) -> None:
    assert apdu(card, "0070000001") == (b"\x01", "9000")
    select(card, "01A40004", "2FE2")  # channel 1 has its own current file
    assert apdu(card, "01B0000001") == (b"\x98", "9000")
    assert apdu(card, "00B0000001")[1] == "6986"  # channel 0 still has none
    assert apdu(card, "0070800100") == (b"", "9000")
    assert apdu(card, "01B0000001")[1] == "6881"  # channel closed
    assert apdu(card, "0070800200")[1] == "6A86"


# --- CAT: TERMINAL PROFILE, 91 xx, FETCH, TERMINAL RESPONSE, ENVELOPE ---------------------------------------------


def test_terminal_profile_fetch_terminal_response(cat: tuple[SimCard, ScriptedToolkit]) -> None:
    card, toolkit = cat
    assert apdu(card, "8010000003 FFFFFF") == (b"", "9000")
    assert toolkit.profiles == [b"\xff\xff\xff"]
    command = get_channel_status().encode()
    toolkit.queue.append(command)
    assert apdu(card, "80F2000C00") == (b"", f"91{len(command):02X}")  # any 90 00 becomes 91 xx
    assert apdu(card, "8012000005") == (b"", f"6C{len(command):02X}")  # FETCH with the wrong Le
    assert apdu(card, f"80120000{len(command):02X}") == (command, "9000")
    assert decode_proactive(command).type == CommandType.GET_CHANNEL_STATUS
    response = "810301440082028281830100B8028100"
    assert apdu(card, f"80140000{len(response) // 2:02X}{response}") == (b"", "9000")
    assert toolkit.responses == [bytes.fromhex(response)]
    assert apdu(card, "8012000010")[1] == "6985"  # nothing to fetch
    assert apdu(card, "8014000000")[1] == "6700"  # the toolkit's own status word


def test_envelope_answers_and_busy(cat: tuple[SimCard, ScriptedToolkit]) -> None:
    card, toolkit = cat
    envelope = "D60E99010982028281B8028100B701FF"
    assert apdu(card, f"80C20000{len(envelope) // 2:02X}{envelope}") == (b"", "9000")
    assert toolkit.envelopes == [bytes.fromhex(envelope)]
    toolkit.envelope_answer = b"\x02\x70\x00"  # an SMS-PP download answer (PoR)
    assert apdu(card, f"80C20000{len(envelope) // 2:02X}{envelope}") == (b"", "6103")
    assert apdu(card, "00C0000003") == (b"\x02\x70\x00", "9000")
    toolkit.busy = True
    assert apdu(card, f"80C20000{len(envelope) // 2:02X}{envelope}")[1] == "9300"


def test_cat_commands_in_gsm_class(cat: tuple[SimCard, ScriptedToolkit]) -> None:
    card, toolkit = cat
    assert apdu(card, "A010000002FFFF") == (b"", "9000")
    toolkit.queue.append(get_channel_status().encode())
    assert apdu(card, "A01200000B")[1] == "9000"


def test_internal_apdus_have_no_toolkit_side_effects(cat: tuple[SimCard, ScriptedToolkit]) -> None:
    card, toolkit = cat
    toolkit.queue.append(get_channel_status().encode())
    out = card.internal_apdu(bytes.fromhex("00A4000C023F00"))
    assert out == b"\x90\x00"  # no 91 xx inside the card
    assert card.internal_apdu(bytes.fromhex("801200000B")) == b"\x69\x85"


def test_card_without_toolkit(card: SimCard) -> None:
    assert apdu(card, "8010000001FF") == (b"", "9000")
    assert apdu(card, "8012000010")[1] == "6985"
    assert apdu(card, "80C2000003D60100")[1] == "6D00"


def test_bip_engine_starts_with_set_up_event_list() -> None:
    engine = BipEngine(BipConfig(port=4443), RequestResponseClient(b"GET /", 10))
    card = SimCard(load_profile(), toolkit=engine)
    body, sw = apdu(card, "801000000A FFFFFFFFFFFFFFFFFFFF")
    assert body == b"" and sw.startswith("91")
    command, sw = apdu(card, f"80120000{sw[2:]}")
    assert sw == "9000" and decode_proactive(command).type == CommandType.SET_UP_EVENT_LIST


def test_profile_file_sets_card_contents(tmp_path: Path) -> None:
    """A JSON (or TOML) profile overrides the built-in default key by key; a typo is an error, not ignored."""
    path = tmp_path / "card.json"
    path.write_text('{"iccid": "8944000000000000123", "imsi": "262011234567890", "mnc_length": 3}')
    profile = load_profile(path)
    assert profile.apn == load_profile().apn  # untouched keys keep the default
    card = SimCard(profile)
    select(card, "00A40004", "2FE2")
    assert apdu(card, "00B000000A") == (bytes.fromhex("984400000000000021F3"), "9000")
    select(card, "00A40404", USIM_AID.hex())
    select(card, "00A40004", "6F07")
    # 262011234567890: first digit 2 with odd parity (0x29), then 62 01 12 34 56 78 90 nibble-swapped
    assert apdu(card, "00B0000009") == (bytes.fromhex("082926102143658709"), "9000")
    select(card, "00A40004", "6FAD")
    assert apdu(card, "00B0000004") == (bytes.fromhex("00000003"), "9000")
    (tmp_path / "bad.toml").write_text('imsy = "1"\n')
    with pytest.raises(CliError, match="unknown profile keys: imsy"):
        load_profile(tmp_path / "bad.toml")


class _BrokenToolkit:
    """A CAT application with a bug in every method."""

    def terminal_profile(self, profile: bytes) -> None:
        raise RuntimeError("bug in terminal_profile")

    def pending_length(self) -> int:
        raise RuntimeError("bug in pending_length")

    def fetch(self) -> bytes:
        raise RuntimeError("bug in fetch")

    def terminal_response(self, data: bytes) -> None:
        raise RuntimeError("bug in terminal_response")

    def envelope(self, data: bytes) -> bytes:
        raise RuntimeError("bug in envelope")


def test_a_fault_inside_the_card_is_6f00_and_the_card_goes_on() -> None:
    """TS 102 221 section 10.2.1.5: 6F 00, technical problem; the card keeps answering (errors are data)."""
    card = SimCard(load_profile(), toolkit=_BrokenToolkit())  # type: ignore[arg-type]
    for apdu in ("80100000021F00", "8012000010", "801400000C010303012100020282810301", "80C2000003D60100"):
        assert card.process(bytes.fromhex(apdu)) == b"\x6f\x00", apdu
    assert len(card.faults) >= 4 and "bug in terminal_profile" in card.faults[0]
    assert card.process(bytes.fromhex("80F2000C00")) == b"\x90\x00"  # STATUS still works (no toolkit pending)
