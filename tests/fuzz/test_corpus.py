"""The crashers found so far, each kept as a regression test (docs/development.md, "Fuzzing").

Each input once made a parser raise something other than its typed error, or hang. A crasher in a parser the fuzz
work does not own is reported to its owner; while it is open its test is marked xfail(strict=True) with the
reason, so that main stays green and the fix shows up as an unexpected pass (then the mark goes).
"""

from __future__ import annotations

import json

import pytest
import trio

from tests.fuzz import targets, targets_http
from tests.fuzz._settings import bounded

# --- HTTP/1.1 (uicc/admin_http.py, uicc/ota_agent.py, ota/http_connection.py: the card's client, the server) ----

RESPONSES = [
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-6\r\nabcdefghijkl\r\n0\r\n\r\n",
        id="chunk-size-minus-6",
    ),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n", id="content-length-superscript-two"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n", id="content-length-huge"
    ),
]
REQUESTS = [
    pytest.param(
        b"POST /server/adminagent HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-6\r\n\r\n0\r\n\r\n",
        id="chunk-size-minus-6",
    ),
    pytest.param(
        b"POST /server/adminagent HTTP/1.1\r\nContent-Length: \xb2\r\n\r\nab",
        id="content-length-superscript-two",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        id="content-length-huge",
    ),
]


@pytest.mark.parametrize("data", RESPONSES)
def test_http_response(data: bytes) -> None:
    with bounded(5):
        targets_http.admin_client([data])
        targets_http.admin_client([data[i : i + 1] for i in range(len(data))])
        targets_http.ota_agent([data])


@pytest.mark.parametrize("data", REQUESTS)
def test_http_request(data: bytes) -> None:
    with bounded(5):
        targets_http.server_connection([data])
        targets_http.server_connection([data[i : i + 1] for i in range(len(data))])


# --- V.250 (link/at_syntax.py, link/at_server.py, link/at_chat.py) ------------------------------------------------

LONG_LINE = [b"x" * 4096] * (3_800_000 // 4096)  # 3.8 MB without CR or LF, as the CP once got on DLC 2


def test_dte_long_line_on_dlc2() -> None:
    """The CP's chat on DLC 2 reads a 3.8 MB line without CR/LF, then the final of its command: in linear time,
    and the command still gets its answer."""
    response = trio.run(lambda: targets.at_chat_session([*LONG_LINE, b"\r\nOK\r\n"], seconds=20))
    assert response is not None and response.final == "OK"


def test_dce_long_line_on_dlc2() -> None:
    """The AP's server on DLC 2 reads the same line, then a command: ERROR or nothing for the long line, and the
    next command is answered."""
    written = trio.run(lambda: targets.at_server_session([*LONG_LINE, b"\r", b"AT\r"], seconds=20))
    assert written.endswith(b"OK\r\n")


AT_DIGITS = [
    # Latin-1 superscript digits pass str.isdigit() but not int(): parse_line raised ValueError, not AtSyntaxError
    pytest.param(b"ATE\xb2\r", id="basic-command-value"),
    pytest.param(b"ATS3=\xb2\r", id="s-register-value"),
    pytest.param(b"ATS\xb2?\r", id="s-register-number"),
    pytest.param(b"AT&F\xb9\r", id="ampersand-value"),
    pytest.param(b"ATA\xb3\r", id="a-value"),
]


@pytest.mark.parametrize("line", AT_DIGITS)
def test_at_superscript_digit_parses(line: bytes) -> None:
    with bounded(5):
        targets.at_command_lines([line])


@pytest.mark.parametrize("line", AT_DIGITS)
def test_at_superscript_digit_answered(line: bytes) -> None:
    """The DCE answers such a line (ERROR) and goes on serving: it must not end the line service."""
    written = trio.run(lambda: targets.at_server_session([line, b"AT\r"]))
    assert written.endswith(b"OK\r\n"), written


# --- 27.010 (link/cmux_frame.py) ----------------------------------------------------------------------------------


def test_cmux_flags_one_read_each() -> None:
    """A frame header announcing 32767 bytes, then flags one read at a time (a peer writing byte by byte): each
    read rescanned every flag of the pending frame, quadratic (4000 reads took 26 s). Bounded: 1500 reads in 1.5 s."""
    with bounded(1.5):
        targets.cmux_frames([b"\xf9\x03\xef\xfe\xff", *([b"\xf9"] * 1500)])


def test_cmux_connection_dm_on_dlci_62() -> None:
    """As initiator, a SABM on DLCI 62 was answered with a DM whose address octet is 0xF9 (DLCI 62, C/R 0): the
    flag, a frame no 27.010 parser can read. Such a response is not written; the refusal is still an event."""
    targets.cmux_connection([b"\xf9\xfb\x2f\x01\xae\xf9"], initiator=True)


TLS_FLIGHT_THEN_ERROR = bytes.fromhex(
    "160303002d020000260303" + "00" * 32 + "0000ae00" + "0e000000" + "17030300020102"
)


def test_tls_flight_then_alert() -> None:
    """ServerHello, ServerHelloDone and application data in one read: the client's flight, then its alert (the
    fuzz property once wanted the alert first)."""
    targets.tls_server_bytes([TLS_FLIGHT_THEN_ERROR], (0x00AE,))


# --- SMS-PP PoR (uicc/ota_trigger.py parse_por) -------------------------------------------------------------------


@pytest.mark.parametrize(
    "user_data",
    [
        pytest.param(b"\x02\x71\x00", id="no-rpl"),  # struct.error
        pytest.param(b"\x02\x71\x00\x00\x03\x00\x01\x02\x03", id="rhl-zero"),  # IndexError
        pytest.param(b"\x02\x71\x00\x00\x08\x0a\x00\x00\x00\x00\x00\x00\x00\x00", id="header-cut"),
    ],
)
def test_por(user_data: bytes) -> None:
    targets.por(user_data)


# --- trace JSONL (trace/events.py, trace/reader.py) ---------------------------------------------------------------

GOOD = {"t": 1.0, "src": "cp", "dst": "uicc", "layer": "apdu", "kind": "apdu.command", "summary": "x"}


def _line(**changes: object) -> str:
    return json.dumps({**GOOD, **changes})


TRACE_LINES = [
    pytest.param("[" * 100_000 + "]" * 100_000, id="deep-nesting"),
    pytest.param('{"t": ' + "[" * 50_000 + "]" * 50_000 + "}", id="deep-nesting-in-value"),
    pytest.param(_line(step=5), id="numeric-step"),
    pytest.param(_line(session=[1]), id="list-session"),
    pytest.param(_line(t=float("nan")), id="nan-t"),
    pytest.param(_line(t=float("inf")), id="infinite-t"),
    pytest.param(_line(t=10**400), id="huge-int-t"),
    pytest.param(_line(hex="0" * 2_000_001), id="huge-odd-hex"),
    pytest.param(_line(hex="AB" * 1_000_000), id="huge-hex"),
    pytest.param(_line(hex="1" * 5000 + "G"), id="bad-hex"),
    pytest.param(_line(fields=[1, 2]), id="list-fields"),
    pytest.param(_line(error="yes"), id="string-error"),
    pytest.param(_line(kind=7), id="numeric-kind"),
    pytest.param(_line(src=None), id="null-src"),
    pytest.param(
        _line(fields={"x": 1}).replace('"x": 1', '"x": 1e999'),
        id="infinite-number-in-fields",
    ),
]


@pytest.mark.parametrize("line", TRACE_LINES)
def test_trace_line(line: str) -> None:
    with bounded(10):
        targets.trace_line(line)


TRACE_FILES = [
    pytest.param(bytes(range(256)) * 4, id="binary-junk"),
    pytest.param(_line().encode() + b"\n\xff\xfe" + _line().encode() + b"\n", id="invalid-utf8"),
    pytest.param(b"\xc3\x28\n" + _line(summary="\u00e9").encode(), id="bad-continuation"),
    pytest.param(("[" * 100_000).encode() + b"\n", id="deep-nesting"),
]


@pytest.mark.parametrize("data", TRACE_FILES)
def test_trace_file(data: bytes) -> None:
    with bounded(10):
        targets.trace_file(data)
