"""The ES9+ JSON binding of GSMA SGP.22 (section 6.5: 6.5.1 the HTTP and JSON rules, 6.5.2 the functions), shared
by the SM-DP+ (ota/smdp.py) and the LPA's ES9+ client (ap/lpa/es9_client.py); docs/protocols.md, "eUICC and the
cloud backup".

Sans-IO: dicts in, the bytes of a body out, and back. A request is an HTTP POST to
`/gsma/rsp2/es9plus/<function>` with `X-Admin-Protocol: gsma/rsp/v2.x.y` and `Content-Type: application/json`; its
body is a JSON object with an optional `header` (`functionRequesterIdentifier`, `functionCallIdentifier`, SGP.22
6.5.1.3) and the function's fields: ASN.1 values as base64 of their DER, `transactionId` as hex, `smdpAddress` as
text. An answer (6.5.1.4) carries `header.functionExecutionStatus` with `status` `Executed-Success` or `Failed`,
the latter with `statusCodeData` (`subjectCode`, `reasonCode`, `message`: the SGP.22 status codes);
handleNotification is answered 204 without a body.

The activation code of SGP.22 4.1 (`LPA:1$<SM-DP+ address>$<matchingId>`) is read and written here too, so the
server that prints it and the LPA that scans it agree.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

ES9_PATH = "/gsma/rsp2/es9plus/"  # SGP.22 6.5.2: every ES9+ function's path is this prefix and its name
FUNCTIONS = (
    "initiateAuthentication",  # SGP.22 5.6.1 / 6.5.2.6
    "getBoundProfilePackage",  # 5.6.2 / 6.5.2.7
    "authenticateClient",  # 5.6.3 / 6.5.2.8
    "handleNotification",  # 5.6.4 / 6.5.2.9
    "cancelSession",  # 5.6.5 / 6.5.2.10
)
ADMIN_PROTOCOL = "gsma/rsp/v2.2.0"  # what we send; any gsma/rsp/v2.x.y is accepted (SGP.22 6.5.1)
ADMIN_PROTOCOL_RE = re.compile(r"^gsma/rsp/v2\.[0-9]+\.[0-9]+$")
CONTENT_TYPE = "application/json;charset=UTF-8"
REQUEST_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Admin-Protocol", ADMIN_PROTOCOL),
    ("Content-Type", CONTENT_TYPE),
)
SUCCESS = "Executed-Success"
FAILED = "Failed"
STATUSES = (SUCCESS, "Executed-WithWarning", FAILED, "Expired")  # SGP.22 6.5.1.4
MAX_FIELD_TEXT = 256  # characters of a text field (smdpAddress, transactionId, identifiers) we take

# The status codes this binding itself gives (SGP.22 6.5.1.4 statusCodeData): subject 1.6 is the function called,
# reasons 2.1 "Invalid" and 2.2 "Mandatory Element Missing" are the format errors of the reason code table
SUBJECT_FUNCTION = "1.6"
REASON_INVALID = "2.1"
REASON_MISSING = "2.2"


class Es9Error(Exception):
    """An ES9+ function that did not execute: SGP.22's subject and reason codes and a message for people.

    The SM-DP+ raises it to answer `Failed`; `decode_response` raises it on a `Failed` answer."""

    def __init__(self, subject_code: str, reason_code: str, message: str = "", status: str = FAILED) -> None:
        super().__init__(f"{status} {subject_code}/{reason_code}: {message}")
        self.subject_code = subject_code
        self.reason_code = reason_code
        self.message = message
        self.status = status

    def status_code_data(self) -> dict[str, str]:
        data = {"subjectCode": self.subject_code, "reasonCode": self.reason_code}
        if self.message:
            data["message"] = self.message
        return data


class Es9FormatError(Es9Error):
    """A body that is not an ES9+ message at all (not UTF-8 JSON, not an object, a bad header): the server answers
    HTTP 400; a client gets it for an answer it cannot read. Subject and reason are 1.6 / 2.1."""

    def __init__(self, message: str) -> None:
        super().__init__(SUBJECT_FUNCTION, REASON_INVALID, message, status="Malformed")


def function_of(path: str) -> str | None:
    """The ES9+ function a request target names, or None when it names none."""
    target = path.split("?", 1)[0]
    if not target.startswith(ES9_PATH):
        return None
    name = target[len(ES9_PATH) :]
    return name if name in FUNCTIONS else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


def encode_request(
    function: str,
    fields: dict[str, Any],
    *,
    requester: str = "bipsim-lpa",
    call_id: str | None = None,
) -> bytes:
    """The JSON body of an ES9+ request: the header and `fields`, bytes values as base64 (the DER of ASN.1
    values), text as it is (`transactionId` in hex, `smdpAddress`). ValueError for an unknown function."""
    if function not in FUNCTIONS:
        raise ValueError(f"{function!r} is not an ES9+ function ({', '.join(FUNCTIONS)})")
    body: dict[str, Any] = {
        "header": {
            "functionRequesterIdentifier": requester,
            "functionCallIdentifier": call_id or secrets.token_hex(8),
        }
    }
    for key, value in fields.items():
        body[key] = _jsonable(value)
    return json.dumps(body).encode("utf-8")


def _object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body.decode("utf-8"))
    except RecursionError:
        raise Es9FormatError("the body's JSON is nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Es9FormatError(f"the body is not UTF-8 JSON: {exc}") from None
    if not isinstance(value, dict):
        raise Es9FormatError("the body is not a JSON object")
    return value


def decode_request(body: bytes) -> dict[str, Any]:
    """A request body as a dict (the server's side). Es9FormatError when it is not a JSON object or its `header`
    (optional: SGP.22 6.5.1.3 makes it the requester's) is not an object of strings."""
    value = _object(body)
    header = value.get("header")
    if header is not None:
        if not isinstance(header, dict) or not all(
            isinstance(header.get(k, ""), str)
            for k in ("functionRequesterIdentifier", "functionCallIdentifier")
        ):
            raise Es9FormatError(
                "header: an object with functionRequesterIdentifier and functionCallIdentifier"
            )
    return value


def text_field(body: dict[str, Any], name: str, *, limit: int = MAX_FIELD_TEXT) -> str:
    """A mandatory text field; Es9Error 1.6/2.2 when missing, 1.6/2.1 when not a string of 1..limit characters."""
    if name not in body:
        raise Es9Error(SUBJECT_FUNCTION, REASON_MISSING, f"{name} is missing")
    value = body[name]
    if not isinstance(value, str) or not value or len(value) > limit:
        raise Es9Error(SUBJECT_FUNCTION, REASON_INVALID, f"{name}: a string of 1 to {limit} characters")
    return value


def b64_field(body: dict[str, Any], name: str, *, limit: int = 1 << 20) -> bytes:
    """A mandatory base64 field's bytes; Es9Error 1.6/2.2 when missing, 1.6/2.1 when not strict base64 or empty."""
    if name not in body:
        raise Es9Error(SUBJECT_FUNCTION, REASON_MISSING, f"{name} is missing")
    value = body[name]
    if not isinstance(value, str) or not value or len(value) > limit:
        raise Es9Error(SUBJECT_FUNCTION, REASON_INVALID, f"{name}: base64 text of 1 to {limit} characters")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Es9Error(SUBJECT_FUNCTION, REASON_INVALID, f"{name}: not base64") from None


def hex_field(body: dict[str, Any], name: str, *, limit: int = 32) -> bytes:
    """A mandatory hex field's bytes (transactionId: SGP.22 6.5.2 carries it as hex); errors as text_field."""
    text = text_field(body, name, limit=limit * 2)
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise Es9Error(SUBJECT_FUNCTION, REASON_INVALID, f"{name}: not hex") from None


def encode_response(fields: dict[str, Any], *, status: str = SUCCESS) -> bytes:
    """The JSON body of an executed function: the header first, then `fields` (bytes as base64)."""
    body: dict[str, Any] = {"header": {"functionExecutionStatus": {"status": status}}}
    for key, value in fields.items():
        body[key] = _jsonable(value)
    return json.dumps(body).encode("utf-8")


def encode_failure(error: Es9Error) -> bytes:
    """The JSON body of a function that failed: status Failed and its statusCodeData."""
    return json.dumps(
        {
            "header": {
                "functionExecutionStatus": {"status": FAILED, "statusCodeData": error.status_code_data()}
            }
        }
    ).encode("utf-8")


def decode_response(body: bytes) -> dict[str, Any]:
    """An answer body as a dict (the client's side). Es9Error with the server's codes when its status is not a
    success; Es9FormatError when the body is not an ES9+ answer. An empty body (handleNotification's 204) is {}."""
    if not body.strip():
        return {}
    value = _object(body)
    header = value.get("header")
    status_obj = header.get("functionExecutionStatus") if isinstance(header, dict) else None
    status = status_obj.get("status") if isinstance(status_obj, dict) else None
    if not isinstance(status_obj, dict) or status not in STATUSES:
        raise Es9FormatError("the answer has no header.functionExecutionStatus.status of SGP.22 6.5.1.4")
    if status in (SUCCESS, "Executed-WithWarning"):
        return value
    data = status_obj.get("statusCodeData")
    if not isinstance(data, dict):
        data = {}
    raise Es9Error(
        str(data.get("subjectCode", "")),
        str(data.get("reasonCode", "")),
        str(data.get("message", ""))[:500],
        status=str(status),
    )


def b64(value: Any, name: str = "field") -> bytes:
    """A base64 value of an answer; Es9FormatError when it is not base64 text."""
    if not isinstance(value, str):
        raise Es9FormatError(f"{name}: not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Es9FormatError(f"{name}: not base64") from None


class ActivationCodeError(ValueError):
    """Text that is not an activation code `LPA:1$<SM-DP+ address>$<matchingId>` (SGP.22 4.1)."""


@dataclass(frozen=True)
class ActivationCode:
    """SGP.22 4.1: AC_Format 1, the SM-DP+ address (host or host:port), the AC_Token (matchingId), and the optional
    SM-DP+ OID and Confirmation Code Required Flag."""

    smdp_address: str
    matching_id: str
    smdp_oid: str = ""
    confirmation_code_required: bool = False

    def __str__(self) -> str:
        text = f"LPA:1${self.smdp_address}${self.matching_id}"
        if self.smdp_oid or self.confirmation_code_required:
            text += f"${self.smdp_oid}"
        if self.confirmation_code_required:
            text += "$1"
        return text


_ADDRESS = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
MATCHING_ID = re.compile(r"^[0-9A-Za-z\-]{0,64}$")  # SGP.22 4.1: upper-case letters, digits and '-' (lenient)


def parse_activation_code(text: str) -> ActivationCode:
    """`LPA:1$host[:port]$matchingId[$oid[$1]]` (the `LPA:` prefix optional); ActivationCodeError otherwise."""
    body = text.strip()
    if body[:4].upper() == "LPA:":
        body = body[4:]
    parts = body.split("$")
    if len(parts) < 3 or len(parts) > 5 or parts[0] != "1":
        raise ActivationCodeError(f"{text[:80]!r} is not LPA:1$<SM-DP+ address>$<matchingId>")
    address, matching_id = parts[1], parts[2]
    if not _ADDRESS.match(address):
        raise ActivationCodeError(f"{address[:80]!r} is not an SM-DP+ address (host or host:port)")
    if not MATCHING_ID.match(matching_id):
        raise ActivationCodeError(
            f"{matching_id[:80]!r} is not a matchingId (letters, digits, '-', up to 64)"
        )
    oid = parts[3] if len(parts) > 3 else ""
    flag = parts[4] if len(parts) > 4 else ""
    if flag not in ("", "1"):
        raise ActivationCodeError(f"the confirmation code flag is {flag[:8]!r}, not 1 or empty")
    return ActivationCode(address, matching_id, oid, flag == "1")
