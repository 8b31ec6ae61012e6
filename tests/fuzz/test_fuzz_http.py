"""Fuzzing HTTP/1.1 as the admin protocol reads it over h11: the card's client (uicc/admin_http.py) and OTA agent
(uicc/ota_agent.py) on a server's bytes, the OTA server's connection (ota/http_connection.py) on a client's: a
refusal or HttpFailure with a 4xx/5xx status, or messages; never another exception."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import targets_http
from tests.fuzz._settings import bounded, fuzz_settings

numbers = st.one_of(
    st.integers(0, 40).map(lambda n: str(n).encode()),
    st.integers(0, 0x40).map(lambda n: f"{n:x}".encode()),
    st.text(alphabet="0123456789abcdefABCDEF+ \t;xX_", max_size=5).map(str.encode),
    st.sampled_from([b"", b" ", b"99999999999999999999", b"0x5", b"5;name=value"]),
)
numbers = st.one_of(numbers, st.sampled_from([b"-6", b"\xb2", b"\xb9\xb2", b"-0", b"1_0", b"\xef\xbc\x91"]))

header_lines = st.one_of(
    numbers.map(lambda n: b"Content-Length: " + n + b"\r\n"),
    st.sampled_from(
        [
            b"Transfer-Encoding: chunked\r\n",
            b"Host: ota\r\n",
            b"X-Admin-Protocol: globalplatform-remote-admin/1.0\r\n",
            b"Content-Type: application/vnd.globalplatform.card-content-mgt-response;version=1.0\r\n",
            b" folded\r\n",
            b"bad header\r\n",
            b":\r\n",
        ]
    ),
    st.binary(max_size=12).map(lambda b: b + b"\r\n"),
)
chunks = st.lists(
    st.tuples(numbers, st.binary(max_size=20)).map(lambda c: c[0] + b"\r\n" + c[1] + b"\r\n"), max_size=4
).map(lambda parts: b"".join(parts) + b"0\r\n\r\n")
pieces = st.tuples(
    st.sampled_from(
        [
            b"POST /server/adminagent HTTP/1.1\r\n",
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 204 No Content\r\n",
            b"HTTP/2 200\r\n",
            b"GET /\r\n",
            b"HTTP/1.1 abc OK\r\n",
            b"",
        ]
    ),
    st.lists(header_lines, max_size=5).map(b"".join),
    st.sampled_from([b"\r\n", b"", b"\n"]),
    st.one_of(chunks, st.binary(max_size=30)),
    st.binary(max_size=8),
).map(b"".join)


@st.composite
def reads(draw: st.DrawFn) -> list[bytes]:
    data = draw(pieces)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=5))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


@fuzz_settings(100)
@given(reads())
def test_admin_client(chunks: list[bytes]) -> None:
    with bounded(5):
        targets_http.admin_client(chunks)


@fuzz_settings(100)
@given(reads())
def test_server_connection(chunks: list[bytes]) -> None:
    with bounded(5):
        targets_http.server_connection(chunks)


script = st.lists(
    st.one_of(
        st.sampled_from(
            [
                bytes.fromhex("00a40004023f00"),
                bytes.fromhex("80e60c00"),
                bytes.fromhex("80f24000024f00"),
                b"\x00",
            ]
        ),
        st.binary(max_size=12),
    ),
    max_size=4,
).map(
    lambda apdus: (
        b"\xaa"
        + bytes((sum(len(a) + 2 for a in apdus) & 0x7F,))
        + b"".join(b"\x22" + bytes((len(a),)) + a for a in apdus)
    )
)


@st.composite
def admin_answers(draw: st.DrawFn) -> list[bytes]:
    """A server's answers to the card's POSTs: well-formed ones carrying fuzzed scripts, or fuzzed framing."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        body = draw(st.one_of(script, st.binary(max_size=30)))
        status = draw(st.sampled_from([200, 200, 204, 404, 500]))
        answer = (
            f"HTTP/1.1 {status} X\r\nX-Admin-Protocol: globalplatform-remote-admin/1.0\r\n"
            "Content-Type: application/vnd.globalplatform.card-content-mgt;version=1.0\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        out.append(draw(st.one_of(st.just(answer), pieces)))
    return out


@fuzz_settings(50)
@given(admin_answers())
def test_ota_agent(answers: list[bytes]) -> None:
    with bounded(5):
        targets_http.ota_agent(answers)
