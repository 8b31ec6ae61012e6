"""Fuzzing HTTP/1.1 framing as the card's admin client and the OTA server read it (uicc/http11.py MessageParser):
HttpError with a 4xx/5xx status or messages, never another exception, and the buffer holds at most one message."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import targets
from tests.fuzz._settings import bounded, fuzz_settings

# Known crashers of uicc/http11.py (tests/fuzz/test_corpus.py, owned by the OTA engineer) are left out of the
# generated values until they are fixed: a negative chunk size and non-ASCII digits in Content-Length.
OPEN_CRASHERS = True

numbers = st.one_of(
    st.integers(0, 40).map(lambda n: str(n).encode()),
    st.integers(0, 0x40).map(lambda n: f"{n:x}".encode()),
    st.text(alphabet="0123456789abcdefABCDEF+ \t;xX_", max_size=5).map(str.encode),
    st.sampled_from([b"", b" ", b"99999999999999999999", b"0x5", b"5;name=value"]),
)
if not OPEN_CRASHERS:
    numbers = st.one_of(numbers, st.sampled_from([b"-6", b"\xb2", b"\xb9\xb2", b"-0"]))

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


@fuzz_settings(200)
@given(reads(), st.booleans())
def test_http_messages(chunks: list[bytes], requests: bool) -> None:
    with bounded(5):
        targets.http_messages(chunks, requests=requests)
