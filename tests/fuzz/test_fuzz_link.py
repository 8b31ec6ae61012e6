"""Fuzzing the link layer: 27.010 frames (link/cmux_frame.py) and V.250 command lines (link/at_syntax.py).

Inputs mix random bytes with pieces of well-formed frames and command lines, so the parsers get past their first
check; reads are split at random points as a line delivers them.
"""

from __future__ import annotations

import trio
from hypothesis import given
from hypothesis import strategies as st

from bipsim.link.cmux_frame import FLAG, ControlMessage, ControlType, FrameType, encode_frame, msc_value
from tests.fuzz import targets
from tests.fuzz._settings import bounded, fuzz_settings


@st.composite
def frame_bytes(draw: st.DrawFn) -> bytes:
    """A valid frame, sometimes damaged (a flipped byte, cut short, a wrong length)."""
    frame = encode_frame(
        draw(st.integers(0, 63)),
        draw(st.sampled_from(list(FrameType))),
        draw(st.booleans()),
        draw(st.booleans()),
        draw(st.binary(max_size=300)),
    )
    damage = draw(st.sampled_from(["none", "none", "flip", "cut", "junk"]))
    if damage == "flip":
        at = draw(st.integers(0, len(frame) - 1))
        frame = frame[:at] + bytes((frame[at] ^ draw(st.integers(1, 255)),)) + frame[at + 1 :]
    elif damage == "cut":
        frame = frame[: draw(st.integers(0, len(frame) - 1))]
    elif damage == "junk":
        frame += draw(st.binary(min_size=1, max_size=8))
    return frame


line_pieces = st.lists(
    st.one_of(frame_bytes(), st.binary(max_size=40), st.just(bytes((FLAG,))), st.just(bytes((FLAG, FLAG)))),
    max_size=12,
).map(b"".join)


@st.composite
def reads(draw: st.DrawFn, stream: st.SearchStrategy[bytes]) -> list[bytes]:
    """`stream` cut into reads at random points."""
    data = draw(stream)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=8))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


@fuzz_settings(150)
@given(reads(line_pieces), st.booleans())
def test_cmux_parser(chunks: list[bytes], pause: bool) -> None:
    with bounded(5):
        targets.cmux_frames(chunks, pause_on_control=pause)


@fuzz_settings(50)
@given(reads(line_pieces), st.integers(0, 300))
def test_cmux_parser_small_n1(chunks: list[bytes], max_info: int) -> None:
    with bounded(5):
        targets.cmux_frames(chunks, max_info=max_info)


at_pieces = st.lists(
    st.one_of(
        st.sampled_from(
            [b"AT", b"at", b"A/", b"\r", b"\n", b"\x08", b"\x00", b";", b"+", b"%", b"=", b"?", b"=?", b'"']
        ),
        st.sampled_from([b"+CMEE=2", b"S3=", b"S5?", b"E0", b"&F", b"%GETNET=1,3", b'"\\2', b"\\", b","]),
        st.text(alphabet='ATE0123456789SQVZ&+%=?;," \\\xb2\xb3\xb9', max_size=20).map(
            lambda s: s.encode("latin-1")
        ),
        st.binary(max_size=20),
    ),
    max_size=20,
).map(b"".join)


@fuzz_settings(120)
@given(reads(at_pieces))
def test_at_command_lines(chunks: list[bytes]) -> None:
    with bounded(5):
        targets.at_command_lines(chunks)


command_lines = st.text(alphabet='ATEQVZSF&+%=?;," \\0123456789\xb2\xb3\xb9\x08', max_size=16).map(
    lambda s: ("AT" + s + "\r").encode("latin-1")
)


@fuzz_settings(100)
@given(reads(st.lists(st.one_of(command_lines, at_pieces), max_size=6).map(b"".join)))
def test_at_command_lines_after_prefix(chunks: list[bytes]) -> None:
    with bounded(5):
        targets.at_command_lines(chunks)


@fuzz_settings(30)
@given(reads(st.lists(st.one_of(command_lines, at_pieces), max_size=6).map(b"".join)))
def test_at_server(chunks: list[bytes]) -> None:
    trio.run(targets.at_server_session, chunks)


response_pieces = st.lists(
    st.one_of(
        st.sampled_from(
            [
                b"\r\n",
                b"\r",
                b"\n",
                b"OK",
                b"ERROR",
                b"+CME ERROR: ",
                b"+CME ERROR: 50",
                b"0\r",
                b"4\r",
                b"%NETPAR: ",
                b'1,"apn","user","pw"',
                b'%WEBEVT: 1,"closed"',
                b"AT%GETNET=1,3",
                b'"\\',
            ]
        ),
        st.binary(max_size=20),
    ),
    max_size=12,
).map(b"".join)


@fuzz_settings(30)
@given(reads(response_pieces))
def test_at_chat(chunks: list[bytes]) -> None:
    trio.run(targets.at_chat_session, chunks)


control_info = st.one_of(
    st.builds(
        lambda kind, command, value: ControlMessage(kind, command, value).encode(),
        st.one_of(st.sampled_from([int(t) for t in ControlType]), st.integers(0, 63).map(lambda n: n << 2)),
        st.booleans(),
        st.one_of(
            st.binary(max_size=10),
            st.builds(msc_value, st.integers(0, 63), st.integers(0, 255)),
            st.binary(min_size=8, max_size=8),  # PN's eight octets
        ),
    ),
    st.binary(max_size=12),
)


@st.composite
def mux_frames(draw: st.DrawFn) -> bytes:
    """Frames a peer multiplexer sends: establishment, control messages on DLC 0, data on DLCs 1..3."""
    dlci = draw(st.integers(0, 4))
    ftype = draw(st.sampled_from(list(FrameType)))
    info = (
        draw(control_info)
        if dlci == 0 and ftype in (FrameType.UIH, FrameType.UI)
        else draw(st.binary(max_size=80))
    )
    return encode_frame(dlci, ftype, draw(st.booleans()), draw(st.booleans()), info)


peer_bytes = st.lists(
    st.one_of(mux_frames(), mux_frames(), frame_bytes(), st.binary(max_size=12)), max_size=10
).map(b"".join)


@fuzz_settings(100)
@given(
    reads(peer_bytes),
    st.booleans(),
    st.lists(st.integers(0, 255), max_size=6),
    st.lists(st.integers(0, 255), max_size=6),
)
def test_cmux_connection(chunks: list[bytes], initiator: bool, local: list[int], timers: list[int]) -> None:
    with bounded(5):
        targets.cmux_connection(chunks, initiator=initiator, local=local, timers=timers)


@fuzz_settings(100)
@given(reads(response_pieces), st.integers(1, 64))
def test_response_lines(chunks: list[bytes], max_line: int) -> None:
    with bounded(5):
        targets.response_lines(chunks, max_line=max_line)


@fuzz_settings(100)
@given(reads(response_pieces), st.lists(st.integers(0, 11), max_size=12))
def test_at_chat_core(chunks: list[bytes], steps: list[int]) -> None:
    with bounded(5):
        targets.at_chat_core(chunks, steps)


proxy_lines = st.builds(
    lambda name, args: f"AT{name}{args}\r".encode("latin-1"),
    st.sampled_from(["%GETNET", "%WEBOPCH", "%WEBCLCH", "%getnet", "%NETPAR", "%WEBEVT"]),
    st.one_of(
        st.sampled_from(
            ["", "?", "=?", "=1,3", '=1,3,"internet"', '=1,"TCP","127.0.0.1",4443', "=1", "=0", "=8"]
        ),
        st.lists(
            st.one_of(
                st.integers(-5, 70000).map(str),
                st.text(alphabet='abc"\\0123456789.,', max_size=8).map(lambda s: f'"{s}"'),
                st.text(alphabet="0123456789\xb2 -", max_size=4),
                st.just(""),
            ),
            max_size=5,
        ).map(lambda args: "=" + ",".join(args)),
    ),
)


@fuzz_settings(40)
@given(
    reads(st.lists(st.one_of(proxy_lines, proxy_lines, at_pieces), max_size=5).map(b"".join)), st.booleans()
)
def test_ap_proxy(chunks: list[bytes], cellular: bool) -> None:
    trio.run(lambda: targets.ap_proxy_session(chunks, cellular=cellular))
