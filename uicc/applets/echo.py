"""The echo applet: the behaviour of the Android CTS OMAPI test applet (CtsAndroidOmapiTestApplet, the applet the
Android "CTS Test for Secure Element" page asks a card to carry), sans-IO.

Installed by the profile name `cts-echo` under two AIDs: A000000476416E64726F696443545331 (SELECT answers no
data) and A000000476416E64726F696443545332 (SELECT answers a 256-byte BER-TLV `1F00 81FC ...` ending in FF). Its
instructions, whatever the class:

| INS | answer |
|---|---|
| 06, 0A | no data, 90 00 |
| 08, 0C | 256 bytes 00 01 .. FF, 90 00 |
| F3 | P1 = 1..16 picks a warning status word (62 00, 62 81, ... 63 81), other P1 6A86; P2 = 08 adds 3 bytes of |
|    | data, P2 = 0C the command echoed with 01 as its first byte (01 F3 P1 0C 01 AA 00) |
| C2, C4, C6, C8 | P1P2 bytes of the 00..FF pattern, the last one FF (segmented by the card: 61 xx and GET RESPONSE) |
| CF | as C6, but Le = FF is answered 6C FF |
| F4 | one byte 00 |
| others | 6D 00 |

It keeps nothing: every answer is a function of the command.
"""

from __future__ import annotations

from bipsim.uicc.applets import SW_OK, Applet, AppletError, Command, register

ECHO_AID = bytes.fromhex("A000000476416E64726F696443545331")
ECHO_LONG_SELECT_AID = bytes.fromhex("A000000476416E64726F696443545332")

SW_INCORRECT_P1P2 = 0x6A86
SW_CONDITIONS_NOT_SATISFIED = 0x6985

# the warning status words INS F3 answers for P1 = 1..16 (the CTS applet's table)
WARNINGS = (
    0x6200, 0x6281, 0x6282, 0x6283, 0x6285, 0x62F1, 0x62F2, 0x63F1,
    0x63F2, 0x63C2, 0x6202, 0x6280, 0x6284, 0x6286, 0x6300, 0x6381,
)  # fmt: skip
SELECT_RESPONSE_LENGTH = 252


def pattern(length: int) -> bytes:
    """`length` bytes counting 00, 01, .. FF and around again, the last one FF (the CTS checks that byte)."""
    if length <= 0:
        return b""
    out = bytearray(i & 0xFF for i in range(length))
    out[-1] = 0xFF
    return bytes(out)


def long_select_response(length: int = SELECT_RESPONSE_LENGTH) -> bytes:
    """A BER-TLV with the two-byte tag 1F 00 whose value is the counting pattern, its last byte FF."""
    head = b"\x1f\x00" + (bytes((length,)) if length < 0x80 else b"\x81" + bytes((length,)))
    value = bytearray(i & 0xFF for i in range(length))
    value[-1] = 0xFF
    return head + bytes(value)


class EchoApplet(Applet):
    """The CTS test applet under one AID."""

    name = "cts_echo"

    def __init__(self, aid: bytes = ECHO_AID) -> None:
        super().__init__(aid)

    def select(self, p2: int, aid: bytes, channel: int) -> tuple[bytes, int]:
        if self.aid == ECHO_LONG_SELECT_AID:
            return long_select_response(), SW_OK
        return b"", SW_OK

    def process(self, command: Command) -> tuple[bytes, int]:
        ins, p1, p2 = command.ins, command.p1, command.p2
        if ins in (0x06, 0x0A):
            return b"", SW_OK
        if ins in (0x08, 0x0C):
            return pattern(256), SW_OK
        if ins == 0xF3:
            if not 1 <= p1 <= 16:
                raise AppletError(SW_INCORRECT_P1P2)
            sw = WARNINGS[p1 - 1]
            if p2 == 0x08:
                return pattern(3), sw
            if p2 == 0x0C:
                return bytes((0x01, 0xF3, p1, 0x0C, 0x01, 0xAA, 0x00)), sw
            return b"", sw
        if ins in (0xC2, 0xC4, 0xC6, 0xC8, 0xCF):
            if ins == 0xCF and command.le == 0xFF:
                return b"", 0x6CFF
            return pattern((p1 << 8) | p2), SW_OK
        if ins == 0xF4:
            return b"\x00", SW_OK
        if ins == 0xC0:  # GET RESPONSE with nothing waiting (the card answers the one that has)
            raise AppletError(SW_CONDITIONS_NOT_SATISFIED)
        raise AppletError(0x6D00)


@register("cts-echo")
def _cts_echo() -> list[Applet]:
    return [EchoApplet(ECHO_AID), EchoApplet(ECHO_LONG_SELECT_AID)]
