"""The terminal's GP SEAC v1.1 parser and decision (ap/omapi/seac.py): rule sets as the card's ARA-M serves them
(bipsim.uicc.applets.ara_m builds the bytes independently of the parser), the search order of section 3.4, APDU
filters, and malformed input with the offset of the problem."""

from __future__ import annotations

import pytest

from bipsim.ap.omapi.seac import (
    ApduAccess,
    RuleFormatError,
    RuleSet,
    announced_length,
    parse_ac_conditions,
    parse_ac_main,
    parse_ac_rules,
    parse_dodf,
    parse_odf,
    parse_refresh_tag,
    parse_rules,
)
from bipsim.uicc.applets.ara_m import TEST_CERTIFICATES, certificate_hash, encode_all, parse_rule
from bipsim.uicc.applets.arf import arf_files, refresh_tag

APPLET = bytes.fromhex("A000000476416E64726F696443545331")
OTHER_APPLET = bytes.fromhex("A000000476416E64726F696443545332")
ME = certificate_hash(TEST_CERTIFICATES["granted"])
SOMEONE = certificate_hash(TEST_CERTIFICATES["denied"])


def rules(*entries: dict[str, str]) -> RuleSet:
    return RuleSet(parse_rules(encode_all(parse_rule(entry) for entry in entries)))


def test_the_cards_encoding_parses_back() -> None:
    data = encode_all(
        [
            parse_rule({"aid": APPLET.hex(), "hash": ME.hex(), "apdu": "always", "nfc": "never"}),
            parse_rule({"aid": "default", "hash": "", "apdu": "never"}),
            parse_rule(
                {"aid": OTHER_APPLET.hex(), "hash": ME.hex(), "apdu": "00A4040000FFFF00", "package": "org.x"}
            ),
        ]
    )
    assert announced_length(data[:10]) == len(data)
    first, default, filtered = parse_rules(data)
    assert (first.aid, first.cert_hash, first.apdu, first.nfc) == (APPLET, ME, ApduAccess.ALWAYS, False)
    assert (default.aid, default.cert_hash, default.apdu) == (b"", None, ApduAccess.NEVER)
    assert (
        filtered.filters == ((bytes.fromhex("00A40400"), bytes.fromhex("00FFFF00")),)
        and filtered.package == "org.x"
    )


def test_search_order_specific_before_generic() -> None:
    # a rule for this applet naming another application denies, even with a generic rule granting everyone
    ruleset = rules(
        {"aid": APPLET.hex(), "hash": SOMEONE.hex(), "apdu": "always"},
        {"aid": "", "hash": "", "apdu": "always"},
    )
    assert not ruleset.decide(APPLET, ME).granted
    assert ruleset.decide(OTHER_APPLET, ME).granted  # no rule for that applet: the generic rule
    # this applet for every application beats every applet for this application
    ruleset = rules(
        {"aid": APPLET.hex(), "hash": "", "apdu": "never"},
        {"aid": "", "hash": ME.hex(), "apdu": "always"},
    )
    assert not ruleset.decide(APPLET, ME).granted
    assert ruleset.decide(OTHER_APPLET, ME).granted
    assert not rules().decide(APPLET, ME).granted  # no rule: denied


def test_never_beats_always_and_filters_restrict_transmit() -> None:
    ruleset = rules(
        {"aid": APPLET.hex(), "hash": ME.hex(), "apdu": "always"},
        {"aid": APPLET.hex(), "hash": ME.hex(), "apdu": "never"},
    )
    assert not ruleset.decide(APPLET, ME).granted
    decision = rules({"aid": APPLET.hex(), "hash": ME.hex(), "apdu": "80CA0000FFFF0000"}).decide(APPLET, ME)
    assert decision.granted
    assert decision.allows(bytes.fromhex("83CA9F7F00"))  # channel bits of CLA do not matter
    assert not decision.allows(bytes.fromhex("80CB9F7F00"))


def test_a_package_rule_names_one_package() -> None:
    ruleset = rules({"aid": APPLET.hex(), "hash": ME.hex(), "apdu": "always", "package": "org.wallet"})
    assert ruleset.decide(APPLET, ME, "org.wallet").granted
    assert not ruleset.decide(APPLET, ME, "org.other").granted


@pytest.mark.parametrize(
    "data, where",
    [
        (bytes.fromhex("FF4005E203E1014F"), 3),  # REF-DO cut short: the REF-AR-DO at 3 is named
        (bytes.fromhex("FF40"), 2),  # the length field missing after the tag
        (bytes.fromhex("DF2000"), 0),  # not FF40 at all
        (bytes.fromhex("FF4004E202E100"), 3),  # REF-AR-DO without AR-DO
    ],
)
def test_malformed_rules_name_the_offset(data: bytes, where: int) -> None:
    with pytest.raises(RuleFormatError) as caught:
        parse_rules(data)
    assert caught.value.offset == where
    assert str(caught.value).startswith(f"offset {where}: ")


def test_refresh_tag() -> None:
    assert parse_refresh_tag(bytes.fromhex("DF20080102030405060708")) == bytes.fromhex("0102030405060708")
    with pytest.raises(RuleFormatError):
        parse_refresh_tag(bytes.fromhex("DF200401020304"))


def test_the_access_rule_files_parse_into_the_ara_m_rule_model() -> None:
    other = bytes.fromhex("11" * 20)
    entries = [
        {"aid": APPLET.hex(), "hash": ME.hex(), "apdu": "always", "nfc": "never"},
        {"aid": APPLET.hex(), "hash": other.hex(), "apdu": "0006000000FF0000"},
        {"aid": "default", "hash": "", "apdu": "never"},
        {"aid": "", "hash": ME.hex(), "apdu": "always"},
    ]
    card_rules = [parse_rule(entry) for entry in entries]
    files = arf_files(card_rules)

    def read(path: bytes) -> bytes:
        return files[int.from_bytes(path[-2:], "big")]

    tag, rules_path = parse_ac_main(read(parse_dodf(read(parse_odf(files[0x5031])))))
    assert tag == refresh_tag(card_rules)
    rules = [
        rule
        for aid, path in parse_ac_rules(read(rules_path))
        for rule in parse_ac_conditions(read(path), aid)
    ]
    by_key = {(rule.aid, rule.cert_hash): rule for rule in rules}
    assert set(by_key) == {(APPLET, ME), (APPLET, other), (b"", None), (None, ME)}
    assert by_key[(APPLET, ME)].apdu is ApduAccess.ALWAYS and by_key[(APPLET, ME)].nfc is False
    assert by_key[(APPLET, other)].apdu is ApduAccess.FILTERED
    assert by_key[(APPLET, other)].filters == ((bytes.fromhex("00060000"), bytes.fromhex("00FF0000")),)
    assert by_key[(b"", None)].apdu is ApduAccess.NEVER
    ruleset = RuleSet(tuple(rules))
    assert ruleset.decide(APPLET, ME).granted
    filtered = ruleset.decide(APPLET, other)
    assert filtered.allows(bytes.fromhex("00060000")) and not filtered.allows(bytes.fromhex("00080000"))
    # an empty EF_ACConditions denies every application
    assert not RuleSet(parse_ac_conditions(b"", APPLET)).decide(APPLET, ME).granted
    with pytest.raises(RuleFormatError):
        parse_ac_main(bytes.fromhex("3003040100"))
