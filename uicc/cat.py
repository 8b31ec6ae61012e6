"""Card application toolkit messages (ETSI TS 102 223): proactive commands, terminal responses and envelopes.

The wire form is a BER-TLV ('D0' proactive command, 'D1'..'D7' envelopes; a terminal response is bare) holding
COMPREHENSION-TLV simple objects (section 8). Every message decodes into one frozen dataclass that keeps all of its
objects in wire order, so decode -> encode is byte-identical, including objects this module does not interpret.
Typed views of the commands the BIP gateway and the card's engine use (OPEN CHANNEL, CLOSE CHANNEL, SEND DATA,
RECEIVE DATA, GET CHANNEL STATUS, SET UP EVENT LIST, ...) build and read those objects (sections 6.6.27-6.6.31).

Values of objects are decoded lazily (`CatObject.fields()`), so decoding a message costs one pass over its bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple

from bipsim.uicc import gsm_text
from bipsim.uicc.gsm_text import ESCAPE, GSM7_BASIC, gsm7_decode, gsm7_encode, septets_in
from bipsim.uicc.tlv import TlvError, decode_ber_tag, decode_length, encode_ctlv, encode_length, split_ctlvs


class Tag(IntEnum):
    """COMPREHENSION-TLV tag values (TS 101 220 section 7.2, TS 102 223 section 9.3), without the CR bit."""

    COMMAND_DETAILS = 0x01
    DEVICE_IDENTITIES = 0x02
    RESULT = 0x03
    DURATION = 0x04
    ALPHA_IDENTIFIER = 0x05
    ADDRESS = 0x06
    CAPABILITY_CONFIGURATION_PARAMETERS = 0x07
    SUBADDRESS = 0x08
    SS_STRING = 0x09
    USSD_STRING = 0x0A
    SMS_TPDU = 0x0B
    CELL_BROADCAST_PAGE = 0x0C
    TEXT_STRING = 0x0D
    TONE = 0x0E
    ITEM = 0x0F
    ITEM_IDENTIFIER = 0x10
    RESPONSE_LENGTH = 0x11
    FILE_LIST = 0x12
    LOCATION_INFORMATION = 0x13
    IMEI = 0x14
    HELP_REQUEST = 0x15
    NETWORK_MEASUREMENT_RESULTS = 0x16
    DEFAULT_TEXT = 0x17
    ITEMS_NEXT_ACTION_INDICATOR = 0x18
    EVENT_LIST = 0x19
    CAUSE = 0x1A
    LOCATION_STATUS = 0x1B
    TRANSACTION_IDENTIFIER = 0x1C
    BCCH_CHANNEL_LIST = 0x1D
    ICON_IDENTIFIER = 0x1E
    ICON_IDENTIFIER_LIST = 0x1F
    CARD_READER_STATUS = 0x20
    CARD_ATR = 0x21
    C_APDU = 0x22
    R_APDU = 0x23
    TIMER_IDENTIFIER = 0x24
    TIMER_VALUE = 0x25
    DATE_TIME_AND_TIME_ZONE = 0x26
    CALL_CONTROL_REQUESTED_ACTION = 0x27
    AT_COMMAND = 0x28
    AT_RESPONSE = 0x29
    BC_REPEAT_INDICATOR = 0x2A
    IMMEDIATE_RESPONSE = 0x2B
    DTMF_STRING = 0x2C
    LANGUAGE = 0x2D
    TIMING_ADVANCE = 0x2E
    AID = 0x2F
    BROWSER_IDENTITY = 0x30
    URL = 0x31
    BEARER = 0x32
    PROVISIONING_REFERENCE_FILE = 0x33
    BROWSER_TERMINATION_CAUSE = 0x34
    BEARER_DESCRIPTION = 0x35
    CHANNEL_DATA = 0x36
    CHANNEL_DATA_LENGTH = 0x37
    CHANNEL_STATUS = 0x38
    BUFFER_SIZE = 0x39
    CARD_READER_IDENTIFIER = 0x3A
    FILE_UPDATE_INFORMATION = 0x3B
    TRANSPORT_LEVEL = 0x3C  # "UICC/terminal interface transport level"
    OTHER_ADDRESS = 0x3E
    ACCESS_TECHNOLOGY = 0x3F
    DISPLAY_PARAMETERS = 0x40
    SERVICE_RECORD = 0x41
    DEVICE_FILTER = 0x42
    SERVICE_SEARCH = 0x43
    ATTRIBUTE_INFORMATION = 0x44
    SERVICE_AVAILABILITY = 0x45
    ESN = 0x46
    NETWORK_ACCESS_NAME = 0x47
    CDMA_SMS_TPDU = 0x48
    REMOTE_ENTITY_ADDRESS = 0x49
    TEXT_ATTRIBUTE = 0x50
    ITEM_TEXT_ATTRIBUTE_LIST = 0x51
    PDP_CONTEXT_ACTIVATION_PARAMETER = 0x52
    IMEISV = 0x62
    BATTERY_STATE = 0x63
    BROWSING_STATUS = 0x64
    NETWORK_SEARCH_MODE = 0x65
    FRAME_LAYOUT = 0x66
    FRAMES_INFORMATION = 0x67
    FRAME_IDENTIFIER = 0x68
    UTRAN_MEASUREMENT_QUALIFIER = 0x69
    MULTIMEDIA_MESSAGE_REFERENCE = 0x6A
    MULTIMEDIA_MESSAGE_IDENTIFIER = 0x6B
    MULTIMEDIA_MESSAGE_TRANSFER_STATUS = 0x6C
    MEID = 0x6D
    MULTIMEDIA_MESSAGE_CONTENT_IDENTIFIER = 0x6E
    MULTIMEDIA_MESSAGE_NOTIFICATION = 0x6F
    LAST_ENVELOPE = 0x70
    PLMN_LIST = 0x72
    # 3GPP TS 31.111 section 8 objects seen in the Network Rejection event (section 7.5.2)
    ROUTING_AREA_IDENTIFICATION = 0x73
    UPDATE_ATTACH_TYPE = 0x74
    REJECTION_CAUSE_CODE = 0x75
    TRACKING_AREA_IDENTIFICATION = 0x7D


TAG_NAMES: dict[int, str] = {tag.value: tag.name.lower() for tag in Tag}


class CommandType(IntEnum):
    """Type of command (TS 102 223 section 9.4)."""

    REFRESH = 0x01
    MORE_TIME = 0x02
    POLL_INTERVAL = 0x03
    POLLING_OFF = 0x04
    SET_UP_EVENT_LIST = 0x05
    SET_UP_CALL = 0x10
    SEND_SS = 0x11
    SEND_USSD = 0x12
    SEND_SHORT_MESSAGE = 0x13
    SEND_DTMF = 0x14
    LAUNCH_BROWSER = 0x15
    PLAY_TONE = 0x20
    DISPLAY_TEXT = 0x21
    GET_INKEY = 0x22
    GET_INPUT = 0x23
    SELECT_ITEM = 0x24
    SET_UP_MENU = 0x25
    PROVIDE_LOCAL_INFORMATION = 0x26
    TIMER_MANAGEMENT = 0x27
    SET_UP_IDLE_MODE_TEXT = 0x28
    PERFORM_CARD_APDU = 0x30
    POWER_ON_CARD = 0x31
    POWER_OFF_CARD = 0x32
    GET_READER_STATUS = 0x33
    RUN_AT_COMMAND = 0x34
    LANGUAGE_NOTIFICATION = 0x35
    OPEN_CHANNEL = 0x40
    CLOSE_CHANNEL = 0x41
    RECEIVE_DATA = 0x42
    SEND_DATA = 0x43
    GET_CHANNEL_STATUS = 0x44
    SERVICE_SEARCH = 0x45
    GET_SERVICE_INFORMATION = 0x46
    DECLARE_SERVICE = 0x47
    END_OF_PROACTIVE_SESSION = 0x81

    @property
    def spec_name(self) -> str:
        return self.name.replace("_", " ")


class DeviceId(IntEnum):
    """Device identities (TS 102 223 section 8.7)."""

    KEYPAD = 0x01
    DISPLAY = 0x02
    EARPIECE = 0x03
    CHANNEL_1 = 0x21
    CHANNEL_2 = 0x22
    CHANNEL_3 = 0x23
    CHANNEL_4 = 0x24
    CHANNEL_5 = 0x25
    CHANNEL_6 = 0x26
    CHANNEL_7 = 0x27
    UICC = 0x81
    TERMINAL = 0x82
    NETWORK = 0x83

    @classmethod
    def channel(cls, channel_id: int) -> DeviceId:
        if not 1 <= channel_id <= 7:
            raise ValueError(f"channel identifier {channel_id} is not 1..7")
        return cls(0x20 + channel_id)


def device_name(value: int) -> str:
    """docs/protocols.md ("Decoding what traces show") device names: uicc, terminal, network, display, keypad, earpiece, channel1..7."""
    if 0x21 <= value <= 0x27:
        return f"channel{value - 0x20}"
    try:
        return DeviceId(value).name.lower()
    except ValueError:
        return f"0x{value:02X}"


class GeneralResult(IntEnum):
    """General result of a terminal response (TS 102 223 section 8.12)."""

    OK = 0x00
    PARTIAL_COMPREHENSION = 0x01
    MISSING_INFORMATION = 0x02
    REFRESH_ADDITIONAL_EF_READ = 0x03
    OK_ICON_NOT_DISPLAYED = 0x04
    OK_MODIFIED_BY_CALL_CONTROL = 0x05
    OK_LIMITED_SERVICE = 0x06
    OK_WITH_MODIFICATION = 0x07
    REFRESH_NAA_NOT_ACTIVE = 0x08
    OK_TONE_NOT_PLAYED = 0x09
    SESSION_TERMINATED_BY_USER = 0x10
    BACKWARD_MOVE = 0x11
    NO_RESPONSE_FROM_USER = 0x12
    HELP_REQUESTED = 0x13
    TERMINAL_UNABLE = 0x20
    NETWORK_UNABLE = 0x21
    USER_DID_NOT_ACCEPT = 0x22
    USER_CLEARED_DOWN = 0x23
    ACTION_CONTRADICTS_TIMER = 0x24
    INTERACTION_WITH_CALL_CONTROL_TEMPORARY = 0x25
    LAUNCH_BROWSER_ERROR = 0x26
    MMS_TEMPORARY_PROBLEM = 0x27
    BEYOND_TERMINAL_CAPABILITIES = 0x30
    TYPE_NOT_UNDERSTOOD = 0x31
    DATA_NOT_UNDERSTOOD = 0x32
    NUMBER_NOT_KNOWN = 0x33
    SS_RETURN_ERROR = 0x34
    SMS_RP_ERROR = 0x35
    REQUIRED_VALUES_MISSING = 0x36
    USSD_RETURN_ERROR = 0x37
    MULTIPLE_CARD_COMMANDS_ERROR = 0x38
    INTERACTION_WITH_CALL_CONTROL_PERMANENT = 0x39
    BIP_ERROR = 0x3A
    ACCESS_TECHNOLOGY_UNABLE = 0x3B
    FRAMES_ERROR = 0x3C
    MMS_ERROR = 0x3D

    @property
    def successful(self) -> bool:
        """Results 0x0X mean the command was performed (section 8.12)."""
        return self.value < 0x10


class TerminalProblem(IntEnum):
    """Additional information for result 0x20 (section 8.12.2)."""

    NO_SPECIFIC_CAUSE = 0x00
    SCREEN_BUSY = 0x01
    BUSY_ON_CALL = 0x02
    BUSY_ON_SS = 0x03
    NO_SERVICE = 0x04
    ACCESS_CONTROL_CLASS_BAR = 0x05
    RADIO_RESOURCE_NOT_GRANTED = 0x06
    NOT_IN_SPEECH_CALL = 0x07
    BUSY_ON_USSD = 0x08
    BUSY_ON_DTMF = 0x09
    NO_NAA_ACTIVE = 0x0A


class BipErrorCause(IntEnum):
    """Additional information for result 0x3A, Bearer Independent Protocol error (section 8.12.11)."""

    NO_SPECIFIC_CAUSE = 0x00
    NO_CHANNEL_AVAILABLE = 0x01
    CHANNEL_CLOSED = 0x02
    CHANNEL_ID_NOT_VALID = 0x03
    BUFFER_SIZE_NOT_AVAILABLE = 0x04
    SECURITY_ERROR = 0x05
    TRANSPORT_NOT_AVAILABLE = 0x06
    REMOTE_DEVICE_NOT_REACHABLE = 0x07
    SERVICE_ERROR = 0x08
    SERVICE_ID_UNKNOWN = 0x09
    PORT_NOT_AVAILABLE = 0x10
    LAUNCH_PARAMETERS_MISSING = 0x11
    APPLICATION_LAUNCH_FAILED = 0x12


class Event(IntEnum):
    """Event list values (section 8.25)."""

    MT_CALL = 0x00
    CALL_CONNECTED = 0x01
    CALL_DISCONNECTED = 0x02
    LOCATION_STATUS = 0x03
    USER_ACTIVITY = 0x04
    IDLE_SCREEN_AVAILABLE = 0x05
    CARD_READER_STATUS = 0x06
    LANGUAGE_SELECTION = 0x07
    BROWSER_TERMINATION = 0x08
    DATA_AVAILABLE = 0x09
    CHANNEL_STATUS = 0x0A
    ACCESS_TECHNOLOGY_CHANGE = 0x0B
    DISPLAY_PARAMETERS_CHANGED = 0x0C
    LOCAL_CONNECTION = 0x0D
    NETWORK_SEARCH_MODE_CHANGE = 0x0E
    BROWSING_STATUS = 0x0F


class BearerType(IntEnum):
    """Bearer description bearer types (section 8.52)."""

    CSD = 0x01
    GPRS = 0x02  # "GPRS / UTRAN packet service / E-UTRAN"
    DEFAULT = 0x03
    LOCAL_LINK = 0x04
    BLUETOOTH = 0x05
    IRDA = 0x06
    RS232 = 0x07
    CDMA2000_PACKET = 0x08
    UTRAN_PACKET_EXTENDED = 0x09
    I_WLAN = 0x0A
    E_UTRAN = 0x0B
    USB = 0x10


class TransportProtocol(IntEnum):
    """UICC/terminal interface transport level protocol types (section 8.59)."""

    UDP_CLIENT_REMOTE = 0x01
    TCP_CLIENT_REMOTE = 0x02
    TCP_SERVER = 0x03
    UDP_CLIENT_LOCAL = 0x04
    TCP_CLIENT_LOCAL = 0x05
    DIRECT = 0x06


class EnvelopeTag(IntEnum):
    """BER-TLV tags of envelopes (TS 101 220 section 7.2)."""

    SMS_PP_DOWNLOAD = 0xD1
    CELL_BROADCAST_DOWNLOAD = 0xD2
    MENU_SELECTION = 0xD3
    CALL_CONTROL = 0xD4
    MO_SHORT_MESSAGE_CONTROL = 0xD5
    EVENT_DOWNLOAD = 0xD6
    TIMER_EXPIRATION = 0xD7


PROACTIVE_TAG = 0xD0

# Bits of the OPEN CHANNEL command qualifier (section 8.6)
OPEN_IMMEDIATE = 0x01
OPEN_AUTO_RECONNECT = 0x02
OPEN_BACKGROUND = 0x04
# SEND DATA qualifier bit 1: 0 = store data in Tx buffer, 1 = send immediately
SEND_IMMEDIATELY = 0x01

# The GSM default alphabet lives in uicc/gsm_text.py (TS 123 038 section 6.2.1); these names stay for callers.
GSM_DEFAULT = GSM7_BASIC
GSM_ENCODE = {ch: i for i, ch in enumerate(GSM7_BASIC) if i != ESCAPE}


def gsm_decode(data: bytes) -> str:
    """Unpacked septets to text, extension table included (TS 123 038 section 6.2.1.1)."""
    return gsm7_decode(data)


def gsm_encode(text: str) -> bytes:
    """Text to unpacked septets; ValueError names a character the alphabet lacks."""
    return gsm7_encode(text)


def unpack_7bit(data: bytes) -> bytes:
    """GSM 7-bit packed septets to one septet per byte (TS 123 038 section 6.1.2.1), every whole septet of `data`."""
    return gsm_text.unpack_7bit(data, septets_in(data))


def alpha_decode(data: bytes) -> str:
    """EF_ADN alpha coding (TS 102 221 annex A): GSM default alphabet unpacked, or UCS2 in its 0x80/0x81/0x82 forms."""
    return gsm_text.alpha_decode(data)


def text_decode(value: bytes) -> tuple[int, str]:
    """A text string object (section 8.15): data coding scheme then the text."""
    if not value:
        return 0, ""
    dcs, body = value[0], value[1:]
    alphabet = (dcs >> 2) & 0x03 if dcs & 0xC0 in (0x00, 0x40) or dcs & 0xF0 == 0xF0 else 1
    if dcs & 0xF0 == 0xF0:
        alphabet = 1 if dcs & 0x04 else 0
    if alphabet == 0:
        return dcs, gsm_decode(unpack_7bit(body)).rstrip("@")
    if alphabet == 2:
        return dcs, body.decode("utf-16-be", errors="replace")
    return dcs, gsm_decode(body) if all(b < 0x80 for b in body) else body.decode("latin-1")


# --- Simple objects ---------------------------------------------------------------------------------------------


class CatObject(NamedTuple):
    """One simple object: its tag (without CR), value bytes, CR flag, and whether the 3-byte tag form was used.
    (A named tuple rather than a dataclass: the decoder builds one per object, and that is its hot path.)"""

    tag: int
    value: bytes
    cr: bool = True
    long_form: bool = False

    @property
    def name(self) -> str:
        return TAG_NAMES.get(self.tag, f"tag_{self.tag:02x}")

    def encode(self) -> bytes:
        return encode_ctlv(self.tag, self.value, self.cr, self.long_form)

    def fields(self) -> dict[str, Any]:
        """The object's fields as docs/protocols.md ("Decoding what traces show") names them; `value_hex` for objects without a decoder."""
        decoder = FIELD_DECODERS.get(self.tag)
        if decoder is None:
            return {"value_hex": self.value.hex().upper()}
        try:
            return decoder(self.value)
        except (IndexError, ValueError, KeyError):
            return {"value_hex": self.value.hex().upper(), "malformed": True}


def _labels(value: bytes) -> str:
    labels, i = [], 0
    while i < len(value):
        n = value[i]
        labels.append(value[i + 1 : i + 1 + n].decode("ascii", errors="replace"))
        i += 1 + n
    return ".".join(labels)


def _address(value: bytes) -> dict[str, Any]:
    if not value:
        return {"type": "none", "address": ""}
    kind, body = value[0], value[1:]
    if kind == 0x21 and len(body) == 4:
        return {"type": "IPv4", "address": ".".join(str(b) for b in body)}
    if kind == 0x57 and len(body) == 16:
        import ipaddress

        return {"type": "IPv6", "address": str(ipaddress.IPv6Address(body))}
    raise ValueError("unknown address type")


def _sized(value: bytes, size: int) -> bytes:
    """Fixed-length objects (TS 102 223 section 8): a longer or shorter value is malformed, not silently cut."""
    if len(value) != size:
        raise ValueError(f"{len(value)} bytes where the object has {size}")
    return value


def _channel_status(value: bytes) -> dict[str, Any]:
    _sized(value, 2)
    return {
        "channel_id": value[0] & 0x07,
        "link_established": bool(value[0] & 0x80),
        "further_info": value[1],
    }


FIELD_DECODERS: dict[int, Callable[[bytes], dict[str, Any]]] = {
    Tag.RESULT: lambda v: {"general": v[0], "additional_hex": v[1:].hex().upper()},
    Tag.ALPHA_IDENTIFIER: lambda v: {"text": alpha_decode(v)},
    Tag.BEARER_DESCRIPTION: lambda v: {"bearer_type": v[0], "parameters_hex": v[1:].hex().upper()},
    Tag.BUFFER_SIZE: lambda v: {"size": int.from_bytes(v[:2], "big") if len(v) == 2 else int("x")},
    Tag.NETWORK_ACCESS_NAME: lambda v: {"apn": _labels(v)},
    Tag.OTHER_ADDRESS: _address,
    Tag.TEXT_STRING: lambda v: dict(zip(("dcs", "text"), text_decode(v), strict=True)),
    Tag.TRANSPORT_LEVEL: lambda v: {"protocol": _sized(v, 3)[0], "port": int.from_bytes(v[1:3], "big")},
    Tag.CHANNEL_DATA: lambda v: {"data_hex": v.hex().upper()},
    Tag.CHANNEL_DATA_LENGTH: lambda v: {"length": _sized(v, 1)[0]},
    Tag.CHANNEL_STATUS: _channel_status,
    Tag.EVENT_LIST: lambda v: {"events": list(v)},
    Tag.DURATION: lambda v: {"unit": _sized(v, 2)[0], "interval": v[1]},
    Tag.ICON_IDENTIFIER: lambda v: {"qualifier": _sized(v, 2)[0], "id": v[1]},
}


# Builders for the objects the simulator itself sends (CR set where the specification's tables say "Y").
# Command details, device identities, result, event list, duration (POLL INTERVAL, TS 102 223 section 6.6.6, and
# its TERMINAL RESPONSE) and the BIP data objects (channel data, channel data length, channel status: sections
# 6.6.29-6.6.31, 6.8, 7.5.10-7.5.11) carry CR, as the TS 102 384 conformance PDUs do; alpha identifier, bearer
# description and buffer size go without it, as those PDUs send them.
CR_TAGS = frozenset(
    {
        Tag.COMMAND_DETAILS,
        Tag.DEVICE_IDENTITIES,
        Tag.RESULT,
        Tag.EVENT_LIST,
        Tag.DURATION,
        Tag.CHANNEL_DATA,
        Tag.CHANNEL_DATA_LENGTH,
        Tag.CHANNEL_STATUS,
    }
)


def obj(tag: Tag, value: bytes, cr: bool | None = None) -> CatObject:
    return CatObject(int(tag), value, tag in CR_TAGS if cr is None else cr)


def result_object(general: int, additional: bytes = b"") -> CatObject:
    return obj(Tag.RESULT, bytes((general,)) + additional)


def channel_status_object(channel_id: int, established: bool, further_info: int = 0) -> CatObject:
    return obj(Tag.CHANNEL_STATUS, bytes(((0x80 if established else 0) | channel_id, further_info)))


def channel_data_length_object(length: int) -> CatObject:
    return obj(Tag.CHANNEL_DATA_LENGTH, bytes((min(length, 0xFF),)))


def buffer_size_object(size: int) -> CatObject:
    return obj(Tag.BUFFER_SIZE, size.to_bytes(2, "big"))


def apn_value(apn: str) -> bytes:
    return b"".join(bytes((len(label),)) + label.encode("ascii") for label in apn.split(".") if label)


def ipv4_address_value(address: str) -> bytes:
    import ipaddress

    ip = ipaddress.ip_address(address)
    return (b"\x21" if ip.version == 4 else b"\x57") + ip.packed


def text_value(text: str) -> bytes:
    """A text string in the 8-bit GSM default alphabet (DCS 0x04), as login and password usually are."""
    return b"\x04" + gsm_encode(text)


# --- Messages -----------------------------------------------------------------------------------------------------


def _find(objects: Iterable[CatObject], tag: int) -> CatObject | None:
    for item in objects:
        if item.tag == tag:
            return item
    return None


def _outer(data: bytes, expect: frozenset[int], names: str) -> tuple[int, int]:
    """The BER-TLV wrapping a proactive command or envelope: (its tag, offset of its value). The value must end
    exactly at the end of `data` (TS 102 221 section 10.1.2: one message per APDU)."""
    end = len(data)
    if not end:
        raise TlvError(0, "truncated: tag missing")
    tag = data[0]
    if tag not in expect:
        if tag & 0x1F == 0x1F:  # a multi-byte tag: report it whole (or why it cannot be read)
            tag = decode_ber_tag(data, 0, end)[0]
        raise TlvError(0, f"unexpected tag 0x{tag:02X} (expected {names})")
    if end < 2:
        raise TlvError(1, "truncated: length field missing")
    length = data[1]
    if length < 0x80:
        start = 2
        if start + length > end:
            raise TlvError(1, f"truncated: length {length} exceeds the {end - start} bytes left")
    else:
        length, start = decode_length(data, 1, end)
    if start + length != end:
        raise TlvError(start + length, f"trailing garbage: {end - start - length} bytes after the TLV")
    return tag, start


@dataclass(frozen=True, slots=True)
class CatMessage:
    """Common shape: every simple object in wire order (command details and device identities included)."""

    items: tuple[CatObject, ...]

    def get(self, tag: int) -> CatObject | None:
        return _find(self.items, tag)

    def all(self, tag: int) -> list[CatObject]:
        return [item for item in self.items if item.tag == tag]

    @property
    def objects(self) -> list[CatObject]:
        """Objects other than command details and device identities (docs/protocols.md, "Decoding what traces show": `objects`)."""
        return [i for i in self.items if i.tag not in (Tag.COMMAND_DETAILS, Tag.DEVICE_IDENTITIES)]

    @property
    def devices(self) -> tuple[int, int]:
        item = self.get(Tag.DEVICE_IDENTITIES)
        if item is None or len(item.value) != 2:
            return (0, 0)
        return item.value[0], item.value[1]

    def body(self) -> bytes:
        return b"".join(item.encode() for item in self.items)


_COMMAND_DETAILS = int(Tag.COMMAND_DETAILS)
_DEVICE_IDENTITIES = int(Tag.DEVICE_IDENTITIES)
_RESULT = int(Tag.RESULT)


def _details(items: list[CatObject], offset: int) -> tuple[int, int, int]:
    # command details come first in every message the specification defines; look further only if not
    details = items[0] if items and items[0][0] == _COMMAND_DETAILS else _find(items, _COMMAND_DETAILS)
    if details is None:
        raise TlvError(offset, "command details object (tag 01) missing")
    if len(details.value) != 3:
        raise TlvError(offset, f"command details must be 3 bytes, not {len(details.value)}")
    return details.value[0], details.value[1], details.value[2]


def _check_devices(items: list[CatObject], offset: int, required: bool) -> None:
    if len(items) > 1 and items[1][0] == _DEVICE_IDENTITIES and len(items[1][1]) == 2:
        return  # the usual place, right after command details (or after the event list of an envelope)
    devices = _find(items, _DEVICE_IDENTITIES)
    if devices is None:
        if required:
            raise TlvError(offset, "device identities object (tag 02) missing")
        return
    if len(devices.value) != 2:
        raise TlvError(offset, f"device identities must be 2 bytes, not {len(devices.value)}")


@dataclass(frozen=True, slots=True)
class ProactiveCommand(CatMessage):
    """A proactive command ('D0'): `number`, `type`, `qualifier` come from its command details."""

    number: int = 1
    type: int = 0
    qualifier: int = 0

    @property
    def type_name(self) -> str:
        try:
            return CommandType(self.type).spec_name
        except ValueError:
            return f"command type 0x{self.type:02X}"

    def encode(self) -> bytes:
        body = self.body()
        return bytes((PROACTIVE_TAG,)) + encode_length(len(body)) + body

    @classmethod
    def build(
        cls,
        type_: int,
        objects: Iterable[CatObject] = (),
        *,
        number: int = 1,
        qualifier: int = 0,
        destination: int = DeviceId.TERMINAL,
    ) -> ProactiveCommand:
        head = (
            obj(Tag.COMMAND_DETAILS, bytes((number, type_, qualifier))),
            obj(Tag.DEVICE_IDENTITIES, bytes((DeviceId.UICC, destination))),
        )
        return cls(head + tuple(objects), number, type_, qualifier)


@dataclass(frozen=True, slots=True)
class TerminalResponse(CatMessage):
    """A terminal response (bare simple objects): command details copied from the command, then the result."""

    number: int = 1
    type: int = 0
    qualifier: int = 0

    @property
    def result(self) -> tuple[int, bytes]:
        item = self.get(Tag.RESULT)
        if item is None or not item.value:
            return (GeneralResult.DATA_NOT_UNDERSTOOD, b"")
        return item.value[0], item.value[1:]

    @property
    def type_name(self) -> str:
        return ProactiveCommand((), self.number, self.type, self.qualifier).type_name

    def encode(self) -> bytes:
        return self.body()

    @classmethod
    def build(
        cls,
        command: ProactiveCommand,
        general: int,
        additional: bytes = b"",
        objects: Iterable[CatObject] = (),
    ) -> TerminalResponse:
        source = DeviceId.TERMINAL  # TS 102 223 6.8: always terminal -> UICC, whatever the command addressed
        head = (
            obj(Tag.COMMAND_DETAILS, bytes((command.number, command.type, command.qualifier))),
            obj(Tag.DEVICE_IDENTITIES, bytes((source, DeviceId.UICC))),
            result_object(general, additional),
        )
        return cls(head + tuple(objects), command.number, command.type, command.qualifier)


@dataclass(frozen=True, slots=True)
class Envelope(CatMessage):
    """An envelope: its BER tag ('D6' event download, 'D1' SMS-PP download, 'D7' timer expiration...)."""

    tag: int = EnvelopeTag.EVENT_DOWNLOAD

    @property
    def event(self) -> int | None:
        """The event of an event download (first value of its event list)."""
        item = self.get(Tag.EVENT_LIST)
        return item.value[0] if item is not None and item.value else None

    def encode(self) -> bytes:
        body = self.body()
        return bytes((self.tag,)) + encode_length(len(body)) + body

    @classmethod
    def event_download(cls, event: Event, source: int, objects: Iterable[CatObject] = ()) -> Envelope:
        head = (
            obj(Tag.EVENT_LIST, bytes((event,))),
            obj(Tag.DEVICE_IDENTITIES, bytes((source, DeviceId.UICC))),
        )
        return cls(head + tuple(objects), EnvelopeTag.EVENT_DOWNLOAD)


_PROACTIVE_TAGS = frozenset({PROACTIVE_TAG})
_ENVELOPE_TAGS = frozenset(t.value for t in EnvelopeTag)
_ENVELOPE_NAMES = ", ".join(f"{t:02X}" for t in sorted(_ENVELOPE_TAGS))


def decode_proactive(data: bytes) -> ProactiveCommand:
    _, start = _outer(data, _PROACTIVE_TAGS, "D0")
    items = split_ctlvs(data, start, len(data), CatObject)
    number, type_, qualifier = _details(items, start)
    _check_devices(items, start, required=True)
    return ProactiveCommand(tuple(items), number, type_, qualifier)


def decode_terminal_response(data: bytes) -> TerminalResponse:
    items = split_ctlvs(data, 0, len(data), CatObject)
    number, type_, qualifier = _details(items, 0)
    _check_devices(items, 0, required=False)
    if not (len(items) > 2 and items[2][0] == _RESULT) and _find(items, _RESULT) is None:
        raise TlvError(len(data), "result object (tag 03) missing")
    return TerminalResponse(tuple(items), number, type_, qualifier)


def decode_envelope(data: bytes) -> Envelope:
    tag, start = _outer(data, _ENVELOPE_TAGS, _ENVELOPE_NAMES)
    items = split_ctlvs(data, start, len(data), CatObject)
    _check_devices(items, start, required=True)
    return Envelope(tuple(items), tag)


def decode_any(data: bytes) -> ProactiveCommand | TerminalResponse | Envelope:
    """Decides by the first byte: 'D0' proactive command, 'D1'..'D7' envelope, else terminal response."""
    if not data:
        raise TlvError(0, "empty input")
    if data[0] == PROACTIVE_TAG:
        return decode_proactive(data)
    if data[0] in _ENVELOPE_TAGS:
        return decode_envelope(data)
    return decode_terminal_response(data)


# --- Typed views of the BIP commands (sections 6.6.27-6.6.31) -------------------------------------------------------


@dataclass(frozen=True)
class OpenChannel:
    """OPEN CHANNEL for packet data (section 6.6.27.3 "default/packet data service bearer")."""

    bearer_type: int
    bearer_parameters: bytes = b""
    buffer_size: int = 1400
    protocol: int = TransportProtocol.TCP_CLIENT_REMOTE
    port: int = 0
    destination: str | None = None
    apn: str | None = None
    login: str | None = None
    password: str | None = None
    alpha: str | None = None
    qualifier: int = OPEN_IMMEDIATE | OPEN_BACKGROUND
    number: int = 1
    local_address: str | None = None

    @property
    def immediate(self) -> bool:
        return bool(self.qualifier & OPEN_IMMEDIATE)

    @property
    def background(self) -> bool:
        return bool(self.qualifier & OPEN_BACKGROUND)

    def to_command(self) -> ProactiveCommand:
        objects: list[CatObject] = []
        if self.alpha is not None:
            objects.append(obj(Tag.ALPHA_IDENTIFIER, gsm_encode(self.alpha), cr=False))
        objects.append(obj(Tag.BEARER_DESCRIPTION, bytes((self.bearer_type,)) + self.bearer_parameters))
        objects.append(buffer_size_object(self.buffer_size))
        if self.apn is not None:
            objects.append(obj(Tag.NETWORK_ACCESS_NAME, apn_value(self.apn)))
        if self.local_address is not None:
            objects.append(obj(Tag.OTHER_ADDRESS, ipv4_address_value(self.local_address)))
        if self.login is not None:
            objects.append(obj(Tag.TEXT_STRING, text_value(self.login)))
        if self.password is not None:
            objects.append(obj(Tag.TEXT_STRING, text_value(self.password)))
        objects.append(obj(Tag.TRANSPORT_LEVEL, bytes((self.protocol,)) + self.port.to_bytes(2, "big")))
        if self.destination is not None:
            objects.append(obj(Tag.OTHER_ADDRESS, ipv4_address_value(self.destination)))
        return ProactiveCommand.build(
            CommandType.OPEN_CHANNEL, objects, number=self.number, qualifier=self.qualifier
        )

    @classmethod
    def from_command(cls, command: ProactiveCommand) -> OpenChannel:
        """Reads an OPEN CHANNEL; raises ValueError when a mandatory object is missing or malformed."""
        bearer = command.get(Tag.BEARER_DESCRIPTION)
        size = command.get(Tag.BUFFER_SIZE)
        if bearer is None or not bearer.value or size is None or len(size.value) != 2:
            raise ValueError("OPEN CHANNEL without a valid bearer description and buffer size")
        texts = [text_decode(t.value)[1] for t in command.all(Tag.TEXT_STRING)]
        transport = command.get(Tag.TRANSPORT_LEVEL)
        protocol, port = 0, 0
        if transport is not None:
            if len(transport.value) != 3:
                raise ValueError("transport level must be 3 bytes")
            protocol, port = transport.value[0], int.from_bytes(transport.value[1:3], "big")
        # An OTHER ADDRESS before the transport level is the local address, after it the destination.
        addresses = [(i, item) for i, item in enumerate(command.items) if item.tag == Tag.OTHER_ADDRESS]
        transport_at = next(
            (i for i, item in enumerate(command.items) if item.tag == Tag.TRANSPORT_LEVEL), -1
        )
        local = destination = None
        for index, item in addresses:
            fields = _address(item.value)
            value = fields["address"] or None
            if transport_at >= 0 and index > transport_at:
                destination = value
            else:
                local = value
        apn = command.get(Tag.NETWORK_ACCESS_NAME)
        alpha = command.get(Tag.ALPHA_IDENTIFIER)
        return cls(
            bearer_type=bearer.value[0],
            bearer_parameters=bearer.value[1:],
            buffer_size=int.from_bytes(size.value, "big"),
            protocol=protocol,
            port=port,
            destination=destination,
            apn=_labels(apn.value) if apn is not None else None,
            login=texts[0] if len(texts) > 0 else None,
            password=texts[1] if len(texts) > 1 else None,
            alpha=alpha_decode(alpha.value) if alpha is not None else None,
            qualifier=command.qualifier,
            number=command.number,
            local_address=local,
        )


def channel_of(command: ProactiveCommand) -> int:
    """The channel a CLOSE CHANNEL/SEND DATA/RECEIVE DATA addresses (its destination device, section 8.7)."""
    destination = command.devices[1]
    return destination - 0x20 if 0x21 <= destination <= 0x27 else 0


def close_channel(channel_id: int, number: int = 1) -> ProactiveCommand:
    return ProactiveCommand.build(
        CommandType.CLOSE_CHANNEL, number=number, destination=DeviceId.channel(channel_id)
    )


def send_data(channel_id: int, data: bytes, *, immediate: bool, number: int = 1) -> ProactiveCommand:
    return ProactiveCommand.build(
        CommandType.SEND_DATA,
        [obj(Tag.CHANNEL_DATA, data)],
        number=number,
        qualifier=SEND_IMMEDIATELY if immediate else 0,
        destination=DeviceId.channel(channel_id),
    )


def receive_data(channel_id: int, length: int, number: int = 1) -> ProactiveCommand:
    return ProactiveCommand.build(
        CommandType.RECEIVE_DATA,
        [channel_data_length_object(length)],
        number=number,
        destination=DeviceId.channel(channel_id),
    )


def get_channel_status(number: int = 1) -> ProactiveCommand:
    return ProactiveCommand.build(CommandType.GET_CHANNEL_STATUS, number=number)


def set_up_event_list(events: Iterable[Event], number: int = 1) -> ProactiveCommand:
    return ProactiveCommand.build(
        CommandType.SET_UP_EVENT_LIST, [obj(Tag.EVENT_LIST, bytes(events))], number=number
    )


def poll_interval(seconds: int, number: int = 1) -> ProactiveCommand:
    return ProactiveCommand.build(
        CommandType.POLL_INTERVAL, [obj(Tag.DURATION, bytes((1, seconds)))], number=number
    )


def channel_data(message: CatMessage) -> bytes:
    item = message.get(Tag.CHANNEL_DATA)
    return item.value if item is not None else b""


def channel_data_length(message: CatMessage) -> int | None:
    item = message.get(Tag.CHANNEL_DATA_LENGTH)
    return item.value[0] if item is not None and item.value else None


def channel_statuses(message: CatMessage) -> list[dict[str, Any]]:
    return [_channel_status(item.value) for item in message.all(Tag.CHANNEL_STATUS) if len(item.value) == 2]


def buffer_size(message: CatMessage) -> int | None:
    item = message.get(Tag.BUFFER_SIZE)
    return int.from_bytes(item.value, "big") if item is not None and len(item.value) == 2 else None
