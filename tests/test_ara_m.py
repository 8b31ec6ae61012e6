"""The card's ARA-M (GlobalPlatform Secure Element Access Control, uicc/applets/ara_m.py) APDU by APDU: SELECT, GET
DATA all rules (FF40) with its GET DATA next (FF60) chaining as the Android/SEEK AccessRuleApplet client drives it
(Le = F0, the following Le = what is left), the specific rule (FF50), the refresh tag (DF20) across boots with a
state file, every error status word, and the built-in profiles `omapi`, `omapi-empty`, `omapi-malformed`,
`omapi-no-rules`. The FF40 answers are read by a BER-TLV decoder written here, not by the card's encoder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from bipsim.cli import main
from bipsim.errors import CliError
from bipsim.uicc.applets.ara_m import TEST_CERTIFICATES, certificate_hash
from bipsim.uicc.card import SimCard
from bipsim.uicc.profile import dump_profile, load_profile, profile_names

ARA_M = "A00000015141434C00"
ECHO = "A000000476416E64726F696443545331"
ECHO_LONG = "A000000476416E64726F696443545332"
GRANTED = "80FBFFB49AFF0C7D942F1F5E1D4761780911E205"
DENIED = "B120191D0D3A67BF18B3B72954C9C3BF26F2F72B"


def apdu(card: SimCard, text: str) -> tuple[bytes, str]:
    out = card.process(bytes.fromhex(text.replace(" ", "")))
    return out[:-2], out[-2:].hex().upper()


def ber(data: bytes) -> list[tuple[int, bytes]]:
    """An independent BER-TLV reader (ISO/IEC 8825-1): a tag of one byte, or two when its low five bits are all
    set; a length in short form, 81 xx or 82 xxxx; ValueError when a length runs past the data."""
    out: list[tuple[int, bytes]] = []
    at = 0
    try:
        while at < len(data):
            tag = data[at]
            at += 1
            if tag & 0x1F == 0x1F:
                tag = (tag << 8) | data[at]
                at += 1
            size = data[at]
            at += 1
            if size == 0x81:
                size, at = data[at], at + 1
            elif size == 0x82:
                size, at = int.from_bytes(data[at : at + 2], "big"), at + 2
            elif size > 0x80:
                raise ValueError(f"length form {size:02X}")
            if at + size > len(data):
                raise ValueError(f"tag {tag:X}: length {size} runs past the data")
            out.append((tag, data[at : at + size]))
            at += size
    except IndexError:
        raise ValueError("cut short") from None
    return out


def decode_rules(answer: bytes) -> list[dict[str, str]]:
    """The rules of a Response-ALL-REF-AR-DO, as {aid, hash, apdu, nfc, package} hex/text strings."""
    [(tag, value)] = ber(answer)
    assert tag == 0xFF40
    rules = []
    for ref_ar_tag, ref_ar in ber(value):
        assert ref_ar_tag == 0xE2
        parts = dict(ber(ref_ar))
        assert set(parts) == {0xE1, 0xE3}
        ref, ar = dict(ber(parts[0xE1])), dict(ber(parts[0xE3]))
        rule = {"aid": ref[0x4F].hex().upper() if 0x4F in ref else "default", "hash": ref[0xC1].hex().upper()}
        if 0xCA in ref:
            rule["package"] = ref[0xCA].decode("ascii")
        rule["apdu"] = {b"\x01": "always", b"\x00": "never"}.get(ar[0xD0], ar[0xD0].hex().upper())
        if 0xD1 in ar:
            rule["nfc"] = "always" if ar[0xD1] == b"\x01" else "never"
        rules.append(rule)
    return rules


def open_ara_m(card: SimCard) -> int:
    """MANAGE CHANNEL open, then SELECT of the ARA-M on that channel (as the terminal's AT+CCHO does)."""
    data, sw = apdu(card, "0070000001")
    assert sw == "9000"
    channel = data[0]
    assert apdu(card, f"{channel:02X}A4040009{ARA_M}") == (b"", "9000")
    return channel


def write_profile(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def many_rules(count: int) -> str:
    rules = []
    for n in range(count):
        digest = hashlib.sha256(f"app {n}".encode()).hexdigest().upper()
        aid = f"A000000476416E64726F6964435453{0x40 + n:02X}"
        rules.append(
            f'{{aid = "{aid}", hash = "{digest}", apdu = "0006000000FF0000A0060000F0FF0000", nfc = "always",'
            f' package = "com.example.app{n}"}}'
        )
    return "ara_m = true\nara_m_rules = [\n" + ",\n".join(rules) + "\n]\n"


# --- SELECT and GET DATA all ------------------------------------------------------------------------------------


def test_omapi_profile_rules_byte_exact() -> None:
    card = SimCard(load_profile("omapi"))
    channel = open_ara_m(card)
    assert channel == 1
    rule = "E232 E128 4F10 {aid} C114 {hash} E306 D00101 D10100"
    expected = "FF4068" + rule.format(aid=ECHO, hash=GRANTED) + rule.format(aid=ECHO_LONG, hash=GRANTED)
    data, sw = apdu(card, "81CAFF4000")
    assert (data.hex().upper(), sw) == (expected.replace(" ", ""), "9000")
    assert decode_rules(data) == [
        {"aid": ECHO, "hash": GRANTED, "apdu": "always", "nfc": "never"},
        {"aid": ECHO_LONG, "hash": GRANTED, "apdu": "always", "nfc": "never"},
    ]


def test_profile_hashes_are_the_sha1_of_the_named_test_certificates() -> None:
    assert certificate_hash(TEST_CERTIFICATES["granted"]).hex().upper() == GRANTED
    assert certificate_hash(TEST_CERTIFICATES["denied"]).hex().upper() == DENIED
    hashes = {rule["hash"] for rule in load_profile("omapi").ara_m_rules}
    assert hashes == {GRANTED}  # the denied application is in no rule


def test_get_data_without_le_comes_through_get_response() -> None:
    card = SimCard(load_profile("omapi"))
    open_ara_m(card)
    assert apdu(card, "81CAFF40") == (b"", "616B")  # T=0 case 2 without P3: the data waits
    data, sw = apdu(card, "81C000006B")
    assert sw == "9000" and len(decode_rules(data)) == 2


def test_empty_rule_set_is_ff40_00() -> None:
    card = SimCard(load_profile("omapi-empty"))
    open_ara_m(card)
    assert apdu(card, "81CAFF4000") == (bytes.fromhex("FF4000"), "9000")
    assert decode_rules(bytes.fromhex("FF4000")) == []


def test_malformed_profile_serves_a_tlv_the_decoder_refuses() -> None:
    card = SimCard(load_profile("omapi-malformed"))
    open_ara_m(card)
    data, sw = apdu(card, "81CAFF4000")
    assert sw == "9000" and data[:2] == b"\xff\x40"
    [(tag, value)] = ber(data)  # the outer length holds
    assert tag == 0xFF40 and len(value) == data[2]
    with pytest.raises(ValueError, match="runs past"):
        decode_rules(data)


def test_no_ara_m_is_6a82_and_the_channel_stays_usable() -> None:
    card = SimCard(load_profile("omapi-no-rules"))
    assert apdu(card, "0070000001") == (b"\x01", "9000")
    assert apdu(card, f"01A4040009{ARA_M}") == (b"", "6A82")
    assert apdu(card, "81CAFF4000")[1] == "6D00"  # no applet: the card has no proprietary GET DATA
    assert apdu(card, "01A4040010" + ECHO) == (b"", "9000")


def test_default_profile_has_no_ara_m() -> None:
    card = SimCard(load_profile())
    assert apdu(card, f"00A4040009{ARA_M}") == (b"", "6A82")


# --- chaining: GET DATA next -------------------------------------------------------------------------------------


def test_long_rule_set_chains_with_get_data_next_as_the_android_client_reads_it(tmp_path: Path) -> None:
    card = SimCard(load_profile(write_profile(tmp_path, "long.toml", many_rules(8))))
    channel = open_ara_m(card)
    cla = f"{0x80 | channel:02X}"
    first, sw = apdu(card, f"{cla}CAFF40F0")  # the SEEK/Android AccessRuleApplet asks for F0 bytes at a time
    assert sw == "9000" and len(first) == 0xF0
    assert first[:3] == b"\xff\x40\x82"  # the first part carries the whole length
    total = 5 + int.from_bytes(first[3:5], "big")  # FF 40 82 xx xx
    assert total > 3 * 0xF0
    whole = bytearray(first)
    while len(whole) < total:
        le = min(total - len(whole), 0xF0)
        part, sw = apdu(card, f"{cla}CAFF60{le:02X}")
        assert sw == "9000" and len(part) == le
        whole += part
    assert apdu(card, f"{cla}CAFF60F0") == (b"", "6A88")  # nothing left
    rules = decode_rules(bytes(whole))
    assert len(rules) == 8
    assert rules[3] == {
        "aid": "A000000476416E64726F696443545343",
        "hash": hashlib.sha256(b"app 3").hexdigest().upper(),
        "package": "com.example.app3",
        "apdu": "0006000000FF0000A0060000F0FF0000",
        "nfc": "always",
    }


def test_le_00_gives_256_byte_parts_and_a_new_get_all_starts_over(tmp_path: Path) -> None:
    card = SimCard(load_profile(write_profile(tmp_path, "long.toml", many_rules(5))))
    open_ara_m(card)
    first, sw = apdu(card, "81CAFF4000")
    assert sw == "9000" and len(first) == 256
    total = 5 + int.from_bytes(first[3:5], "big")  # FF 40 82 xx xx
    second, _ = apdu(card, "81CAFF6000")
    assert len(second) == min(256, total - 256)
    again, _ = apdu(card, "81CAFF4000")
    assert again == first
    assert apdu(card, "81CADF2000")[1] == "9000"  # another GET DATA ends the chain
    assert apdu(card, "81CAFF6000") == (b"", "6A88")


def test_chains_are_per_channel(tmp_path: Path) -> None:
    card = SimCard(load_profile(write_profile(tmp_path, "long.toml", many_rules(5))))
    one, two = open_ara_m(card), open_ara_m(card)
    assert (one, two) == (1, 2)
    first, _ = apdu(card, "81CAFF4000")
    assert apdu(card, "82CAFF6000") == (b"", "6A88")  # channel 2 started nothing
    assert apdu(card, "81CAFF6000")[1] == "9000"
    assert first[:2] == b"\xff\x40"


# --- GET DATA specific -------------------------------------------------------------------------------------------


def test_specific_rule_by_ref_do() -> None:
    card = SimCard(load_profile("omapi"))
    open_ara_m(card)
    ref_do = f"E1284F10{ECHO}C114{GRANTED}"
    assert apdu(card, f"81CAFF502A{ref_do}00") == (bytes.fromhex("FF5008E306D00101D10100"), "9000")
    other = f"E1284F10{ECHO}C114{DENIED}"
    assert apdu(card, f"81CAFF502A{other}00") == (bytes.fromhex("FF5000"), "9000")  # no rule for it
    assert apdu(card, "81CAFF5000")[1] == "6A80"  # no REF-DO
    assert apdu(card, "81CAFF5003C10100")[1] == "6A80"  # not a REF-DO


# --- refresh tag ---------------------------------------------------------------------------------------------------


def refresh_tag(card: SimCard) -> bytes:
    channel = open_ara_m(card)
    data, sw = apdu(card, f"{0x80 | channel:02X}CADF2000")
    assert sw == "9000" and data[:3] == b"\xdf\x20\x08" and len(data) == 11
    return data[3:]


def test_refresh_tag_follows_the_rules_across_boots(tmp_path: Path) -> None:
    rules_a = write_profile(tmp_path, "a.toml", many_rules(2))
    rules_b = write_profile(tmp_path, "b.toml", many_rules(3))
    state = tmp_path / "card.json"
    first = SimCard(load_profile(rules_a), state_path=state)
    tag_a = refresh_tag(first)
    first.save_state()
    assert refresh_tag(SimCard(load_profile(rules_a), state_path=state)) == tag_a  # same rules, same tag
    tag_b = refresh_tag(SimCard(load_profile(rules_b), state_path=state))
    assert tag_b != tag_a
    # the new generation was saved when the ARA-M was selected: the next boot with those rules keeps its tag
    assert refresh_tag(SimCard(load_profile(rules_b), state_path=state)) == tag_b
    tag_a_again = refresh_tag(SimCard(load_profile(rules_a), state_path=state))
    assert tag_a_again not in (tag_a, tag_b)  # back to the old rules is a change too


def test_refresh_tag_without_state_is_a_function_of_the_rules() -> None:
    assert refresh_tag(SimCard(load_profile("omapi"))) == refresh_tag(SimCard(load_profile("omapi")))
    assert refresh_tag(SimCard(load_profile("omapi"))) != refresh_tag(SimCard(load_profile("omapi-empty")))


# --- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "sw"),
    [
        ("01CAFF4000", "6E00"),  # GET DATA of the ARA-M is proprietary class
        ("81CBFF4000", "6D00"),  # another instruction
        ("81E2900000", "6A80"),  # STORE DATA without a command DO
        ("81E2900102F200", "6A86"),  # STORE DATA is one block: P1 P2 = 90 00
        ("81E2900002F300", "6981"),  # an ARA-C command
        ("81E2900002F000", "6A80"),  # a Command-Store-REF-AR-DO without a rule
        ("81E2900006F004E202E100", "6A80"),  # a REF-AR-DO without its AR-DO
        ("81E2900004F102E100", "6A88"),  # deleting a rule that is not there
        ("81CAFF7000", "6A88"),  # a tag the ARA-M does not hold
        ("81CADF2100", "6A88"),
        ("81CA010100", "6A86"),  # not a tag at all
        ("81CAFF6000", "6A88"),  # next with nothing started
    ],
)
def test_error_status_words(command: str, sw: str) -> None:
    card = SimCard(load_profile("omapi"))
    open_ara_m(card)
    assert apdu(card, command) == (b"", sw)
    assert card.faults == []


# --- profiles --------------------------------------------------------------------------------------------------------


def test_built_in_profile_names() -> None:
    assert {"default", "omapi", "omapi-no-rules", "omapi-empty", "omapi-malformed"} <= set(profile_names())
    assert load_profile("default") == load_profile()
    omapi = load_profile("omapi")
    assert omapi.ara_m and omapi.logical_channels == 3 and omapi.applets == ("cts-echo",)
    assert omapi.imsi == load_profile().imsi  # other keys are the default's
    with pytest.raises(CliError, match="no such file nor built-in profile"):
        load_profile("omapi-nonesuch")


def test_a_file_wins_over_a_built_in_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_profile(tmp_path, "omapi", 'imsi = "001019999999999"\n')
    profile = load_profile("omapi")
    assert profile.imsi == "001019999999999" and not profile.ara_m


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('ara_m_rules = [{aid = "A0", hash = "0102"}]', "20 \\(SHA-1\\) or 32"),
        ('ara_m_rules = [{aid = "ZZ", hash = ""}]', "not hex"),
        ('ara_m_rules = [{aid = "A0", hash = "", apdu = "0102"}]', "8 bytes each"),
        ('ara_m_rules = [{aid = "A0", hash = "", nfc = "sometimes"}]', "always or never"),
        ('ara_m_rules = [{aid = "A0", hash = "", colour = "red"}]', "unknown rule keys: colour"),
        ('ara_m_rules = ["A0"]', "not a table"),
        ('applets = ["wallet-of-gold"]', "unknown applets"),
        ("logical_channels = 20", "use 0..19"),
        ('ara_m_rules = "none"', "must be an array"),
    ],
)
def test_bad_profile_keys_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CliError, match=message):
        load_profile(write_profile(tmp_path, "bad.toml", text + "\n"))


def test_dump_profile_round_trips_rules(tmp_path: Path) -> None:
    profile = load_profile(write_profile(tmp_path, "long.toml", many_rules(2) + "applets = ['cts-echo']\n"))
    again = load_profile(write_profile(tmp_path, "dumped.toml", dump_profile(profile)))
    assert again == profile
    assert refresh_tag(SimCard(again)) == refresh_tag(SimCard(profile))


# --- bipsim decode names them ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "key", "value"),
    [
        ("81CAFF40F0", "tag_name", "all access rules (Response-ALL-REF-AR-DO)"),
        ("81CAFF6000", "tag_name", "next part of the access rules"),
        ("81CADF2000", "tag_name", "refresh tag of the access rules"),
        ("01A4040009" + ARA_M, "aid_name", "ARA-M (GlobalPlatform SE Access Control)"),
        ("0070000001", "p1_name", "Open Channel"),
    ],
)
def test_decode_names_the_omapi_apdus(
    capsys: pytest.CaptureFixture[str], command: str, key: str, value: str
) -> None:
    try:
        main(["decode", "--json", command])
    except SystemExit as exc:
        assert not exc.code
    decoded = json.loads(capsys.readouterr().out)
    assert decoded["apdu"]["details"][key] == value


# --- STORE DATA: rules changed at run time ---------------------------------------------------------------------------

NEW_RULE = f"E22F E128 4F10 {ECHO} C114 {DENIED} E303 D00100".replace(" ", "")  # the denied app: never


def tag_on(card: SimCard) -> bytes:
    """The refresh tag read on channel 1, where the ARA-M is selected."""
    data, sw = apdu(card, "81CADF2000")
    assert sw == "9000" and data[:3] == b"\xdf\x20\x08"
    return data[3:]


def store(card: SimCard, do: str) -> tuple[bytes, str]:
    return apdu(card, f"81E29000{len(do) // 2:02X}{do}")


def test_store_delete_and_update_refresh_tag() -> None:
    card = SimCard(load_profile("omapi"))
    open_ara_m(card)
    tag = tag_on(card)
    assert store(card, f"F031{NEW_RULE}") == (b"", "9000")
    data, _ = apdu(card, "81CAFF4000")
    assert decode_rules(data)[-1] == {"aid": ECHO, "hash": DENIED, "apdu": "never"}
    assert data.endswith(bytes.fromhex(NEW_RULE))
    tag_stored = tag_on(card)
    assert tag_stored != tag
    assert store(card, f"F031{NEW_RULE}") == (b"", "6A89")  # that REF-DO is stored already
    assert tag_on(card) == tag_stored  # a refused command changes nothing
    assert store(card, f"F12A{NEW_RULE[4 : 4 + 84]}") == (b"", "9000")  # Command-Delete of its REF-DO
    assert len(decode_rules(apdu(card, "81CAFF4000")[0])) == 2
    tag_deleted = tag_on(card)
    assert tag_deleted not in (tag, tag_stored)  # the same rules as at first, but a new tag
    assert store(card, "F200") == (b"", "9000")  # Command-UpdateRefreshTag
    assert tag_on(card) not in (tag, tag_stored, tag_deleted)
    assert store(card, f"F1124F10{ECHO_LONG}") == (b"", "9000")  # every rule of one AID
    assert [rule["aid"] for rule in decode_rules(apdu(card, "81CAFF4000")[0])] == [ECHO]
    assert store(card, "F100") == (b"", "9000")  # every rule
    assert apdu(card, "81CAFF4000") == (bytes.fromhex("FF4000"), "9000")


def test_a_change_cuts_a_chain(tmp_path: Path) -> None:
    card = SimCard(load_profile(write_profile(tmp_path, "long.toml", many_rules(5))))
    open_ara_m(card)
    assert apdu(card, "81CAFF40F0")[1] == "9000"
    assert apdu(card, "82CAFF40F0")[1] == "6881"  # channel 2 is not open: nothing there
    assert store(card, "F200") == (b"", "9000")
    assert apdu(card, "81CAFF60F0") == (b"", "6A88")


def test_stored_rules_persist_until_the_profile_changes(tmp_path: Path) -> None:
    state = tmp_path / "card.json"
    card = SimCard(load_profile("omapi"), state_path=state)
    open_ara_m(card)
    assert store(card, f"F031{NEW_RULE}") == (b"", "9000")  # saved before the answer left the card
    tag = refresh_tag(card)
    again = SimCard(load_profile("omapi"), state_path=state)
    assert refresh_tag(again) == tag
    open_ara_m(again)
    assert len(decode_rules(apdu(again, "81CAFF4000")[0])) == 3
    other = SimCard(load_profile("omapi-empty"), state_path=state)  # a new personalisation wins
    assert refresh_tag(other) != tag
    assert apdu(other, "81CAFF4000") == (bytes.fromhex("FF4000"), "9000")


def decode_json(capsys: pytest.CaptureFixture[str], hexdata: str) -> dict[str, Any]:
    try:
        main(["decode", "--json", hexdata])
    except SystemExit as exc:
        assert not exc.code
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_decode_shows_the_rules_of_an_answer(capsys: pytest.CaptureFixture[str]) -> None:
    card = SimCard(load_profile("omapi"))
    open_ara_m(card)
    answer = card.process(bytes.fromhex("81CAFF4000"))
    rules = decode_json(capsys, answer.hex())["access_rules"]
    assert rules["tag"] == "FF40" and rules["length"] == 0x68
    assert rules["rules"][0] == {"aid": ECHO, "hash": GRANTED, "apdu": "always", "nfc": "never"}
    tag = card.process(bytes.fromhex("81CADF2000"))
    assert decode_json(capsys, tag.hex())["access_rules"] == {
        "tag": "DF20",
        "refresh_tag": tag[3:11].hex().upper(),
    }
    specific = decode_json(capsys, "FF5008E306D00101D101009000")["access_rules"]
    assert specific["rules"] == [{"apdu": "always", "nfc": "never"}]
    assert (
        decode_json(capsys, "FF40820300E2409000")["access_rules"]["partial"] is True
    )  # a chain's first part
    assert "access_rules" not in decode_json(capsys, "6F079000")


def test_decode_says_what_is_wrong_with_a_malformed_answer(capsys: pytest.CaptureFixture[str]) -> None:
    card = SimCard(load_profile("omapi-malformed"))
    open_ara_m(card)
    answer = card.process(bytes.fromhex("81CAFF4000"))
    rules = decode_json(capsys, answer.hex())["access_rules"]
    assert "rules" not in rules and "exceeds" in rules["error"]
    with pytest.raises(SystemExit) as exited:
        main(["decode", answer.hex()])
    assert exited.value.code == 0
    assert "access rules (ARA-M):" in capsys.readouterr().out


# --- the access rule files (ARF), read as the Android/SEEK ARF reader reads them --------------------------------------

PKCS15 = "A000000063504B43532D3135"


def read_ef(card: SimCard, channel: int, fid: bytes) -> bytes:
    """SELECT by file identifier (P2 04, FCP) in the current DF, then READ BINARY of the FCP's size in parts of 253."""
    _, sw = apdu(card, f"{channel:02X}A4000402{fid.hex()}")
    assert sw.startswith("61"), (fid.hex(), sw)
    fcp, sw = apdu(card, f"{channel:02X}C00000{sw[2:]}")
    assert sw == "9000"
    [(tag, body)] = ber(fcp)
    size = int.from_bytes(dict(ber(body))[0x80], "big")
    out = b""
    while len(out) < size:
        n = min(size - len(out), 253)
        part, sw = apdu(card, f"{channel:02X}B0{len(out) >> 8:02X}{len(out) & 0xFF:02X}{n:02X}")
        assert sw == "9000" and len(part) == n
        out += part
    return out


def path_of(sequence: bytes) -> bytes:
    """A PKCS#15 Path: SEQUENCE { OCTET STRING path }."""
    [(tag, inner)] = ber(sequence)
    assert tag == 0x30
    [(octets, value)] = ber(inner)
    assert octets == 0x04
    return value


def test_arf_read_as_the_android_reader_reads_it() -> None:
    card = SimCard(load_profile("omapi-arf"))
    assert apdu(card, f"00A4040009{ARA_M}") == (b"", "6A82")  # no ARA-M: the terminal falls back to the ARF
    channel = open_channel_for(card)
    sw = apdu(card, f"{channel:02X}A404000C{PKCS15}")[1]
    assert sw.startswith("61")
    assert apdu(card, f"{channel:02X}C00000{sw[2:]}")[1] == "9000"
    [(tag, value)] = ber(read_ef(card, channel, b"\x50\x31"))  # EF_ODF: the DODF entry
    assert tag == 0xA7
    dodf_path = path_of(value)
    [(tag, oid_do)] = ber(read_ef(card, channel, dodf_path))
    assert tag == 0xA1
    common, common_data, (typed, typed_value) = ber(oid_do)
    assert common[0] == 0x30 and common_data[0] == 0x30 and typed == 0xA1
    [(seq, seq_value)] = ber(typed_value)
    (oid_tag, oid), (path_tag, path_value) = ber(seq_value)
    assert (seq, oid_tag, oid.hex().upper()) == (0x30, 0x06, "2A864886FC6B81480101")  # 1.2.840.114283.200.1.1
    [(main_tag, main)] = ber(read_ef(card, channel, path_of(bytes((path_tag, len(path_value))) + path_value)))
    (tag_tag, refresh), (rules_path_tag, rules_path) = ber(main)
    assert main_tag == 0x30 and tag_tag == 0x04 and len(refresh) == 8
    rules_file = read_ef(card, channel, path_of(bytes((rules_path_tag, len(rules_path))) + rules_path))
    granted: dict[str, list[dict[str, object]]] = {}
    for entry_tag, entry in ber(rules_file):
        assert entry_tag == 0x30
        (target_tag, target), (cond_path_tag, cond_path) = ber(entry)
        assert target_tag == 0xA0
        [(octets, aid)] = ber(target)
        conditions = read_ef(card, channel, path_of(bytes((cond_path_tag, len(cond_path))) + cond_path))
        for cond_tag, cond in ber(conditions):
            (hash_tag, digest), (rules_tag, access) = ber(cond)
            assert (cond_tag, hash_tag, rules_tag) == (0x30, 0x04, 0xA0)
            parts = dict(ber(access))
            apdu_rule = dict(ber(parts[0xA0]))
            nfc_rule = dict(ber(parts[0xA1]))
            granted.setdefault(aid.hex().upper(), []).append(
                {"hash": digest.hex().upper(), "apdu": apdu_rule[0x80], "nfc": nfc_rule[0x80]}
            )
    assert granted == {
        ECHO: [{"hash": GRANTED, "apdu": b"\x01", "nfc": b"\x00"}],
        ECHO_LONG: [{"hash": GRANTED, "apdu": b"\x01", "nfc": b"\x00"}],
    }


def open_channel_for(card: SimCard) -> int:
    data, sw = apdu(card, "0070000001")
    assert sw == "9000"
    return data[0]


def test_arf_byte_exact_and_special_rules(tmp_path: Path) -> None:
    text = (
        "arf = true\nara_m_rules = [\n"
        f'  {{aid = "default", hash = "", apdu = "never"}},\n'
        f'  {{aid = "", hash = "{GRANTED}", apdu = "0006000000FF0000"}},\n'
        f'  {{aid = "{ECHO}", hash = "{hashlib.sha256(b"x").hexdigest()}"}},\n'  # SHA-256: not in the ARF
        "]\n"
    )
    card = SimCard(load_profile(write_profile(tmp_path, "arf.toml", text)))
    adf = card.fs.mf.children[0x5015]
    files = {fid: bytes(node.data) for fid, node in adf.children.items()}
    assert files[0x5031] == bytes.fromhex("A706 3004 0402 5207")
    assert files[0x4300] == bytes.fromhex("3008 8100 3004 040243103008 8200 3004 04024311")
    assert files[0x4310] == bytes.fromhex("3007 A005 A003 800100")  # any application: no hash, never
    assert files[0x4311] == bytes.fromhex(f"3026 0414 {GRANTED} A00E A00C A10A 04080006000000FF0000")
    assert 0x4312 not in files
    assert files[0x5207].startswith(bytes.fromhex("A129 3000 300F 0C0D") + b"GP SE Acc Ctl")


def test_arf_refresh_tag_follows_the_profile(tmp_path: Path) -> None:
    state = tmp_path / "card.json"
    first = SimCard(load_profile("omapi-arf"), state_path=state)
    tag = bytes(first.fs.mf.children[0x5015].children[0x4200].data[4:12])
    first.save_state()
    other = write_profile(
        tmp_path, "other.toml", f'arf = true\nara_m_rules = [{{aid = "{ECHO}", hash = ""}}]\n'
    )
    second = SimCard(load_profile(other), state_path=state)  # new rules: the files follow them
    assert bytes(second.fs.mf.children[0x5015].children[0x4200].data[4:12]) != tag
    assert 0x4311 not in second.fs.mf.children[0x5015].children
