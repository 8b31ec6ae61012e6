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
