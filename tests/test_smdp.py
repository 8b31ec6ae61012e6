"""The SM-DP+ (ota/smdp.py) and the ES9+ JSON binding (ota/es9_json.py) of SGP.22 6.5: codec, activation codes,
the ES9+ functions over an in-memory stream, single use, bad input and the persisted state."""

from __future__ import annotations

import base64
import json

import pytest

from bipsim.ota import es9_json
from bipsim.ota.es9_json import (
    ActivationCode,
    ActivationCodeError,
    Es9Error,
    Es9FormatError,
    decode_request,
    decode_response,
    encode_failure,
    encode_request,
    encode_response,
    parse_activation_code,
)


def test_request_round_trip_carries_header_and_base64() -> None:
    body = encode_request(
        "initiateAuthentication",
        {"euiccChallenge": b"\x01" * 16, "smdpAddress": "127.0.0.1:8443"},
        requester="lpa-x",
        call_id="c1",
    )
    value = json.loads(body)
    assert value["header"] == {"functionRequesterIdentifier": "lpa-x", "functionCallIdentifier": "c1"}
    assert base64.b64decode(value["euiccChallenge"]) == b"\x01" * 16
    decoded = decode_request(body)
    assert es9_json.b64_field(decoded, "euiccChallenge") == b"\x01" * 16
    assert es9_json.text_field(decoded, "smdpAddress") == "127.0.0.1:8443"
    with pytest.raises(ValueError):
        encode_request("downloadEverything", {})


def test_response_success_and_failure() -> None:
    ok = decode_response(encode_response({"transactionId": "0A0B", "serverSigned1": b"\x30\x00"}))
    assert ok["header"]["functionExecutionStatus"]["status"] == "Executed-Success"
    assert es9_json.b64(ok["serverSigned1"]) == b"\x30\x00"
    with pytest.raises(Es9Error) as caught:
        decode_response(encode_failure(Es9Error("8.2.6", "3.8", "Refused")))
    assert (caught.value.subject_code, caught.value.reason_code, caught.value.message) == (
        "8.2.6",
        "3.8",
        "Refused",
    )
    assert decode_response(b"") == {}  # handleNotification's 204


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"header": {}}',
        b'{"header": {"functionExecutionStatus": {"status": "Great"}}}',
        b"\xff\xfe",
    ],
)
def test_garbage_answer_is_a_format_error(body: bytes) -> None:
    with pytest.raises(Es9FormatError):
        decode_response(body)


def test_field_errors_are_sgp22_format_codes() -> None:
    body = decode_request(b'{"transactionId": "zz", "euiccInfo1": "***", "n": 5}')
    with pytest.raises(Es9Error) as missing:
        es9_json.b64_field(body, "euiccChallenge")
    assert (missing.value.subject_code, missing.value.reason_code) == ("1.6", "2.2")
    with pytest.raises(Es9Error) as invalid:
        es9_json.b64_field(body, "euiccInfo1")
    assert invalid.value.reason_code == "2.1"
    with pytest.raises(Es9Error):
        es9_json.hex_field(body, "transactionId")
    with pytest.raises(Es9Error):
        es9_json.text_field(body, "n")
    with pytest.raises(Es9FormatError):
        decode_request(b'{"header": "me"}')


def test_activation_codes() -> None:
    code = parse_activation_code("LPA:1$127.0.0.1:8443$OP1-0001")
    assert code == ActivationCode("127.0.0.1:8443", "OP1-0001")
    assert str(code) == "LPA:1$127.0.0.1:8443$OP1-0001"
    assert parse_activation_code(
        str(ActivationCode("smdp.example", "X", "", True))
    ).confirmation_code_required
    for bad in ("LPA:2$host$X", "LPA:1$host", "LPA:1$ho st$X", "LPA:1$host$X$oid$7", "hello"):
        with pytest.raises(ActivationCodeError):
            parse_activation_code(bad)
    assert es9_json.function_of("/gsma/rsp2/es9plus/getBoundProfilePackage") == "getBoundProfilePackage"
    assert es9_json.function_of("/gsma/rsp2/es9plus/other") is None
