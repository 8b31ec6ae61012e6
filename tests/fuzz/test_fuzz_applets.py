"""Fuzzing the card's applet dispatch (uicc/applets/, the routing in uicc/card.py) on the built-in `omapi` profiles:
sequences of APDUs that open and close channels, select the ARA-M, the echo applet, files and partial AIDs, and send
GET DATA, GET RESPONSE and random instructions on every channel and class.

Every APDU gets a status word and never an exception inside the card (`faults` stays empty); the ARA-M's answer
to GET DATA all stays the same whatever came before, but a STORE DATA it took; the card keeps at most its
profile's number of channels.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bipsim.uicc.applets.ara_m import describe_response
from bipsim.uicc.card import SimCard
from bipsim.uicc.profile import load_profile
from tests.fuzz._settings import bounded, fuzz_settings

AIDS = [
    bytes.fromhex("A00000015141434C00"),
    bytes.fromhex("A000000476416E64726F696443545331"),
    bytes.fromhex("A000000476416E64726F696443545332"),
    bytes.fromhex("A000000476416E64726F6964435453"),
    bytes.fromhex("A0000000871002FF33FF018900000100"),
    bytes.fromhex("A0"),
]
PROFILES = ["omapi", "omapi-empty", "omapi-malformed", "omapi-no-rules", "omapi-arf"]


@st.composite
def applet_apdu(draw: st.DrawFn) -> bytes:
    channel = draw(st.integers(0, 5))
    base = draw(st.sampled_from([0x00, 0x80, 0x90, 0xA0, 0x40, 0xC0, 0x20, 0xFF]))
    cla = (base | channel) if base < 0x40 or base in (0x80, 0x90, 0xA0) else base
    ins = draw(
        st.sampled_from([0xA4, 0xCA, 0xC0, 0x70, 0x06, 0x08, 0x0C, 0xF3, 0xC2, 0xCF, 0xF4, 0xF2, 0x12, 0xE2])
    )
    p1, p2 = draw(st.integers(0, 255)), draw(st.integers(0, 255))
    if ins == 0xA4:
        p1 = draw(st.sampled_from([0x04, 0x04, 0x00, p1]))
    if ins == 0xCA:
        p1, p2 = draw(st.sampled_from([(0xFF, 0x40), (0xFF, 0x60), (0xFF, 0x50), (0xDF, 0x20), (p1, p2)]))
    if ins in (0xC2, 0xCF):
        p1 = draw(st.integers(0, 0x10))
    data = draw(st.one_of(st.sampled_from(AIDS), st.binary(max_size=20)))
    shape = draw(st.sampled_from(["case1", "case2", "case3", "case4", "raw"]))
    header = bytes((cla, ins, p1, p2))
    if shape == "case1":
        return header
    if shape == "case2":
        return header + bytes((draw(st.integers(0, 255)),))
    if shape == "case3":
        return header + bytes((len(data),)) + data
    if shape == "case4":
        return header + bytes((len(data),)) + data + bytes((draw(st.integers(0, 255)),))
    return draw(st.binary(max_size=10))


def ara_m_all(card: SimCard) -> bytes:
    """GET DATA all on a fresh channel (closed again after), or the status word of the first refusal."""
    opened = card.process(bytes.fromhex("0070000001"))
    if opened[-2:] != b"\x90\x00":
        return opened
    channel = opened[0]
    try:
        selected = card.process(bytes((channel,)) + bytes.fromhex("A4040009A00000015141434C00"))
        if selected[-2:] != b"\x90\x00":
            return selected
        return card.process(bytes((0x80 | channel,)) + bytes.fromhex("CAFF4000"))
    finally:
        card.process(bytes.fromhex("00708000") + bytes((channel,)))


@fuzz_settings(40)
@given(st.sampled_from(PROFILES), st.lists(applet_apdu(), max_size=30))
def test_applet_dispatch(profile: str, apdus: list[bytes]) -> None:
    with bounded(10):
        card = SimCard(load_profile(profile))
        before = ara_m_all(card)
        stored = False
        for command in apdus:
            answer = card.process(command)
            stored = stored or (command[1:2] == b"\xe2" and answer[-2:] == b"\x90\x00")
            assert isinstance(answer, bytes) and len(answer) >= 2, command.hex()
            assert answer[-2] in (0x61, 0x62, 0x63, 0x67, 0x68, 0x69, 0x6A, 0x6B, 0x6C, 0x6D, 0x6E, 0x90), (
                command.hex(),
                answer.hex(),
            )
            assert len(answer) <= 258, command.hex()  # one short response at most
        assert card.faults == []
        channels = [
            n
            for n in range(1, 20)
            if card.process(bytes((n if n < 4 else 0x40 | (n - 4),)) + b"\xf2\x00\x0c")[-2:] != b"\x68\x81"
        ]
        assert len(channels) <= card.profile.logical_channels
        card.reset()
        if not stored:  # a STORE DATA the ARA-M took changes its rules, as it should
            assert ara_m_all(card) == before


@fuzz_settings(100)
@given(
    st.sampled_from([b"\xff\x40", b"\xff\x50", b"\xdf\x20"]),
    st.one_of(st.binary(max_size=60), st.builds(lambda n: bytes((0x80 | n,)), st.integers(0, 127))),
)
def test_decode_of_access_rule_answers(tag: bytes, rest: bytes) -> None:
    """`bipsim decode`'s reading of an ARA-M answer: a dict for any bytes behind the tag, never an exception."""
    with bounded(5):
        described = describe_response(tag + rest)
        assert described is None or described["tag"] == tag.hex().upper()
