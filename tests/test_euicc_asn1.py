"""The SGP.22 ASN.1 subset (uicc/euicc/rsp.asn, asn1.py): tags as SGP.22 gives them, real eUICC answers decode,
and bad bytes are Asn1Error and nothing else."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from bipsim.uicc.euicc import asn1
from bipsim.uicc.euicc.asn1 import Asn1Error

# Answers of a commercial eUICC (EID 89086030202200000026000178339240, SVN 2.2.2) read with AT+CGLA on its ISD-R
# channel, as a public eUICC client's test suite on GitHub publishes them (found by searching public code for
# "BF3E125A10"). They check our tags against a card we did not write.
CHIP = {
    "GetEuiccDataResponse": "BF3E125A1089086030202200000026000178339240",
    "GetEuiccChallengeResponse": "BF2E1280108BCF1BE4ADA9C98AF062987330056103",
    "EUICCInfo1": "BF20358203020202A916041481370F5125D0B1D408D4C3B232E6D25E795BEBFB"
    "AA16041481370F5125D0B1D408D4C3B232E6D25E795BEBFB",
    "EuiccConfiguredAddressesResponse": "BF3C17811574657374726F6F74736D64732E67736D612E636F6D",
    "EUICCInfo2": "BF227E8103020301820302020283030402008 40D8101008204000279D083020B"
    "898505077F3E1F808603090200870302030088020490A916041481370F5125D0B1"
    "D408D4C3B232E6D25E795BEBFBAA16041481370F5125D0B1D408D4C3B232E6D25E7"
    "95BEBFB8B01009902064004030100000C0D45442D5A492D55502D30383236",
    "ListNotificationResponse": "BF2881E7A081E4"
    "BF2F36800100810207800C217762672E70726F642E6F6E64656D616E64636F6E6E65637469766974792E636F6D"
    "5A0A98583215220524122410"
    "BF2F36800101810204100C217762672E70726F642E6F6E64656D616E64636F6E6E65637469766974792E636F6D"
    "5A0A98583215220524122410"
    "BF2F36800102810207800C217762672E70726F642E6F6E64656D616E64636F6E6E65637469766974792E636F6D"
    "5A0A98583215220524122410"
    "BF2F36800103810206400C217762672E70726F642E6F6E64656D616E64636F6E6E65637469766974792E636F6D"
    "5A0A98583215220524122410",
}


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize("type_name", sorted(CHIP))
def test_a_real_euicc_answer_decodes_and_encodes_back_byte_for_byte(type_name: str) -> None:
    data = _hex(CHIP[type_name])
    assert asn1.encode(type_name, asn1.decode(type_name, data)) == data


def test_real_answers_read_as_sgp22_names_them() -> None:
    info2 = asn1.decode("EUICCInfo2", _hex(CHIP["EUICCInfo2"]))
    assert info2["svn"] == bytes((2, 2, 2))
    assert info2["ppVersion"] == bytes((1, 0, 0))  # the untagged OCTET STRING after the tagged fields
    assert info2["sasAcreditationNumber"] == "ED-ZI-UP-0826"
    assert info2["euiccCiPKIdListForSigning"] == [bytes.fromhex("81370F5125D0B1D408D4C3B232E6D25E795BEBFB")]
    kind, notes = asn1.decode("ListNotificationResponse", _hex(CHIP["ListNotificationResponse"]))
    assert kind == "notificationMetadataList"
    assert [n["seqNumber"] for n in notes] == [0, 1, 2, 3]
    # install (bit 0), delete (bit 3), install, enable (bit 1): DER drops the trailing zero bits
    assert [n["profileManagementOperation"] for n in notes] == [
        (b"\x80", 1),
        (b"\x10", 4),
        (b"\x80", 1),
        (b"\x40", 2),
    ]


def test_a_profile_list_with_fields_of_a_later_version_still_decodes() -> None:
    # the same chip's GetProfilesInfo answer carries a 'BF76' field our subset does not define: SGP.22's
    # EXTENSIBILITY IMPLIED lets a decoder skip it
    data = _hex(
        "BF2D81B0A081ADE381AA5A0A985832152205241224104F10A0000005591010FFFFFFFF89000012009F7001019105536169"
        "6C79920757454242494E47950102BF7672E224E116C1149880246500BFD50F1415AF56C705A94E2BB2015AE30ADB0800"
        "00000000000001E224E116C114A8F000988F2C44FA897427E1A740FDE2FF545C19E30ADB080000000000000001E224E1"
        "16C1148204F3D96D0061D88FBD97FC8CE041E9494D6B9BE30ADB080000000000000001"
    )
    kind, profiles = asn1.decode("ProfileInfoListResponse", data)
    assert kind == "profileInfoListOk"
    assert profiles[0]["profileState"] == 1
    assert profiles[0]["serviceProviderName"] == "Saily"
    assert profiles[0]["isdpAid"] == bytes.fromhex("A0000005591010FFFFFFFF8900001200")


@pytest.mark.parametrize(
    ("type_name", "value", "der"),
    [
        # GetEID as PROTOCOL's example and lpac send it
        ("GetEuiccDataRequest", {"tagList": b"\x5a"}, "BF3E035C015A"),
        ("GetEuiccInfo1Request", {}, "BF2000"),
        ("GetEuiccChallengeRequest", {}, "BF2E00"),
        (
            "EnableProfileRequest",
            {"profileIdentifier": ("iccid", bytes(10)), "refreshFlag": True},
            "BF3111A00C5A0A000000000000000000008101FF",
        ),
        ("DeleteProfileRequest", ("iccid", bytes(10)), "BF330C5A0A00000000000000000000"),
        ("RetrieveNotificationsListRequest", {"searchCriteria": ("seqNumber", 3)}, "BF2B05A003800103"),
        ("NotificationSentRequest", {"seqNumber": 7}, "BF3003800107"),
        ("CancelSessionRequest", {"transactionId": b"\x01\x02", "reason": 0}, "BF410780020102810100"),
        ("EnableProfileResponse", {"enableResult": 3}, "BF3103800103"),
    ],
)
def test_encodings_have_the_sgp22_tags(type_name: str, value: object, der: str) -> None:
    assert asn1.encode(type_name, value).hex().upper() == der
    assert asn1.decode(type_name, bytes.fromhex(der)) == value


def test_the_bpp_and_installation_result_types_carry_their_tags() -> None:
    isc = {
        "remoteOpId": 1,
        "transactionId": b"\x11" * 16,
        "controlRefTemplate": {"keyType": b"\x88", "keyLen": b"\x10", "hostId": b"host"},
        "smdpOtpk": b"\x04" + b"\x01" * 64,
        "smdpSign": b"\x02" * 64,
    }
    bpp = asn1.encode(
        "BoundProfilePackage",
        {
            "initialiseSecureChannelRequest": isc,
            "firstSequenceOf87": [b"c"],
            "sequenceOf88": [b"m"],
            "sequenceOf86": [b"p1", b"p2"],
        },
    )
    assert bpp[:2] == b"\xbf\x36"
    # BF23 first, its remoteOpId '82', transactionId '80', the CRT 'A6' holding 80/81/84, then 5F49 and 5F37
    assert bpp[bpp.index(b"\xbf\x23") :].startswith(b"\xbf\x23")
    assert (
        b"\x82\x01\x01\x80\x10" + b"\x11" * 16 + b"\xa6\x0c\x80\x01\x88\x81\x01\x10\x84\x04host\x5f\x49"
        in bpp
    )
    assert b"\xa0\x03\x87\x01c\xa1\x03\x88\x01m\xa3\x08\x86\x02p1\x86\x02p2" in bpp
    pir = asn1.encode(
        "ProfileInstallationResult",
        {
            "profileInstallationResultData": {
                "transactionId": b"\x11",
                "notificationMetadata": {
                    "seqNumber": 1,
                    "profileManagementOperation": (b"\x80", 1),
                    "notificationAddress": "smdp",
                },
                "smdpOid": "2.999.10",
                "finalResult": ("errorResult", {"bppCommandId": 5, "errorReason": 11}),
            },
            "euiccSignPIR": b"\x00" * 64,
        },
    )
    assert pir[:2] == b"\xbf\x37" and b"\xbf\x27" in pir and b"\xbf\x2f" in pir
    assert b"\xa2\x08\xa1\x06\x80\x01\x05\x81\x01\x0b" in pir  # finalResult [2] errorResult [1]: 80 05, 81 0B
    assert pir[-67:-64] == b"\x5f\x37\x40"  # euiccSignPIR last


@pytest.mark.parametrize(
    "data",
    [
        "",  # no tag
        "BF",  # truncated tag
        "BF3E035C015A00",  # a byte after the value
        "BF3E045C015A",  # length over the data
        "BF3E8480000001",  # absurd length
        "BF3F035C015A",  # another tag
        "BF3E035C",  # cut short
    ],
)
def test_bad_der_is_asn1error_and_nothing_else(data: str) -> None:
    with pytest.raises(Asn1Error):
        asn1.decode("GetEuiccDataRequest", bytes.fromhex(data))


def test_a_wrong_value_or_an_unknown_type_is_asn1error() -> None:
    with pytest.raises(Asn1Error):
        asn1.encode("EnableProfileRequest", {"refreshFlag": True})
    with pytest.raises(Asn1Error):
        asn1.encode("GetEuiccDataRequest", {"tagList": "not bytes"})
    with pytest.raises(Asn1Error):
        asn1.decode("NoSuchType", b"\x30\x00")
    with pytest.raises(Asn1Error):
        asn1.encode("NoSuchType", {})


def test_es10_request_names_a_request_by_its_outer_tag() -> None:
    assert asn1.es10_request(bytes.fromhex("BF3E035C015A")) == ("GetEuiccDataRequest", {"tagList": b"\x5a"})
    assert asn1.es10_request(bytes.fromhex("BF2E00")) == ("GetEuiccChallengeRequest", {})
    for tag, name in asn1.ES10_REQUEST_TAGS.items():
        assert asn1.outer_tag(tag.to_bytes(2, "big") + b"\x00") == tag
        asn1.rsp().types[name]  # every request type named is in the module
    with pytest.raises(Asn1Error, match="no ES10 request"):
        asn1.es10_request(bytes.fromhex("BF3400"))  # eUICCMemoryReset: not served by this eUICC
    with pytest.raises(Asn1Error):
        asn1.es10_request(bytes.fromhex("BF3E035C01"))  # its tag, broken DER


def test_outer_tag_reads_one_to_three_byte_tags() -> None:
    assert asn1.outer_tag(b"\x5a\x00") == 0x5A
    assert asn1.outer_tag(b"\xbf\x2e\x00") == 0xBF2E
    assert asn1.outer_tag(b"\x9f\x70\x01\x01") == 0x9F70
    with pytest.raises(Asn1Error):
        asn1.outer_tag(b"\xbf\x81\x81\x81")


def test_the_parsed_module_is_cached_between_processes_and_a_bad_cache_is_parsed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asn1tools

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    text = "T DEFINITIONS AUTOMATIC TAGS ::= BEGIN A ::= [5] SEQUENCE { x INTEGER } END"
    first = asn1.parsed(text)
    (cached,) = (tmp_path / "bipsim").glob("rsp-*.json")
    calls: list[str] = []
    real = asn1tools.parse_string
    monkeypatch.setattr(asn1tools, "parse_string", lambda t: calls.append(t) or real(t))
    assert asn1.parsed(text) == first and calls == []  # read back, not parsed
    assert asn1tools.compile_dict(asn1.parsed(text), "der").encode("A", {"x": 1}) == bytes.fromhex(
        "a503800101"
    )
    cached.write_text("{not json")
    assert asn1.parsed(text) == first and calls == [text]  # parsed again, and the cache mended
    assert asn1.parsed(text) == first and calls == [text]
    assert asn1.parsed(text + " ") != {} and len(calls) == 2  # another text, another entry


@pytest.mark.parametrize(
    "bad", ["{}", "[]", '{"T": {"types": {}}}', '{"T": {"types": {"A": 5}}}', '{"U": {}}']
)
def test_a_cache_that_is_json_but_not_a_parse_of_the_text_is_parsed_again_and_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    import asn1tools

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    text = "T DEFINITIONS AUTOMATIC TAGS ::= BEGIN A ::= [5] SEQUENCE { x INTEGER } END"
    first = asn1.parsed(text)
    (cached,) = (tmp_path / "bipsim").glob("rsp-*.json")
    cached.write_text(bad)
    calls: list[str] = []
    real = asn1tools.parse_string
    monkeypatch.setattr(asn1tools, "parse_string", lambda t: calls.append(t) or real(t))
    assert asn1.parsed(text) == first and calls == [text]  # not trusted: parsed again
    assert asn1.parsed(text) == first and calls == [text]  # and rewritten: read back the next time
    assert asn1tools.compile_dict(asn1.parsed(text), "der").encode("A", {"x": 1}) == bytes.fromhex(
        "a503800101"
    )


def test_the_rsp_module_cache_must_hold_every_type_of_rsp_asn(tmp_path: Path) -> None:
    from importlib import resources

    text = resources.files("bipsim.uicc.euicc").joinpath("rsp.asn").read_text(encoding="utf-8")
    good = asn1.parsed(text)
    assert asn1._cache_fits(good, text)
    declared = asn1.declared_types(text)["RSPDefinitions"]
    assert {"EUICCInfo1", "EuiccCancelSessionSigned", "BoundProfilePackage"} <= declared
    assert declared == set(good["RSPDefinitions"]["types"])
    cut = {"RSPDefinitions": {**good["RSPDefinitions"], "types": dict(good["RSPDefinitions"]["types"])}}
    del cut["RSPDefinitions"]["types"]["EUICCInfo1"]  # a truncated dict
    assert not asn1._cache_fits(cut, text)
    assert not asn1._cache_fits({}, text) and not asn1._cache_fits([], text)


def test_object_identifiers_under_arc_2_decode_right_and_asn1tools_is_left_alone() -> None:
    import asn1tools
    from asn1tools.codecs import ber

    asn1.rsp()
    # the library's own decoder, not ours: importing and compiling patch nothing process-wide
    assert ber.decode_object_identifier.__module__ == "asn1tools.codecs.ber"
    # its known misreading, untouched
    assert ber.decode_object_identifier(b"\x88\x37\x0a", 0, 3) == "26.39.10"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pyparsing's, as asn1tools builds its grammar
        other = asn1tools.compile_string("M DEFINITIONS ::= BEGIN O ::= OBJECT IDENTIFIER END", "der")
    assert other.decode("O", bytes.fromhex("060388370a")) == "26.39.10"
    # our decode puts it right, wherever the OID sits: plain, in a CHOICE, in a SEQUENCE OF
    signed = {"transactionId": b"\x01", "smdpOid": "2.999.10", "reason": 0}
    der = asn1.encode("EuiccCancelSessionSigned", signed)
    assert b"\x81\x03\x88\x37\x0a" in der  # [1] smdpOid; X.690 8.19: 2*40 + 999 = 1079 = 0x88 0x37
    assert asn1.decode("EuiccCancelSessionSigned", der) == signed
    response = (
        "cancelSessionResponseOk",
        {"euiccCancelSessionSigned": signed, "euiccCancelSessionSignature": b"s"},
    )
    assert asn1.decode("CancelSessionResponse", asn1.encode("CancelSessionResponse", response)) == response
    for oid in ("2.999.10", "2.23.146.1.2.1.0", "1.2.840.10045.3.1.7", "2.40", "0.39"):
        value = {**signed, "smdpOid": oid}
        assert (
            asn1.decode("EuiccCancelSessionSigned", asn1.encode("EuiccCancelSessionSigned", value)) == value
        )
    assert asn1.oid_text("26.39.10") == "2.999.10" and asn1.oid_text("1.2.3") == "1.2.3"


def test_a_cache_of_the_right_shape_that_does_not_compile_is_parsed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib import resources

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    text = resources.files("bipsim.uicc.euicc").joinpath("rsp.asn").read_text(encoding="utf-8")
    good = asn1.parsed(text)
    (cached,) = (tmp_path / "bipsim").glob("rsp-*.json")
    module = good["RSPDefinitions"]
    broken = {
        "RSPDefinitions": {**module, "types": {name: {"type": "NoSuchType"} for name in module["types"]}}
    }
    cached.write_text(json.dumps(broken))
    spec = asn1.rsp.__wrapped__()  # a fresh compile, as a new process makes it
    assert spec.encode("GetEuiccDataRequest", {"tagList": b"\x5a"}) == bytes.fromhex("BF3E035C015A")
    assert json.loads(cached.read_text()) == json.loads(json.dumps(good))  # the cache was written again
