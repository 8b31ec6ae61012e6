"""TERMINAL PROFILE (ETSI TS 102 223 section 5.2, 3GPP TS 31.111 section 5.2): every bit named, building and decoding.

The profile is a string of bytes, one bit per facility (byte and bit numbered from 1, bit 1 the least significant,
as the specifications number them); a few fields span several bits (the number of BIP channels in byte 13, the
screen size in bytes 14 and 15, the soft keys in byte 11). `FACILITIES` is the table of section 5.2 (TS 102 223
V15.3.0): each facility has a key (snake_case, used to build profiles), the specification's name, and whether the
bit is RFU or reserved by another body (TS 102 223 reserves bits "by 3GPP" that TS 31.111 defines; the name is
31.111's then).

Named profiles (docs/protocols.md, "Terminal profiles"):
- `bip-only`: the profile the CP sent before profiles were configurable (cp/card_driver.py), byte for byte, so
  recorded traces replay unchanged;
- `modem`: what the CP's own BIP gateway carries out (cp/bip_gateway.py): BIP, events, MORE TIME, POLL INTERVAL,
  POLLING OFF, REFRESH (cp/refresh.py), SEND SHORT MESSAGE (to the network's SMSC), PROVIDE LOCAL INFORMATION (location, IMEI, date and
  time, language, access technology, IMEISV: cp/local_info.py), TIMER MANAGEMENT and TIMER EXPIRATION
  (cp/toolkit_timers.py), SMS-PP data download;
- `host-usat`: `modem` plus what a 27.007 section 12 host toolkit offers (`HOST_FACILITIES`: DISPLAY TEXT, GET
  INKEY, GET INPUT, SELECT ITEM, SET UP MENU and MENU SELECTION, SET UP IDLE MODE TEXT, LAUNCH BROWSER, PLAY TONE);
- `full`: every one-bit facility of the table that is not RFU (those TS 102 223 reserves for 3GPP included: TS
  31.111 defines them), seven channels, a screen of 8 by 20 characters.

`MODEM_COMMANDS` and `command_facility` give the split: which proactive commands the modem handles itself, and the
profile bit that says a terminal (modem or host) supports a command.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bipsim.uicc.cat import CommandType

PROFILE_LENGTH = 36  # bytes TS 102 223 V15.3.0 defines (byte 36 reserved by 3GPP for future usage)


@dataclass(frozen=True)
class Facility:
    """One facility of section 5.2: `byte` and `bit` from 1 (bit = the lowest bit of a field), `width` bits."""

    key: str
    byte: int
    bit: int
    name: str
    width: int = 1
    rfu: bool = False
    reserved: str = ""  # the body a bit is reserved by ("3GPP", "3GPP2", "TIA/EIA-136-270", "CCAT"), else ""

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << (self.bit - 1)


def _bits(byte: int, names: list[str | tuple[str, str]]) -> list[Facility]:
    """Eight one-bit facilities of `byte`; a name "" is RFU; a (name, body) pair is reserved by `body`."""
    out = []
    for bit, entry in enumerate(names, 1):
        name, body = entry if isinstance(entry, tuple) else (entry, "")
        if not name:
            out.append(Facility(f"rfu_{byte}_{bit}", byte, bit, "RFU", rfu=True))
            continue
        out.append(Facility(_key(name), byte, bit, name, reserved=body))
    return out


def _key(name: str) -> str:
    chars = [c.lower() if c.isalnum() else "_" for c in name]
    return "_".join(part for part in "".join(chars).split("_") if part)


def _field(key: str, byte: int, bit: int, width: int, name: str) -> Facility:
    return Facility(key, byte, bit, name, width=width)


_G = "3GPP"
FACILITIES: tuple[Facility, ...] = tuple(
    # byte 1: download
    _bits(1, ["Profile download", ("SMS-PP data download", _G), ("Cell Broadcast data download", _G),
              "Menu selection", ("SMS-PP data download (9EXX response code)", _G), "Timer expiration",
              ("USSD string data object support in Call Control by USIM", _G), "Call Control by NAA"])
    # byte 2: other
    + _bits(2, ["Command result", "Call Control by NAA (alpha identifier)", "Call Control by NAA (cell identity)",
                ("MO short message control support", _G), "Call Control by NAA (alpha identifier handling)",
                "UCS2 Entry supported", "UCS2 Display supported", "Display Text (extension text)"])
    # byte 3: proactive UICC
    + _bits(3, ["DISPLAY TEXT", "GET INKEY", "GET INPUT", "MORE TIME", "PLAY TONE", "POLL INTERVAL",
                "POLLING OFF", "REFRESH"])
    # byte 4: proactive UICC
    + _bits(4, ["SELECT ITEM", ("SEND SHORT MESSAGE", _G), ("SEND SS", _G), ("SEND USSD", _G), "SET UP CALL",
                "SET UP MENU", "PROVIDE LOCAL INFORMATION (MCC, MNC, LAC, Cell ID and IMEI)",
                "PROVIDE LOCAL INFORMATION (NMR)"])
    # byte 5: event driven information
    + _bits(5, ["SET UP EVENT LIST", "Event: MT call", "Event: Call connected", "Event: Call disconnected",
                "Event: Location status", "Event: User activity", "Event: Idle screen available",
                "Event: Card reader status"])
    # byte 6: event driven information extensions
    + _bits(6, ["Event: Language selection", "Event: Browser Termination", "Event: Data available",
                "Event: Channel status", "Event: Access Technology Change", "Event: Display parameters changed",
                "Event: Local Connection", "Event: Network Search Mode Change"])
    # byte 7: multiple card proactive commands (class "a")
    + _bits(7, ["POWER ON CARD", "POWER OFF CARD", "PERFORM CARD APDU", "GET READER STATUS (card reader status)",
                "GET READER STATUS (card reader identifier)", "", "", ""])
    # byte 8: proactive UICC
    + _bits(8, ["TIMER MANAGEMENT (start, stop)", "TIMER MANAGEMENT (get current value)",
                "PROVIDE LOCAL INFORMATION (date, time and time zone)", "GET INKEY (binary choice)",
                "SET UP IDLE MODE TEXT", "RUN AT COMMAND", "SET UP CALL (2nd alpha identifier)",
                "Call Control by NAA (2nd capability configuration parameter)"])
    # byte 9
    + _bits(9, ["DISPLAY TEXT (sustained)", "SEND DTMF", "PROVIDE LOCAL INFORMATION (NMR, BCCH channel list)",
                "PROVIDE LOCAL INFORMATION (language)", ("PROVIDE LOCAL INFORMATION (Timing Advance)", _G),
                "LANGUAGE NOTIFICATION", "LAUNCH BROWSER", "PROVIDE LOCAL INFORMATION (Access Technology)"])
    # byte 10: soft keys support (class "d")
    + _bits(10, ["Soft keys support for SELECT ITEM", "Soft keys support for SET UP MENU", "", "", "", "", "", ""])
    # byte 11: soft keys information
    + [_field("soft_keys", 11, 1, 8, "Maximum number of soft keys available")]
    # byte 12: BIP proactive commands (class "e")
    + _bits(12, ["OPEN CHANNEL", "CLOSE CHANNEL", "RECEIVE DATA", "SEND DATA", "GET CHANNEL STATUS",
                 "SERVICE SEARCH", "GET SERVICE INFORMATION", "DECLARE SERVICE"])
    # byte 13: BIP supported bearers (class "e")
    + _bits(13, ["CSD", "GPRS", "Bluetooth", "IrDA", "RS232", "", "", ""])[:5]
    + [_field("channels", 13, 6, 3, "Number of channels supported by terminal")]
    # byte 14: screen height
    + [_field("screen_height", 14, 1, 5, "Number of characters supported down the terminal display")]
    + _bits(14, ["", "", "", "", "", "No display capability", "No keypad available",
                 "Screen Sizing Parameters supported"])[5:]
    # byte 15: screen width
    + [_field("screen_width", 15, 1, 7, "Number of characters supported across the terminal display")]
    + _bits(15, ["", "", "", "", "", "", "", "Variable size fonts"])[7:]
    # byte 16: screen effects
    + _bits(16, ["Display can be resized", "Text Wrapping supported", "Text Scrolling supported",
                 "Text Attributes supported", "", "", "", ""])[:5]
    + [_field("width_reduction_in_menu", 16, 6, 3, "Width reduction when in a menu")]
    # byte 17: BIP supported transport interface/bearers (class "e")
    + _bits(17, ["TCP, UICC in client mode, remote connection", "UDP, UICC in client mode, remote connection",
                 "TCP, UICC in server mode", "TCP, UICC in client mode, local connection",
                 "UDP, UICC in client mode, local connection", "Direct communication channel",
                 ("E-UTRAN bearer", _G), ("HSDPA bearer", _G)])
    # byte 18
    + _bits(18, ["DISPLAY TEXT (variable time out)", "GET INKEY (help while waiting for an immediate response)",
                 "USB bearer", "GET INKEY (variable time out)", "PROVIDE LOCAL INFORMATION (ESN)",
                 ("Call control on GPRS", _G), "PROVIDE LOCAL INFORMATION (IMEISV)",
                 "PROVIDE LOCAL INFORMATION (Search Mode change)"])
    # byte 19: TIA/EIA-136-270 protocol version
    + [Facility("tia_eia_136_protocol_version", 19, 1, "Protocol Version support", width=4,
                reserved="TIA/EIA-136-270")]
    + _bits(19, ["", "", "", "", "", "", "", ""])[4:]
    # byte 20: 3GPP2 C.S0035-B CCAT
    + [Facility("ccat", 20, 1, "CCAT facilities", width=8, reserved="CCAT")]
    # byte 21: extended LAUNCH BROWSER capability (class "ac")
    + _bits(21, ["Browser WML", "Browser XHTML", "Browser HTML", "Browser CHTML", "", "", "", ""])
    # byte 22
    + _bits(22, [("Support of UTRAN PS with extended parameters", _G), "PROVIDE LOCAL INFORMATION (battery state)",
                 "PLAY TONE (melody tones and themed tones)", "Multi-media calls in SET UP CALL",
                 ("Toolkit-initiated GBA", _G), "RETRIEVE MULTIMEDIA MESSAGE", "SUBMIT MULTIMEDIA MESSAGE",
                 "DISPLAY MULTIMEDIA MESSAGE"])
    # byte 23
    + _bits(23, ["SET FRAMES", "GET FRAMES STATUS", "MMS notification download",
                 "Alpha identifier in REFRESH command", ("Geographical Location Reporting", _G),
                 "PROVIDE LOCAL INFORMATION (MEID)", ("PROVIDE LOCAL INFORMATION (NMR UTRAN/E-UTRAN)", _G),
                 ("USSD Data download and application mode", _G)])
    # byte 24: frames (class "i")
    + [_field("frames", 24, 1, 4, "Maximum number of frames supported")]
    + _bits(24, ["", "", "", "", "", "", "", ""])[4:]
    # byte 25: event driven information extensions
    + _bits(25, ["Event: Browsing status", "Event: MMS Transfer status", "Event: Frame Information changed",
                 ("Event: I-WLAN Access status", _G), ("Event: Network Rejection", _G),
                 "Event: HCI connectivity event", ("E-UTRAN support in Event Network Rejection", _G),
                 "Multiple access technologies in Access Technology Change and PROVIDE LOCAL INFORMATION"])
    # byte 26
    + _bits(26, [("Event: CSG Cell Selection", _G), "Event: Contactless state request", "", "", "", "", "", ""])
    # byte 27
    + _bits(27, ["", "", "", "", "", "", "", ""])
    # byte 28: text attributes
    + _bits(28, ["Alignment left", "Alignment centre", "Alignment right", "Font size normal", "Font size large",
                 "Font size small", "", ""])
    # byte 29: text attributes
    + _bits(29, ["Style normal", "Style bold", "Style italic", "Style underlined", "Style strikethrough",
                 "Style text foreground colour", "Style text background colour", ""])
    # byte 30
    + _bits(30, [("I-WLAN bearer support", _G), ("PROVIDE LOCAL INFORMATION (WSID of the I-WLAN connection)", _G),
                 "TERMINAL APPLICATIONS", ("Steering of Roaming REFRESH support", _G), "ACTIVATE",
                 ("GEOGRAPHICAL LOCATION REQUEST", _G), "PROVIDE LOCAL INFORMATION (Broadcast Network Information)",
                 ("Steering of Roaming for I-WLAN REFRESH support", _G)])
    # byte 31
    + _bits(31, ["Contactless State Changed", ("Support of CSG cell discovery", _G),
                 "Confirmation parameters for OPEN CHANNEL in Terminal Server Mode",
                 ("Communication Control for IMS", _G), "Support of CAT over the modem interface",
                 ("Support for Incoming IMS Data event", _G), ("Support for IMS Registration event", _G),
                 "Profile Container, Envelope Container, COMMAND CONTAINER and ENCAPSULATED SESSION CONTROL"])
    # byte 32
    + _bits(32, [("Support of IMS as a bearer for BIP", _G),
                 ("PROVIDE LOCAL INFORMATION (H(e)NB IP address)", _G),
                 ("PROVIDE LOCAL INFORMATION (H(e)NB surrounding macrocells)", _G),
                 "Launch parameters for OPEN CHANNEL in Terminal Server Mode",
                 "Direct communication channel for OPEN CHANNEL in Terminal Server Mode",
                 "Security for Profile Container, Envelope Container, COMMAND CONTAINER and ENCAPSULATED SESSION "
                 "CONTROL", "CAT service list for eCAT client", "Support of refresh enforcement policy"])
    # byte 33
    + _bits(33, ["DNS server address request for OPEN CHANNEL (packet data service bearer)",
                 "Network Access Name reuse indication for CLOSE CHANNEL (packet data service bearer)",
                 "Event: Poll Interval Negotiation", ("ProSe usage information reporting", _G),
                 "PROVIDE LOCAL INFORMATION (Supported Radio Access Technologies)",
                 ("Event: WLAN Access status", _G), ("WLAN bearer support", _G),
                 ("PROVIDE LOCAL INFORMATION (WLAN identifier of the current WLAN connection)", _G)])
    # byte 34
    + _bits(34, [("URI support for SEND SHORT MESSAGE", _G), ("IMS URI supported for SET UP CALL", _G),
                 ("Media Type Voice for SET UP CALL and Call Control by USIM", _G),
                 ("Media Type Video for SET UP CALL and Call Control by USIM", _G),
                 ("PROVIDE LOCAL INFORMATION (E-UTRAN Timing Advance Information)", _G),
                 "REFRESH with eUICC Profile State Change mode",
                 ("Extended Rejection Cause Code in Event Network Rejection for E-UTRAN", _G),
                 ("Deprecated", "ETSI")])
    # byte 35
    + _bits(35, ["GET INPUT (variable time out)", ("Data Connection Status Change Event (PDP connection)", _G),
                 ("Data Connection Status Change Event (PDN connection)", _G),
                 "REFRESH with Application Update mode", "", "", "", ""])
    # byte 36: reserved by 3GPP for future usage
    + [Facility("reserved_36", 36, 1, "Reserved for future usage", width=8, reserved="3GPP")]
)  # fmt: skip

BY_KEY: dict[str, Facility] = {facility.key: facility for facility in FACILITIES}
if len(BY_KEY) != len(FACILITIES):  # a duplicate key would silently drop a facility from the table
    raise RuntimeError("terminal profile facility keys are not unique")

# the profile bit that says a terminal carries out a proactive command (TS 102 223 section 5.2; for commands with
# several qualifiers, the bit of the basic form)
COMMAND_FACILITY: dict[int, str] = {
    CommandType.REFRESH: "refresh",
    CommandType.MORE_TIME: "more_time",
    CommandType.POLL_INTERVAL: "poll_interval",
    CommandType.POLLING_OFF: "polling_off",
    CommandType.SET_UP_EVENT_LIST: "set_up_event_list",
    CommandType.SET_UP_CALL: "set_up_call",
    CommandType.SEND_SS: "send_ss",
    CommandType.SEND_USSD: "send_ussd",
    CommandType.SEND_SHORT_MESSAGE: "send_short_message",
    CommandType.SEND_DTMF: "send_dtmf",
    CommandType.LAUNCH_BROWSER: "launch_browser",
    CommandType.PLAY_TONE: "play_tone",
    CommandType.DISPLAY_TEXT: "display_text",
    CommandType.GET_INKEY: "get_inkey",
    CommandType.GET_INPUT: "get_input",
    CommandType.SELECT_ITEM: "select_item",
    CommandType.SET_UP_MENU: "set_up_menu",
    CommandType.PROVIDE_LOCAL_INFORMATION: "provide_local_information_mcc_mnc_lac_cell_id_and_imei",
    CommandType.TIMER_MANAGEMENT: "timer_management_start_stop",
    CommandType.SET_UP_IDLE_MODE_TEXT: "set_up_idle_mode_text",
    CommandType.PERFORM_CARD_APDU: "perform_card_apdu",
    CommandType.POWER_ON_CARD: "power_on_card",
    CommandType.POWER_OFF_CARD: "power_off_card",
    CommandType.GET_READER_STATUS: "get_reader_status_card_reader_status",
    CommandType.RUN_AT_COMMAND: "run_at_command",
    CommandType.LANGUAGE_NOTIFICATION: "language_notification",
    CommandType.OPEN_CHANNEL: "open_channel",
    CommandType.CLOSE_CHANNEL: "close_channel",
    CommandType.RECEIVE_DATA: "receive_data",
    CommandType.SEND_DATA: "send_data",
    CommandType.GET_CHANNEL_STATUS: "get_channel_status",
    CommandType.SERVICE_SEARCH: "service_search",
    CommandType.GET_SERVICE_INFORMATION: "get_service_information",
    CommandType.DECLARE_SERVICE: "declare_service",
}

# the proactive commands the CP's own gateway carries out (cp/bip_gateway.py), whatever a host offers
MODEM_COMMANDS: frozenset[int] = frozenset(
    {
        CommandType.OPEN_CHANNEL,
        CommandType.CLOSE_CHANNEL,
        CommandType.RECEIVE_DATA,
        CommandType.SEND_DATA,
        CommandType.GET_CHANNEL_STATUS,
        CommandType.SET_UP_EVENT_LIST,
        CommandType.POLL_INTERVAL,
        CommandType.POLLING_OFF,
        CommandType.MORE_TIME,
        CommandType.SEND_SHORT_MESSAGE,
        CommandType.PROVIDE_LOCAL_INFORMATION,
        CommandType.TIMER_MANAGEMENT,
        CommandType.REFRESH,  # cp/refresh.py: the modem resets or re-reads the card itself
    }
)

MODEM_FACILITIES: tuple[str, ...] = (
    "profile_download", "sms_pp_data_download", "sms_pp_data_download_9exx_response_code", "timer_expiration",
    "timer_management_start_stop", "timer_management_get_current_value", "command_result",
    "more_time", "poll_interval", "polling_off", "refresh", "send_short_message", "set_up_event_list",
    "event_data_available", "event_channel_status", "open_channel", "close_channel", "receive_data", "send_data",
    "get_channel_status", "gprs", "provide_local_information_mcc_mnc_lac_cell_id_and_imei",
    "provide_local_information_date_time_and_time_zone", "provide_local_information_language",
    "provide_local_information_access_technology", "provide_local_information_imeisv",
    "tcp_uicc_in_client_mode_remote_connection", "udp_uicc_in_client_mode_remote_connection", "e_utran_bearer",
)  # fmt: skip

# what the AP's toolkit (ap/toolkit.py) answers, as a 27.007 section 12 TE profile
HOST_FACILITIES: tuple[str, ...] = (
    "menu_selection", "ucs2_entry_supported", "ucs2_display_supported", "display_text", "get_inkey", "get_input",
    "play_tone", "select_item", "set_up_menu", "set_up_idle_mode_text", "launch_browser",
)  # fmt: skip


def build(keys: Iterable[str], *, length: int = 20, **fields: int) -> bytes:
    """A profile of `length` bytes with the one-bit facilities `keys` set and the multi-bit `fields` (e.g.
    channels=7, screen_height=5). Raises ValueError for an unknown key, an RFU bit or a value too wide."""
    profile = bytearray(length)
    values = {key: 1 for key in keys} | fields
    for key, value in values.items():
        facility = BY_KEY.get(key)
        if facility is None:
            raise ValueError(f"no terminal profile facility {key!r}")
        if facility.rfu:
            raise ValueError(f"{key} is RFU (TS 102 223 section 5.2: set to 0)")
        if not 0 <= value < 1 << facility.width:
            raise ValueError(f"{key}={value} does not fit in {facility.width} bits")
        if facility.byte > len(profile):
            profile.extend(bytes(facility.byte - len(profile)))
        profile[facility.byte - 1] |= value << (facility.bit - 1)
    return bytes(profile)


def value_of(profile: bytes, facility: Facility) -> int:
    """The facility's value in `profile` (0 when the profile is too short to hold it: not supported)."""
    if facility.byte > len(profile):
        return 0
    return (profile[facility.byte - 1] & facility.mask) >> (facility.bit - 1)


def supports(profile: bytes, key: str) -> bool:
    return value_of(profile, BY_KEY[key]) != 0


def supports_command(profile: bytes, command_type: int) -> bool:
    """Whether the profile declares the proactive command (COMMAND_FACILITY); unknown commands are not declared."""
    key = COMMAND_FACILITY.get(command_type)
    return key is not None and supports(profile, key)


@dataclass(frozen=True)
class SetBit:
    """One set facility of a decoded profile: `value` is 1 for a bit, the field's value for a multi-bit one."""

    facility: Facility
    value: int

    def to_json(self) -> dict[str, object]:
        f = self.facility
        out: dict[str, object] = {
            "byte": f.byte,
            "bit": f.bit,
            "key": f.key,
            "name": f.name,
            "value": self.value,
        }
        if f.width > 1:
            out["width"] = f.width
        if f.rfu:
            out["rfu"] = True
        if f.reserved:
            out["reserved_by"] = f.reserved
        return out


def decode(profile: bytes) -> list[SetBit]:
    """Every facility set in `profile`, in byte and bit order; RFU bits that are set come as facilities with
    `rfu` true, and bytes past the table as RFU bits of their own."""
    out = [SetBit(f, v) for f in FACILITIES if (v := value_of(profile, f))]
    for index in range(PROFILE_LENGTH, len(profile)):
        for bit in range(1, 9):
            if profile[index] >> (bit - 1) & 1:
                out.append(SetBit(Facility(f"rfu_{index + 1}_{bit}", index + 1, bit, "RFU", rfu=True), 1))
    return out


def describe(profile: bytes) -> str:
    """The tree `bipsim decode --as terminal_profile` prints: one line per set facility."""
    lines = [f"TERMINAL PROFILE ({len(profile)} bytes)"]
    for item in decode(profile):
        f = item.facility
        where = f"byte {f.byte} bit {f.bit}" + (f"-{f.bit + f.width - 1}" if f.width > 1 else "")
        value = f" = {item.value}" if f.width > 1 else ""
        note = " (RFU: must be 0)" if f.rfu else _reserved_note(f.reserved)
        lines.append(f"  {where}: {f.name}{value}{note}")
    if len(lines) == 1:
        lines.append("  (no facility)")
    return "\n".join(lines) + "\n"


def _reserved_note(body: str) -> str:
    if body == "3GPP":
        return " (TS 31.111; reserved by 3GPP in TS 102 223)"
    return f" (reserved by {body})" if body else ""


def to_json(profile: bytes) -> dict[str, object]:
    return {
        "kind": "terminal_profile",
        "length": len(profile),
        "hex": profile.hex().upper(),
        "facilities": [item.to_json() for item in decode(profile)],
    }


def _bip_only() -> bytes:
    """The profile of cp/card_driver.py before profiles were configurable, byte for byte (recorded traces hold
    it): bytes 1 to 20 as that function set them."""
    return bytes.fromhex("730FE181110C00030100001FE200000043000000")


def merge(*profiles: bytes) -> bytes:
    """The bitwise OR of profiles (27.007 section 12.1 / TS 31.111 annex Q: the profile sent to the UICC combines
    the MT's and the TE's facilities); multi-bit fields take the larger value."""
    length = max((len(p) for p in profiles), default=0)
    out = bytearray(length)
    for profile in profiles:
        for index, byte in enumerate(profile):
            out[index] |= byte
    for f in FACILITIES:
        if f.width > 1 and f.byte <= length:
            top = max(value_of(p, f) for p in profiles)
            out[f.byte - 1] = (out[f.byte - 1] & ~f.mask) | top << (f.bit - 1)
    return bytes(out)


def conflicts(first: bytes, second: bytes) -> bytes:
    """The bitwise AND of two profiles: the one-bit facilities both claim (27.007 section 12.2.2 <conflict_profile>);
    multi-bit fields (channel count, screen size) are not facilities one side handles, so never a conflict."""
    length = max(len(first), len(second))
    a, b = first.ljust(length, b"\0"), second.ljust(length, b"\0")
    out = bytearray(x & y for x, y in zip(a, b, strict=True))
    for f in FACILITIES:
        if f.width > 1 and f.byte <= length:
            out[f.byte - 1] &= ~f.mask & 0xFF
    return bytes(out)


MODEM = build(MODEM_FACILITIES, channels=7)
HOST_USAT_TE = build(HOST_FACILITIES, screen_height=8, screen_width=20)
NAMED: dict[str, bytes] = {
    "bip-only": _bip_only(),
    "modem": MODEM,
    "host-usat": merge(MODEM, HOST_USAT_TE),
    "full": build(
        [f.key for f in FACILITIES if f.width == 1 and not f.rfu and f.reserved in ("", "3GPP")],
        length=35,
        channels=7,
        soft_keys=2,
        screen_height=8,
        screen_width=20,
        width_reduction_in_menu=1,
        frames=1,
    ),
}


def parse_profile(text: str) -> bytes:
    """A profile named (NAMED) or given in hex (spaces allowed); ValueError with the names otherwise."""
    if text in NAMED:
        return NAMED[text]
    cleaned = text.replace(" ", "").replace(":", "")
    try:
        data = bytes.fromhex(cleaned)
    except ValueError:
        raise ValueError(f"{text!r} is neither a profile name ({', '.join(NAMED)}) nor hexadecimal") from None
    if not data or len(data) > 255:
        raise ValueError("a TERMINAL PROFILE is 1 to 255 bytes")
    return data
