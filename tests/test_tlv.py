"""The COMPREHENSION-TLV / BER-TLV codec (TS 101 220 section 7.1, TS 102 223 annex C) and the CAT message layer on
top of it: unit cases for tags, CR bit, length forms and every rejection (typed error with the byte offset), and
hypothesis properties: decode(encode(x)) == x on generated typed objects, and arbitrary bytes never raise anything
but TlvError from any decode entry point. Examples are derandomized so runs are deterministic."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bipsim.uicc.cat import (
    GSM_ENCODE,
    CatObject,
    DeviceId,
    Envelope,
    EnvelopeTag,
    Event,
    OpenChannel,
    ProactiveCommand,
    TerminalResponse,
    channel_data,
    channel_data_length,
    channel_of,
    decode_any,
    decode_envelope,
    decode_proactive,
    decode_terminal_response,
    receive_data,
    send_data,
)
from bipsim.uicc.cat_render import KINDS, decode_as, describe_bytes, to_json, to_tree
from bipsim.uicc.tlv import (
    BerTlv,
    Ctlv,
    TlvError,
    decode_ber,
    decode_ber_list,
    decode_ber_tag,
    decode_ctlvs,
    decode_length,
    encode_ber_tag,
    encode_length,
)
from tests.cat_vectors import VECTORS

FAST = settings(
    max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _err(call: object, *args: object) -> TlvError:
    with pytest.raises(TlvError) as info:
        call(*args)  # type: ignore[operator]
    return info.value


# --- unit cases ---------------------------------------------------------------------------------------------------


def test_one_byte_tag_and_the_cr_bit() -> None:
    with_cr, without = decode_ctlvs(bytes.fromhex("8103010100 0103010100"))
    assert (with_cr.tag, with_cr.cr, with_cr.long_form, with_cr.value) == (1, True, False, b"\x01\x01\x00")
    assert (without.tag, without.cr) == (1, False)
    assert with_cr.encode() == bytes.fromhex("8103010100")
    assert without.encode() == bytes.fromhex("0103010100")


def test_three_byte_tag_keeps_its_form_and_cr() -> None:
    data = bytes.fromhex("7F8001 02 AABB 7F007F 00")
    first, second = decode_ctlvs(data)
    assert (first.tag, first.cr, first.long_form, first.value) == (1, True, True, b"\xaa\xbb")
    assert (second.tag, second.cr, second.long_form, second.value) == (0x7F, False, True, b"")
    assert first.encode() + second.encode() == data
    # a tag value above 0x7E has no one-byte form: the encoder picks the three-byte one
    assert Ctlv(0x1234, b"", cr=True).encode() == bytes.fromhex("7F923400")


@pytest.mark.parametrize(
    ("length", "field"),
    [(0, "00"), (0x7F, "7F"), (0x80, "8180"), (0xFF, "81FF"), (0x100, "820100"), (0xFFFF, "82FFFF"),
     (0x10000, "83010000")],
)  # fmt: skip
def test_length_forms(length: int, field: str) -> None:
    encoded = bytes.fromhex(field)
    assert encode_length(length) == encoded
    data = encoded + bytes(length)
    assert decode_length(data, 0, len(data)) == (length, len(encoded))


def test_two_byte_length_form_inside_a_message() -> None:
    item = Ctlv(0x36, bytes(200), cr=True)
    assert item.encode()[:3] == bytes.fromhex("B681C8")
    assert decode_ctlvs(item.encode()) == [item]


@pytest.mark.parametrize(
    ("data", "offset", "rule"),
    [
        ("0D8105" + "00" * 5, 1, "overlong length encoding for 5"),
        ("0D82007F" + "00" * 127, 1, "overlong length encoding for 127"),
        ("0D830000FF" + "00" * 255, 1, "overlong length encoding for 255"),
        ("0D80", 1, "invalid length field 0x80"),
        ("0D84000000", 1, "invalid length field 0x84"),
        ("0D", 1, "truncated: length field missing"),
        ("0D81", 1, "truncated: length field cut short"),
        ("0D0501", 1, "truncated: length 5 exceeds the 1 bytes left"),
        ("0102AABB 0D0301", 5, "truncated: length 3 exceeds the 1 bytes left"),
        ("7F80", 0, "truncated: three-byte tag cut short"),
        ("00", 0, "reserved COMPREHENSION-TLV tag 0x00"),
        ("010100 80", 3, "reserved COMPREHENSION-TLV tag 0x80"),
        ("FF00", 0, "reserved COMPREHENSION-TLV tag 0xFF"),
    ],
)
def test_ctlv_rejections_name_offset_and_rule(data: str, offset: int, rule: str) -> None:
    error = _err(decode_ctlvs, bytes.fromhex(data))
    assert (error.offset, error.rule) == (offset, rule)
    assert str(error) == f"offset {offset}: {rule}"


def test_ber_tags_of_one_two_and_three_bytes() -> None:
    for tag, raw in [(0xD0, "D0"), (0x9F70, "9F70"), (0xBF8101, "BF8101")]:
        assert encode_ber_tag(tag) == bytes.fromhex(raw)
        assert decode_ber_tag(bytes.fromhex(raw), 0, len(raw) // 2) == (tag, len(raw) // 2)
    assert _err(decode_ber_tag, bytes.fromhex("BF818001"), 0, 4).rule == "tag longer than 3 bytes"
    assert _err(decode_ber_tag, bytes.fromhex("9F"), 0, 1).rule == "truncated: multi-byte tag cut short"
    assert decode_ber(bytes.fromhex("9F7002AABB")) == BerTlv(0x9F70, b"\xaa\xbb")
    assert [t.tag for t in decode_ber_list(bytes.fromhex("4F00 9F7001AA"))] == [0x4F, 0x9F70]


def test_trailing_garbage_and_wrong_outer_tag() -> None:
    error = _err(decode_ber, bytes.fromhex("D003010100FFFF"))
    assert (error.offset, error.rule) == (5, "trailing garbage: 2 bytes after the TLV")
    error = _err(decode_proactive, bytes.fromhex("D6070103010100"))
    assert (error.offset, error.rule) == (0, "unexpected tag 0xD6 (expected D0)")


def test_offsets_count_from_the_start_of_the_outer_buffer() -> None:
    # D0 0C | 81 03 01 43 01 | 82 02 81 21 | B6 05 00: the channel data claims 5 bytes, 1 is there
    error = _err(decode_proactive, bytes.fromhex("D00C8103014301820281 21B60500"))
    assert error.offset == 12 and error.rule.startswith("truncated")
    error = _err(decode_proactive, bytes.fromhex("D004 82028182"))
    assert error.offset == 2 and "command details" in error.rule


def test_message_level_rules() -> None:
    assert "empty input" in _err(decode_any, b"").rule
    assert "result object" in _err(decode_terminal_response, bytes.fromhex("8103014300")).rule
    assert "device identities object" in _err(decode_envelope, bytes.fromhex("D603990109")).rule
    assert "must be 3 bytes" in _err(decode_terminal_response, bytes.fromhex("810201438301 00")).rule


# --- strategies ---------------------------------------------------------------------------------------------------

_GSM_TEXT = st.text(alphabet=sorted(GSM_ENCODE), max_size=20)
_PLAIN_TEXT = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .-_", max_size=20
)
_LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
_IPV4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
_IPV6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
_SHORT_TAG = st.integers(1, 0x7E)
_OBJECT = st.builds(
    CatObject,
    tag=_SHORT_TAG.filter(lambda t: t not in (1, 2)),
    value=st.binary(max_size=300),
    cr=st.booleans(),
)

open_channels = st.builds(
    OpenChannel,
    bearer_type=st.sampled_from([2, 3, 9, 11]),
    bearer_parameters=st.binary(max_size=8),
    buffer_size=st.integers(0, 0xFFFF),
    protocol=st.integers(1, 6),
    port=st.integers(0, 0xFFFF),
    destination=st.none() | _IPV4 | _IPV6,
    apn=st.none() | st.lists(_LABEL, min_size=1, max_size=4).map(".".join),
    login=st.none() | _GSM_TEXT,
    password=st.none(),
    alpha=st.none() | _PLAIN_TEXT,
    qualifier=st.integers(0, 0xFF),
    number=st.integers(0, 0xFF),
    local_address=st.none() | _IPV4,
)


# --- properties ---------------------------------------------------------------------------------------------------


@FAST
@given(st.lists(st.builds(Ctlv, tag=_SHORT_TAG, value=st.binary(max_size=300), cr=st.booleans())
                | st.builds(Ctlv, tag=st.integers(0, 0x7FFF), value=st.binary(max_size=40), cr=st.booleans(),
                            long_form=st.just(True)), max_size=6))  # fmt: skip
def test_ctlv_lists_round_trip(items: list[Ctlv]) -> None:
    data = b"".join(item.encode() for item in items)
    assert decode_ctlvs(data) == items


@FAST
@given(st.integers(0, 0xFFFFFF))
def test_lengths_round_trip(length: int) -> None:
    field = encode_length(length)
    assert decode_length(field, 0, len(field) + length)[0] == length


@FAST
@given(open_channels, st.none() | _GSM_TEXT)
def test_open_channel_round_trips(request: OpenChannel, password: str | None) -> None:
    if request.login is not None:  # the password is the second text string, so it needs a login before it
        request = dataclasses.replace(request, password=password)
    command = request.to_command()
    wire = command.encode()
    decoded = decode_proactive(wire)
    assert decoded == command and decoded.encode() == wire
    assert OpenChannel.from_command(decoded) == request


@FAST
@given(
    channel=st.integers(1, 7),
    data=st.binary(max_size=237),
    immediate=st.booleans(),
    length=st.integers(0, 0xFF),
    number=st.integers(0, 0xFF),
)
def test_bip_commands_round_trip(
    channel: int, data: bytes, immediate: bool, length: int, number: int
) -> None:
    send = send_data(channel, data, immediate=immediate, number=number)
    back = decode_proactive(send.encode())
    assert back == send and channel_of(back) == channel and channel_data(back) == data
    assert back.qualifier == (1 if immediate else 0) and back.number == number
    receive = receive_data(channel, length, number)
    back = decode_proactive(receive.encode())
    assert back == receive and channel_data_length(back) == length


@FAST
@given(
    type_=st.integers(0, 0xFF),
    qualifier=st.integers(0, 0xFF),
    destination=st.sampled_from(list(DeviceId)),
    objects=st.lists(_OBJECT, max_size=5),
    general=st.integers(0, 0xFF),
    additional=st.binary(max_size=4),
    answer=st.lists(_OBJECT, max_size=4),
)
def test_commands_and_terminal_responses_round_trip(
    type_: int,
    qualifier: int,
    destination: DeviceId,
    objects: list[CatObject],
    general: int,
    additional: bytes,
    answer: list[CatObject],
) -> None:
    command = ProactiveCommand.build(type_, objects, qualifier=qualifier, destination=destination)
    assert decode_proactive(command.encode()) == command
    response = TerminalResponse.build(command, general, additional, answer)
    decoded = decode_terminal_response(response.encode())
    assert decoded == response and decoded.result == (general, additional)
    assert (decoded.number, decoded.type, decoded.qualifier) == (command.number, type_, qualifier)


@FAST
@given(
    event=st.sampled_from(list(Event)),
    source=st.sampled_from([DeviceId.TERMINAL, DeviceId.NETWORK]),
    objects=st.lists(_OBJECT, max_size=4),
    tag=st.sampled_from(list(EnvelopeTag)),
)
def test_envelopes_round_trip(
    event: Event, source: DeviceId, objects: list[CatObject], tag: EnvelopeTag
) -> None:
    download = Envelope.event_download(event, source, objects)
    back = decode_envelope(download.encode())
    assert back == download and back.event == event
    other = Envelope((CatObject(2, bytes((source, DeviceId.UICC))), *objects), tag)
    assert decode_envelope(other.encode()) == other


ENTRY_POINTS = [decode_proactive, decode_terminal_response, decode_envelope, decode_any, decode_ctlvs,
                decode_ber, decode_ber_list]  # fmt: skip


def _only_typed_errors(data: bytes) -> None:
    for decode in ENTRY_POINTS:
        try:
            decode(data)
        except TlvError:
            pass
    for kind in KINDS:  # what `bipsim decode --as KIND` runs, "auto" included
        try:
            message = decode_as(data, kind)
        except TlvError:
            continue
        to_json(message)
        to_tree(message)
    try:
        describe_bytes(data)
    except TlvError:
        pass


@settings(max_examples=400, derandomize=True, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_only_the_typed_error(data: bytes) -> None:
    _only_typed_errors(data)


@settings(max_examples=400, derandomize=True, deadline=None)
@given(st.sampled_from(VECTORS), st.data())
def test_damaged_vectors_raise_only_the_typed_error(vector: object, draw: st.DataObject) -> None:
    data = bytearray(vector.data)  # type: ignore[attr-defined]
    for _ in range(draw.draw(st.integers(1, 3))):
        where = draw.draw(st.integers(0, len(data)))
        action = draw.draw(st.sampled_from(["set", "cut", "insert"]))
        if action == "set" and where < len(data):
            data[where] = draw.draw(st.integers(0, 255))
        elif action == "cut":
            del data[where:]
        else:
            data.insert(where, draw.draw(st.integers(0, 255)))
    _only_typed_errors(bytes(data))
