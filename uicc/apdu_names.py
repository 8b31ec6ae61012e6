"""Command and response APDUs as traces show them (ETSI TS 102 221 sections 10.1 and 10.2, ISO/IEC 7816-4 section 5):
the header of a C-APDU (CLA, INS, P1, P2, Lc/Le) and the status word of an R-APDU, with their names.

Instruction names are those of TS 102 221 table 10.5 and TS 102 222 table 1 as pySim lists them
(pySim/ts_102_221.py `ts_102_22x_cmdset`), plus the GlobalPlatform commands the OTA session carries. Status word
names are TS 102 221 section 10.2.1 as pySim's UICC profile lists them (pySim/ts_102_221.py, `sw`), and ISO/IEC 7816-4
section 5.1.3 for the transport words '61XX' and '6CXX'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bipsim.uicc.tlv import TlvError

# TS 102 221 table 10.5 "Coding of Instruction Byte", TS 102 222 table 1
INSTRUCTIONS: dict[int, str] = {
    0xA4: "SELECT",
    0xF2: "STATUS",
    0xB0: "READ BINARY",
    0xD6: "UPDATE BINARY",
    0xB2: "READ RECORD",
    0xDC: "UPDATE RECORD",
    0xA2: "SEARCH RECORD",
    0x32: "INCREASE",
    0xCB: "RETRIEVE DATA",
    0xDB: "SET DATA",
    0x20: "VERIFY PIN",
    0x24: "CHANGE PIN",
    0x26: "DISABLE PIN",
    0x28: "ENABLE PIN",
    0x2C: "UNBLOCK PIN",
    0x04: "DEACTIVATE FILE",
    0x44: "ACTIVATE FILE",
    0x88: "AUTHENTICATE",
    0x89: "AUTHENTICATE",
    0x84: "GET CHALLENGE",
    0xAA: "TERMINAL CAPABILITY",
    0x10: "TERMINAL PROFILE",
    0xC2: "ENVELOPE",
    0x12: "FETCH",
    0x14: "TERMINAL RESPONSE",
    0x70: "MANAGE CHANNEL",
    0x73: "MANAGE SECURE CHANNEL",
    0x75: "TRANSACT DATA",
    0x76: "SUSPEND UICC",
    0x78: "GET IDENTITY",
    0x7A: "EXCHANGE CAPABILITIES",
    0xC0: "GET RESPONSE",
    0xE0: "CREATE FILE",
    0xE4: "DELETE FILE",
    0xE6: "TERMINATE DF",
    0xE8: "TERMINATE EF",
    0xFE: "TERMINATE CARD USAGE",
    0xD4: "RESIZE FILE",
    # ISO/IEC 7816-4 and GlobalPlatform Card Specification 11.1 (the OTA admin session's commands)
    0xCA: "GET DATA",
    0xE2: "STORE DATA",
    0xD8: "PUT KEY",
    0xF0: "SET STATUS",
    0xEC: "PUSH",
}
# GlobalPlatform Card Specification 11.1.2: the same INS under a proprietary class (TS 102 222 uses CLA 0X/4X for
# TERMINATE DF and DELETE FILE; STATUS and GET STATUS share 80 F2)
_GP_INSTRUCTIONS = {0xE6: "INSTALL", 0xE4: "DELETE", 0xF2: "STATUS / GET STATUS"}

# GET DATA (INS CA) tags of the ARA-M, GlobalPlatform Secure Element Access Control (GPD_SPE_013) section 5.1
GET_DATA_TAGS: dict[int, str] = {
    0xFF40: "all access rules (Response-ALL-REF-AR-DO)",
    0xFF50: "access rule of one REF-DO (Response-AR-DO)",
    0xFF60: "next part of the access rules",
    0xDF20: "refresh tag of the access rules",
}

# Applications a SELECT by DF name (P1 04) names in bipsim's traces
KNOWN_AIDS: dict[str, str] = {
    "A0000000871002FF33FF018900000100": "USIM (3GPP TS 31.102)",
    "A00000015141434C00": "ARA-M (GlobalPlatform SE Access Control)",
    "A000000476416E64726F696443545331": "Android CTS OMAPI test applet",
    "A000000476416E64726F696443545332": "Android CTS OMAPI test applet (long select response)",
}

# The CAT instructions of TS 102 221 section 10.1.2, class '80'
CAT_INSTRUCTIONS = {0x10: "TERMINAL PROFILE", 0x12: "FETCH", 0x14: "TERMINAL RESPONSE", 0xC2: "ENVELOPE"}

# TS 102 221 section 10.2.1 (pySim's CardProfileUICC `sw`, group then meaning), exact words
STATUS_WORDS: dict[int, tuple[str, str]] = {
    0x9000: ("Normal", "Normal ending of the command"),
    0x9300: (
        "Postponed processing",
        "SIM Application Toolkit is busy. Command cannot be executed at present, further normal commands are "
        "allowed",
    ),
    0x6200: ("Warnings", "No information given, state of non-volatile memory unchanged"),
    0x6281: ("Warnings", "Part of returned data may be corrupted"),
    0x6282: ("Warnings", "End of file/record reached before reading Le bytes or unsuccessful search"),
    0x6283: ("Warnings", "Selected file invalidated/disabled; needs to be activated before use"),
    0x6284: ("Warnings", "Selected file in termination state"),
    0x62F1: ("Warnings", "More data available"),
    0x62F2: ("Warnings", "More data available and proactive command pending"),
    0x62F3: ("Warnings", "Response data available"),
    0x63F1: ("Warnings", "More data expected"),
    0x63F2: ("Warnings", "More data expected and proactive command pending"),
    0x6400: ("Execution errors", "No information given, state of non-volatile memory unchanged"),
    0x6500: ("Execution errors", "No information given, state of non-volatile memory changed"),
    0x6581: ("Execution errors", "Memory problem"),
    0x6700: ("Checking errors", "Wrong length"),
    0x6B00: ("Checking errors", "Wrong parameter(s) P1-P2"),
    0x6D00: ("Checking errors", "Instruction code not supported or invalid"),
    0x6E00: ("Checking errors", "Class not supported"),
    0x6F00: ("Checking errors", "Technical problem, no precise diagnosis"),
    0x6800: ("Functions in CLA not supported", "No information given"),
    0x6881: ("Functions in CLA not supported", "Logical channel not supported"),
    0x6882: ("Functions in CLA not supported", "Secure messaging not supported"),
    0x6900: ("Command not allowed", "No information given"),
    0x6981: ("Command not allowed", "Command incompatible with file structure"),
    0x6982: ("Command not allowed", "Security status not satisfied"),
    0x6983: ("Command not allowed", "Authentication/PIN method blocked"),
    0x6984: ("Command not allowed", "Referenced data invalidated"),
    0x6985: ("Command not allowed", "Conditions of use not satisfied"),
    0x6986: ("Command not allowed", "Command not allowed (no EF selected)"),
    0x6989: ("Command not allowed", "Command not allowed - secure channel - security not satisfied"),
    0x6A80: ("Wrong parameters", "Incorrect parameters in the data field"),
    0x6A81: ("Wrong parameters", "Function not supported"),
    0x6A82: ("Wrong parameters", "File not found"),
    0x6A83: ("Wrong parameters", "Record not found"),
    0x6A84: ("Wrong parameters", "Not enough memory space"),
    0x6A86: ("Wrong parameters", "Incorrect parameters P1 to P2"),
    0x6A87: ("Wrong parameters", "Lc inconsistent with P1 to P2"),
    0x6A88: ("Wrong parameters", "Referenced data not found"),
    0x9850: ("Application errors", "INCREASE cannot be performed, max value reached"),
    0x9862: ("Application errors", "Authentication error, application specific"),
    0x9863: ("Application errors", "Security session or association expired"),
    0x9864: ("Application errors", "Minimum UICC suspension time is too long"),
}

# SW1 values whose SW2 is a number (a length, a count): the pySim 'xx' entries and ISO/IEC 7816-4 5.1.3
STATUS_WORD_FAMILIES: dict[int, tuple[str, str]] = {
    0x91: (
        "Normal",
        "Normal ending of the command, with extra information from the proactive UICC containing a command for "
        "the terminal",
    ),
    0x92: (
        "Normal",
        "Normal ending of the command, with extra information concerning an ongoing data transfer session",
    ),
    0x61: ("Normal", "SW2 indicates the number of response bytes still available"),
    0x6C: ("Checking errors", "Wrong length Le: SW2 indicates the exact length"),
    0x67: ("Checking errors", "The interpretation of this status word is command dependent"),
    0x6F: ("Checking errors", "The interpretation of this status word is command dependent"),
}

# The first byte of a status word (ISO/IEC 7816-4 5.1.3: '6X' except '60', or '9X')
_SW1 = frozenset(range(0x61, 0x70)) | frozenset(range(0x90, 0xA0))


def is_status_word(sw1: int, sw2: int) -> bool:
    """Whether two bytes can be a status word: SW1 '61'..'6F' or '90'..'9F'."""
    return sw1 in _SW1


@dataclass(frozen=True)
class StatusWord:
    """SW1 SW2 and what TS 102 221 section 10.2 calls them."""

    sw1: int
    sw2: int

    @property
    def value(self) -> int:
        return self.sw1 << 8 | self.sw2

    @property
    def group(self) -> str:
        return self._entry()[0]

    @property
    def name(self) -> str:
        return self._entry()[1]

    def _entry(self) -> tuple[str, str]:
        exact = STATUS_WORDS.get(self.value)
        if exact is not None:
            return exact
        if self.sw1 == 0x63 and self.sw2 & 0xF0 == 0xC0:
            return (
                "Warnings",
                f"Command successful but after using an internal update retry routine {self.sw2 & 0x0F} times",
            )
        family = STATUS_WORD_FAMILIES.get(self.sw1)
        if family is not None:
            return family
        return ("Unknown", f"status word {self.value:04X} not defined by TS 102 221")

    def describe(self) -> str:
        """e.g. "91 0F: Normal ending of the command, ... (15 bytes)"."""
        extra = f" (SW2 = {self.sw2})" if self.sw1 in (0x91, 0x92, 0x61, 0x6C) else ""
        return f"{self.value:04X}: {self.name}{extra}"

    def to_json(self) -> dict[str, Any]:
        return {
            "sw": f"{self.value:04X}",
            "sw1": self.sw1,
            "sw2": self.sw2,
            "group": self.group,
            "name": self.name,
        }


def cla_name(cla: int) -> str:
    """The class byte (TS 102 221 section 10.1.1, table 10.3)."""
    if cla == 0xA0:
        return "GSM (3GPP TS 51.011)"
    if cla & 0xF0 in (0x00, 0x40, 0x60):
        return f"ISO/IEC 7816-4 interindustry, logical channel {_channel(cla)}"
    if cla & 0xF0 in (0x80, 0xC0, 0xE0):
        return f"TS 102 221 / GlobalPlatform proprietary, logical channel {_channel(cla)}"
    return f"class 0x{cla:02X}"


def _channel(cla: int) -> int:
    if cla & 0x40:  # further interindustry classes: channels 4..19 in bits 4..1
        return 4 + (cla & 0x0F)
    return cla & 0x03


def is_known_class(cla: int) -> bool:
    return cla == 0xA0 or cla & 0xF0 in (0x00, 0x40, 0x60, 0x80, 0xC0, 0xE0)


def instruction_name(cla: int, ins: int) -> str:
    """INS named by TS 102 221 table 10.5 (and GlobalPlatform for CLA 8x commands it defines)."""
    if cla & 0xF0 in (0x80, 0xC0, 0xE0) and ins in _GP_INSTRUCTIONS:
        return _GP_INSTRUCTIONS[ins]
    return INSTRUCTIONS.get(ins, f"instruction 0x{ins:02X}")


@dataclass(frozen=True)
class CommandApdu:
    """A C-APDU split per ISO/IEC 7816-4 section 5.1 (short lengths): case 1 (header), 2 (Le), 3 (Lc data),
    4 (Lc data Le). In a T=0 trace, the fifth byte P3 of a case 2 command is Le."""

    cla: int
    ins: int
    p1: int
    p2: int
    lc: int | None
    data: bytes
    le: int | None

    @property
    def name(self) -> str:
        return instruction_name(self.cla, self.ins)

    def to_json(self) -> dict[str, Any]:
        return {
            "cla": self.cla,
            "cla_name": cla_name(self.cla),
            "ins": self.ins,
            "ins_name": self.name,
            "p1": self.p1,
            "p2": self.p2,
            "lc": self.lc,
            "le": self.le,
            "data_hex": self.data.hex().upper(),
        }

    def header_line(self) -> str:
        parts = [
            f"CLA 0x{self.cla:02X} ({cla_name(self.cla)})",
            f"INS 0x{self.ins:02X} ({self.name})",
            f"P1 0x{self.p1:02X}",
            f"P2 0x{self.p2:02X}",
        ]
        if self.lc is not None:
            parts.append(f"Lc {self.lc}")
        if self.le is not None:
            parts.append(f"Le {self.le}")
        return ", ".join(parts)


# Instructions that send data to the card (case 3 or 4): five bytes of them are a header whose Lc lacks its data. A
# five-byte C-APDU of any other instruction is case 2, P3 being Le (FETCH, GET RESPONSE, READ BINARY, STATUS,
# MANAGE CHANNEL open...)
_INCOMING = frozenset(
    {0x10, 0x14, 0xC2, 0xA4, 0xD6, 0xDC, 0xA2, 0x32, 0xDB, 0x20, 0x24, 0x26, 0x28, 0x2C, 0x88, 0x89, 0xAA,
     0xE0, 0xE2, 0xE4, 0xE6, 0xD8, 0xF0, 0xEC}
)  # fmt: skip


def parse_command(data: bytes) -> CommandApdu:
    """Splits a C-APDU; raises TlvError with the offset of the length that does not fit."""
    if len(data) < 4:
        raise TlvError(len(data), "an APDU needs at least CLA INS P1 P2")
    cla, ins, p1, p2 = data[:4]
    if len(data) == 4:
        return CommandApdu(cla, ins, p1, p2, None, b"", None)
    p3 = data[4]
    if len(data) == 5:
        if ins not in _INCOMING:
            return CommandApdu(cla, ins, p1, p2, None, b"", p3)
        if p3 == 0:
            return CommandApdu(cla, ins, p1, p2, 0, b"", None)
        raise TlvError(4, f"Lc {p3} does not match the 0 data bytes")
    body = data[5:]
    if len(body) == p3:
        return CommandApdu(cla, ins, p1, p2, p3, body, None)
    if len(body) == p3 + 1:
        return CommandApdu(cla, ins, p1, p2, p3, body[:p3], body[p3])
    raise TlvError(4, f"Lc {p3} does not match the {len(body)} data bytes")


def looks_like_command(data: bytes) -> bool:
    """Whether `data` is shaped like a C-APDU of a known class and instruction with consistent lengths."""
    if len(data) < 4 or not is_known_class(data[0]) or data[1] not in INSTRUCTIONS:
        return False
    try:
        parse_command(data)
    except TlvError:
        return False
    return True
