"""Published TS 102 223 vectors (tests/cat_vectors.py: oFono's TS 102 384 conformance PDUs): each decodes to the
fields its source states and re-encodes to the identical bytes."""

from __future__ import annotations

import pytest

from bipsim.uicc.cat import (
    CommandType,
    OpenChannel,
    ProactiveCommand,
    TerminalResponse,
    buffer_size,
    channel_data,
    channel_data_length,
    channel_of,
    channel_statuses,
    decode_any,
    decode_envelope,
    decode_proactive,
    decode_terminal_response,
)
from bipsim.uicc.cat_render import to_json
from tests.cat_vectors import VECTORS, Vector

DECODERS = {
    "proactive_command": decode_proactive,
    "terminal_response": decode_terminal_response,
    "envelope": decode_envelope,
}


def test_the_set_is_large_and_names_are_unique() -> None:
    assert len(VECTORS) >= 40
    assert len({v.name for v in VECTORS}) == len(VECTORS)
    # the '81' length form appears on the outer BER-TLV and inside simple objects
    assert any(v.data[:2] == b"\xd0\x81" for v in VECTORS)
    assert any(b"\xb6\x81\xc8" in v.data and v.kind == "terminal_response" for v in VECTORS)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_vector_decodes_to_its_fields_and_round_trips(vector: Vector) -> None:
    message = DECODERS[vector.kind](vector.data)
    assert message.encode() == vector.data
    auto = decode_any(vector.data)
    assert type(auto) is type(message) and auto.encode() == vector.data

    out = to_json(message)
    assert out["kind"] == vector.kind
    if vector.command is not None:
        number, type_, qualifier = vector.command
        assert (out["command"]["number"], out["command"]["type"], out["command"]["qualifier"]) == (
            number,
            type_,
            qualifier,
        )
        assert out["command"]["type_name"] == CommandType(type_).spec_name
    if vector.envelope_tag is not None:
        assert out["envelope_tag"] == vector.envelope_tag
    else:
        assert "envelope_tag" not in out
    assert (out["device"]["source"], out["device"]["destination"]) == vector.device
    assert [o["name"] for o in out["objects"]] == [name for name, _ in vector.objects]
    for got, (name, fields) in zip(out["objects"], vector.objects, strict=True):
        assert {k: got["fields"].get(k) for k in fields} == fields, name
        assert "malformed" not in got["fields"]


OPEN_CHANNELS = [v for v in VECTORS if v.name.startswith("open_channel_") and v.kind == "proactive_command"]


@pytest.mark.parametrize("vector", OPEN_CHANNELS, ids=lambda v: v.name)
def test_open_channel_typed_view(vector: Vector) -> None:
    """TS 102 384 27.22.4.27.2: GPRS bearer, buffer 1400, UDP to 1.1.1.1:44444, login UserLog / UserPwd."""
    request = OpenChannel.from_command(decode_proactive(vector.data))
    assert request.bearer_type == 2
    assert request.bearer_parameters == bytes.fromhex("030403041F02")
    assert (request.buffer_size, request.protocol, request.port) == (1400, 1, 44444)
    assert request.destination == "1.1.1.1" and request.local_address is None
    assert (request.login, request.password) == ("UserLog", "UserPwd")
    assert request.immediate and not request.background
    assert request.apn == (None if vector.name == "open_channel_211" else "TestGp.rs")
    alphas = {"open_channel_231": "Open ID", "open_channel_241": "", "open_channel_511": "Open ID 1"}
    assert request.alpha == alphas.get(vector.name)


def _vector(name: str) -> bytes:
    return next(v.data for v in VECTORS if v.name == name)


def test_bip_helpers_read_the_vectors() -> None:
    send = decode_proactive(_vector("send_data_121"))
    assert channel_of(send) == 1 and channel_data(send) == bytes(range(200))
    assert channel_of(decode_proactive(_vector("close_channel_111"))) == 1
    assert channel_data_length(decode_proactive(_vector("receive_data_111"))) == 200

    rx = decode_terminal_response(_vector("receive_data_response_111"))
    assert isinstance(rx, TerminalResponse)
    assert rx.result == (0, b"") and len(channel_data(rx)) == 200 and channel_data_length(rx) == 0xFF
    opened = decode_terminal_response(_vector("open_channel_response_211"))
    assert buffer_size(opened) == 1400
    assert channel_statuses(opened) == [{"channel_id": 1, "link_established": True, "further_info": 0}]
    refused = decode_terminal_response(_vector("close_channel_response_121"))
    assert refused.result == (0x3A, b"\x03")


def test_rebuilt_commands_equal_the_published_bytes() -> None:
    """Our builders produce the conformance PDUs byte for byte (CR flags as the test suite sets them)."""
    from bipsim.uicc.cat import close_channel, get_channel_status, receive_data, send_data, set_up_event_list

    assert close_channel(1).encode() == _vector("close_channel_111")
    assert receive_data(1, 200).encode() == _vector("receive_data_111")
    assert get_channel_status().encode() == _vector("get_channel_status_111")
    assert set_up_event_list([4]).encode() == _vector("setup_event_list_111")
    built = send_data(1, bytes(range(8)), immediate=True)
    # the published SEND DATA sends channel data with CR set
    assert isinstance(built, ProactiveCommand)
    assert built.get(0x36) is not None and built.get(0x36).value == bytes(range(8))  # type: ignore[union-attr]


def test_terminal_response_builder_matches_published_response() -> None:
    command = decode_proactive(_vector("get_channel_status_111"))
    from bipsim.uicc.cat import channel_status_object

    response = TerminalResponse.build(command, 0, objects=[channel_status_object(1, True)])
    assert response.encode() == _vector("get_channel_status_response_121")


# --- POLL INTERVAL, SEND SHORT MESSAGE, PROVIDE LOCAL INFORMATION, SMS-PP DOWNLOAD (issue 4's remaining kinds) ----

SECTION5_NAMES = {
    "poll_interval_111": ["duration"],
    "poll_interval_response_111": ["result", "duration"],
    "send_sms_111": ["alpha_identifier", "address", "sms_tpdu"],
    "provide_local_info_response_121": ["result", "imei"],
    "provide_local_info_response_141": ["result", "date_time_and_time_zone"],
    "provide_local_info_response_111a": ["result", "location_information"],
    "sms_pp_download_ota_3des_nocc": ["address", "sms_tpdu"],
}


@pytest.mark.parametrize("name", sorted(SECTION5_NAMES))
def test_decode_cli_names_objects_as_protocol_section_5(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from bipsim.cli import main

    data = _vector(name)
    try:
        main(["decode", "--json", data.hex().upper()])
    except SystemExit as exc:  # the CLI may exit 0 explicitly
        assert not exc.code
    out = json.loads(capsys.readouterr().out)
    assert [o["name"] for o in out["objects"]] == SECTION5_NAMES[name]
    by_name = {o["name"]: o["fields"] for o in out["objects"]}
    if "duration" in by_name:
        assert by_name["duration"] == {"unit": 1, "interval": 20}
    for opaque in ("address", "sms_tpdu", "imei", "date_time_and_time_zone", "location_information"):
        if opaque in by_name:
            assert set(by_name[opaque]) == {"value_hex"}
            assert by_name[opaque]["value_hex"] == by_name[opaque]["value_hex"].upper()


def test_poll_interval_builder_and_gateway_duration_match_published_bytes() -> None:
    """TS 102 384 27.22.4.6: POLL INTERVAL of 20 s with the duration's CR bit set, and the TR echoing it."""
    from bipsim.uicc.cat import Tag, obj, poll_interval

    assert poll_interval(20).encode() == _vector("poll_interval_111")
    command = decode_proactive(_vector("poll_interval_111"))
    duration = command.get(Tag.DURATION)
    assert duration is not None and duration.cr and duration.value == b"\x01\x14"
    response = TerminalResponse.build(command, 0, objects=[obj(Tag.DURATION, duration.value)])
    assert response.encode() == _vector("poll_interval_response_111")


def test_send_short_message_carries_an_sms_submit() -> None:
    """3GPP TS 31.124 27.22.4.10.1: SMS-SUBMIT (TS 23.040 9.2.2.2) to +01234567 via service centre +112233445566778."""
    from bipsim.uicc.cat import DeviceId, Tag

    for name, qualifier, text in (
        ("send_sms_111", 0, b"Test Message"),
        ("send_sms_121", 1, b"Send SM"),
        ("send_sms_141", 1, None),
    ):
        command = decode_proactive(_vector(name))
        assert command.type == CommandType.SEND_SHORT_MESSAGE and command.qualifier == qualifier
        assert command.devices[1] == DeviceId.NETWORK
        address, tpdu = command.get(Tag.ADDRESS), command.get(Tag.SMS_TPDU)
        assert address is not None and address.value == bytes.fromhex("9111223344556677F8")
        assert tpdu is not None and tpdu.cr
        tp = tpdu.value
        assert tp[0] & 0x03 == 0x01  # TP-MTI: SMS-SUBMIT
        assert tp[2:4] == b"\x09\x91" and tp[4:9] == bytes.fromhex(
            "10325476F8"
        )  # TP-DA: 9 digits, international
        assert tp[9:11] == b"\x40\xf4"  # TP-PID, TP-DCS (8-bit, class 0)
        assert len(tp) == 12 + tp[11]  # TP-UDL counts the octets that follow
        if text is not None:
            assert tp[12:] == text
    long_tpdu = decode_proactive(_vector("send_sms_141")).get(Tag.SMS_TPDU)
    assert long_tpdu is not None and len(long_tpdu.value) == 172
    assert b"\x8b\x81\xac" in _vector("send_sms_141")  # the object's '81' length form


def test_provide_local_information_responses() -> None:
    """TS 102 384 27.22.4.15: location information, IMEI (TS 24.008 10.5.1.4), date/time (TS 23.040 SCTS)."""
    from bipsim.uicc.cat import Tag

    location = decode_terminal_response(_vector("provide_local_info_response_111a")).get(
        Tag.LOCATION_INFORMATION
    )
    assert location is not None and location.cr
    assert location.value[:3] == bytes.fromhex("00F110")  # MCC 001 MNC 01
    assert location.value[3:5] == b"\x00\x01" and location.value[5:7] == b"\x00\x01"  # LAC, cell id
    eutran = decode_terminal_response(_vector("provide_local_info_response_1171")).get(
        Tag.LOCATION_INFORMATION
    )
    assert eutran is not None and len(eutran.value) == 9

    imei = decode_terminal_response(_vector("provide_local_info_response_121")).get(Tag.IMEI)
    assert imei is not None and len(imei.value) == 8
    assert imei.value[0] & 0x07 == 2 and imei.value[0] & 0x08  # type IMEI, odd number of digits
    digits = f"{imei.value[0] >> 4:X}" + "".join(f"{b & 0x0F:X}{b >> 4:X}" for b in imei.value[1:])
    assert digits == "123456789012345"

    when = decode_terminal_response(_vector("provide_local_info_response_141")).get(
        Tag.DATE_TIME_AND_TIME_ZONE
    )
    assert when is not None
    swapped = [int(f"{b & 0x0F}{b >> 4}") for b in when.value[:6]]
    assert swapped == [2, 5, 7, 14, 8, 17] and when.value[6] == 0xFF  # 2002-05-07 14:08:17, no time zone


@pytest.mark.parametrize("name", ["sms_pp_download_ota_3des_nocc", "sms_pp_download_ota_aes_cc"])
def test_sms_pp_download_carries_a_ts_102_225_command_packet(name: str) -> None:
    """The SMS-DELIVER's user data is a secured command packet (TS 31.115 section 4: UDH element '70', then CPL,
    CHL, SPI, KIc, KID, TAR of TS 102 225 section 5.1.1); our framing equals the card's own SMS-PP builder's."""
    from bipsim.uicc.cat import DeviceId, EnvelopeTag, Tag
    from bipsim.uicc.ota_trigger import sms_pp_download

    envelope = decode_envelope(_vector(name))
    assert envelope.tag == EnvelopeTag.SMS_PP_DOWNLOAD
    assert envelope.devices == (DeviceId.NETWORK, DeviceId.UICC)
    tpdu = envelope.get(Tag.SMS_TPDU)
    address = envelope.get(Tag.ADDRESS)
    assert tpdu is not None and address is not None
    assert sms_pp_download(tpdu.value, address.value) == _vector(name)

    tp = tpdu.value
    assert tp[0] == 0x40  # SMS-DELIVER with TP-UDHI
    at = 2 + 1 + (tp[1] + 1) // 2
    assert tp[at : at + 2] == b"\x7f\xf6"  # PID: (U)SIM data download, DCS: 8-bit class 2
    user_data = tp[at + 2 + 7 + 1 :]  # after SCTS and TP-UDL (pySim's test sets TP-UDL to 3)
    assert user_data[:3] == b"\x02\x70\x00"  # UDH: command packet identifier, empty
    packet = user_data[3:]
    cpl = int.from_bytes(packet[:2], "big")
    assert cpl == len(packet) - 2
    assert packet[2] == 0x15  # CHL: SPI..PCNTR plus the 8-byte cryptographic checksum
    assert packet[7:10] == bytes.fromhex("B00011")  # TAR: USIM remote file management
    kic, kid = packet[5], packet[6]
    assert (kic, kid) == ((0x35, 0x35) if "3des" in name else (0x22, 0x22))


def test_fixed_size_objects_of_the_wrong_length_are_flagged_not_cut() -> None:
    """A 3-byte duration (TS 102 223 8.8 says 2) shows as malformed raw bytes, and still round-trips."""
    data = bytes.fromhex("D00E81030103008202818284030114FF")
    message = decode_proactive(data)
    assert message.encode() == data
    fields = to_json(message)["objects"][0]["fields"]
    assert fields == {"value_hex": "0114FF", "malformed": True}
