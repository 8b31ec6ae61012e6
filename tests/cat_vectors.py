"""Published CAT (ETSI TS 102 223) test vectors, shared by tests/test_cat_vectors.py and bench/bench_decode.py.

Every vector is the exact byte string of a public test suite, cited by project, file and array name. Most come from
oFono's unit tests, whose arrays are in turn the ETSI TS 102 384 / 3GPP TS 31.124 conformance PDUs (section numbers
are in their names: open_channel_211 is TS 102 384 27.22.4.27.2 sequence 1.1, and so on). `expect` holds what a
correct decoder must find: command details, device identities, and objects in wire order with (a subset of) their
fields in the docs/protocols.md ("Decoding what traces show") names. The values were read off the oFono test structures next to each array.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OFONO = "oFono unit/test-stkutil.c"
OFONO_DATA = "oFono unit/stk-test-data.h"

# receive_data_response_111 carries bytes C8..FF then 00..8F (200 bytes)
_RX200 = bytes((0xC8 + i) & 0xFF for i in range(200))
_DT161 = (
    b"This command instructs the ME to display a text message. It allows the SIM to define the priority of that "
    b"message, and the text string format. Two types of prio"
)
# send_sms_141's SMS-SUBMIT user data (160 octets, 8-bit) and alpha identifier ('11' is "_" in the SMS alphabet)
_SMS141_TEXT = (
    b"Two types are defined: - A short message to be sent to the network in an SMS-SUBMIT message, or an "
    b"SMS-COMMAND message, where the user data can be passed transp"
)
_SMS141_ALPHA = b"The address data object holds the RP\x11Destination\x11Address"
# pySim tests/unittests/test_ota.py, SmsOtaTestCase: SMS-DELIVER TPDUs (TS 23.040) whose user data is a TS 102 225
# secured command packet (UDH '70' CPI, CPL, CHL, SPI, KIc, KID, TAR B00011, ...) for SELECT 3F00. pySim's test
# builds them with TP-UDL = 03 (its own choice); the bytes are kept exactly as published.
OTA_TPDU_3DES_NOCC = "400881214365877FF6227052000000000302700000201506013535B000113190BE334900F52B025F3F7EDDFE868E96EBF310023B7769"
OTA_TPDU_AES_CC = (
    "400881214365877FF6227052000000000302700000281506192222B00011E87CCEEBB2D93083011CE294F93FC4D8DE80DA1ABAE8C37CA3E7"
    "2EC4432E5058"
)
PYSIM_OTA = "pySim tests/unittests/test_ota.py"
PYSIM_CAT = "pySim tests/unittests/test_cat.py"
_SMS_SC = "9111223344556677F8"  # the service centre address of oFono's SMS-PP and SEND SHORT MESSAGE vectors


def _sms_pp(tpdu_hex: str) -> str:
    """An SMS-PP DOWNLOAD envelope (TS 102 223 section 7.1.1: device identities network -> UICC, address, SMS
    TPDU) around a published TPDU, framed as oFono's sms_pp_data_download_161 frames its own."""
    body = "82028381" + "0609" + _SMS_SC + "8B" + _lh(len(tpdu_hex) // 2) + tpdu_hex
    return "D1" + _lh(len(body) // 2) + body


def _lh(length: int) -> str:
    return f"{length:02X}" if length < 0x80 else f"81{length:02X}"


_GPRS = {
    "bearer_type": 2,
    "parameters_hex": "030403041F02",
}  # precedence 3, delay 4, rel 3, peak 4, mean 31, IP


@dataclass(frozen=True)
class Vector:
    name: str  # the array name in the source
    source: str  # project and file
    data: bytes
    kind: str  # proactive_command | terminal_response | envelope
    command: tuple[int, int, int] | None = None  # number, type, qualifier
    device: tuple[str, str] = ("uicc", "terminal")
    envelope_tag: int | None = None
    objects: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def _cmd(name: str, src: str, hexdata: str | bytes, cmd: tuple[int, int, int], dev: str = "terminal",
         objects: list[tuple[str, dict[str, Any]]] | None = None) -> Vector:  # fmt: skip
    data = hexdata if isinstance(hexdata, bytes) else _h(hexdata)
    return Vector(name, src, data, "proactive_command", cmd, ("uicc", dev), None, objects or [])


def _tr(name: str, src: str, hexdata: str | bytes, cmd: tuple[int, int, int],
        objects: list[tuple[str, dict[str, Any]]]) -> Vector:  # fmt: skip
    data = hexdata if isinstance(hexdata, bytes) else _h(hexdata)
    return Vector(name, src, data, "terminal_response", cmd, ("terminal", "uicc"), None, objects)


def _env(name: str, src: str, hexdata: str, tag: int, source: str,
         objects: list[tuple[str, dict[str, Any]]]) -> Vector:  # fmt: skip
    return Vector(name, src, _h(hexdata), "envelope", None, (source, "uicc"), tag, objects)


def _ok(extra: str = "") -> tuple[str, dict[str, Any]]:
    return ("result", {"general": 0, "additional_hex": extra})


_OC_TEXTS = [
    ("text_string", {"dcs": 0xF4, "text": "UserLog"}),
    ("text_string", {"dcs": 0xF4, "text": "UserPwd"}),
    ("transport_level", {"protocol": 1, "port": 44444}),  # UDP client, remote connection
    ("other_address", {"type": "IPv4", "address": "1.1.1.1"}),
]
_OC_HEAD = [("bearer_description", _GPRS), ("buffer_size", {"size": 1400})]
_APN = ("network_access_name", {"apn": "TestGp.rs"})
_TA = "text_attribute"

VECTORS: list[Vector] = [
    # --- OPEN CHANNEL (TS 102 384 27.22.4.27.2) ----------------------------------------------------------------
    _cmd(
        "open_channel_211",
        OFONO,
        "D036 810301400182028182 35070203040304 1F02 39020578 0D08F4557365724C6F67 0D08F455736572507764"
        " 3C0301AD9C 3E052101010101",
        (1, 0x40, 0x01),
        objects=_OC_HEAD + _OC_TEXTS,
    ),
    _cmd(
        "open_channel_221",
        OFONO,
        "D042 810301400182028182 35070203040304 1F02 39020578 470A06546573744770027273"
        " 0D08F4557365724C6F67 0D08F455736572507764 3C0301AD9C 3E052101010101",
        (1, 0x40, 0x01),
        objects=_OC_HEAD + [_APN] + _OC_TEXTS,
    ),
    _cmd(
        "open_channel_231",
        OFONO,
        "D04B 810301400182028182 05074F70656E204944 35070203040304 1F02 39020578 470A06546573744770027273"
        " 0D08F4557365724C6F67 0D08F455736572507764 3C0301AD9C 3E052101010101",
        (1, 0x40, 0x01),
        objects=[("alpha_identifier", {"text": "Open ID"})] + _OC_HEAD + [_APN] + _OC_TEXTS,
    ),
    _cmd(
        "open_channel_241",
        OFONO,
        "D044 810301400182028182 0500 35070203040304 1F02 39020578 470A06546573744770027273"
        " 0D08F4557365724C6F67 0D08F455736572507764 3C0301AD9C 3E052101010101",
        (1, 0x40, 0x01),
        objects=[("alpha_identifier", {"text": ""})] + _OC_HEAD + [_APN] + _OC_TEXTS,
    ),
    _cmd(
        "open_channel_511",
        OFONO,
        "D053 810301400182028182 05094F70656E2049442031 35070203040304 1F02 39020578"
        " 470A06546573744770027273 0D08F4557365724C6F67 0D08F455736572507764 3C0301AD9C 3E052101010101"
        " D004000900B4",
        (1, 0x40, 0x01),
        objects=[("alpha_identifier", {"text": "Open ID 1"})]
        + _OC_HEAD
        + [_APN]
        + _OC_TEXTS
        + [(_TA, {"value_hex": "000900B4"})],
    ),
    # --- CLOSE CHANNEL (27.22.4.28) ------------------------------------------------------------------------------
    _cmd("close_channel_111", OFONO, "D009 810301410082028121", (1, 0x41, 0), "channel1"),
    _cmd(
        "close_channel_211",
        OFONO,
        "D01B 810301410082028121 850A436C6F7365204944 2031 D004000A00B4",
        (1, 0x41, 0),
        "channel1",
        [("alpha_identifier", {"text": "Close ID 1"}), (_TA, {"value_hex": "000A00B4"})],
    ),
    # --- RECEIVE DATA (27.22.4.29) ---------------------------------------------------------------------------
    _cmd(
        "receive_data_111",
        OFONO,
        "D00C 810301420082028121 B701C8",
        (1, 0x42, 0),
        "channel1",
        [("channel_data_length", {"length": 200})],
    ),
    _cmd(
        "receive_data_211",
        OFONO,
        "D022 810301420082028121 850E52656365697665204461746120 31 B701C8 D004000E00B4",
        (1, 0x42, 0),
        "channel1",
        [
            ("alpha_identifier", {"text": "Receive Data 1"}),
            ("channel_data_length", {"length": 200}),
            (_TA, {"value_hex": "000E00B4"}),
        ],
    ),
    # --- SEND DATA (27.22.4.30) -----------------------------------------------------------------------------
    _cmd(
        "send_data_111",
        OFONO,
        "D013 810301430182028121 B6080001020304050607",
        (1, 0x43, 0x01),
        "channel1",
        [("channel_data", {"data_hex": "0001020304050607"})],
    ),
    # send_data_121: 200 bytes of channel data, so both the command and the object use the '81' length form
    _cmd(
        "send_data_121",
        OFONO,
        _h("D081D4 810301430082028121 B681C8") + bytes(range(200)),
        (1, 0x43, 0x00),
        "channel1",
        [("channel_data", {"data_hex": bytes(range(200)).hex().upper()})],
    ),
    _cmd(
        "send_data_211",
        OFONO,
        "D026 810301430182028121 850B53656E6420446174612031 B6080001020304050607 D004000B00B4",
        (1, 0x43, 0x01),
        "channel1",
        [
            ("alpha_identifier", {"text": "Send Data 1"}),
            ("channel_data", {"data_hex": "0001020304050607"}),
            (_TA, {"value_hex": "000B00B4"}),
        ],
    ),
    # --- GET CHANNEL STATUS (27.22.4.31) ------------------------------------------------------------------------
    _cmd("get_channel_status_111", OFONO, "D009 810301440082028182", (1, 0x44, 0)),
    # --- SET UP EVENT LIST (27.22.4.16) ---------------------------------------------------------------------
    _cmd(
        "setup_event_list_111",
        OFONO,
        "D00C 810301050082028182 990104",
        (1, 0x05, 0),
        objects=[("event_list", {"events": [4]})],
    ),  # user activity
    _cmd(
        "setup_event_list_121",
        OFONO,
        "D00D 810301050082028182 99020507",
        (1, 0x05, 0),
        objects=[("event_list", {"events": [5, 7]})],
    ),  # idle screen, language selection
    _cmd(
        "setup_event_list_132",
        OFONO,
        "D00B 810301050082028182 9900",
        (1, 0x05, 0),
        objects=[("event_list", {"events": []})],
    ),  # remove the list
    # --- TIMER MANAGEMENT (27.22.4.21) ---------------------------------------------------------------------
    _cmd(
        "timer_mgmt_111",
        OFONO,
        "D011 810301270082028182 A40101 A503005000",
        (1, 0x27, 0),
        objects=[("timer_identifier", {"value_hex": "01"}), ("timer_value", {"value_hex": "005000"})],
    ),
    _cmd(
        "timer_mgmt_112",
        OFONO,
        "D00C 810301270282028182 A40101",
        (1, 0x27, 0x02),
        objects=[("timer_identifier", {"value_hex": "01"})],
    ),
    _cmd(
        "timer_mgmt_114",
        OFONO,
        "D00C 810301270182028182 A40101",
        (1, 0x27, 0x01),
        objects=[("timer_identifier", {"value_hex": "01"})],
    ),
    _cmd(
        "timer_mgmt_121",
        OFONO,
        "D011 810301270082028182 A40102 A503329595",
        (1, 0x27, 0),
        objects=[("timer_identifier", {"value_hex": "02"}), ("timer_value", {"value_hex": "329595"})],
    ),
    # --- REFRESH, POLLING OFF, PROVIDE LOCAL INFORMATION, MORE TIME (27.22.4.7, .14, .15, .2) ------------------
    _cmd(
        "refresh_121",
        OFONO,
        "D010 810301010182028182 9205013F002FE2",
        (1, 0x01, 0x01),
        objects=[("file_list", {"value_hex": "013F002FE2"})],
    ),  # one file: MF/EF_ICCID
    _cmd("refresh_151", OFONO, "D009 810301010482028182", (1, 0x01, 0x04)),  # UICC reset
    _cmd("polling_off_112", OFONO, "D009 810301040082028182", (1, 0x04, 0)),
    # --- POLL INTERVAL (27.22.4.6), SEND SHORT MESSAGE (3GPP TS 31.124 27.22.4.10) ---------------------------
    _cmd(
        "poll_interval_111",
        OFONO,
        "D00D 810301030082028182 84020114",
        (1, 0x03, 0),
        objects=[("duration", {"unit": 1, "interval": 20})],  # 20 seconds
    ),
    _cmd(
        "send_sms_111",
        OFONO,
        "D037 810301130082028183 8507 53656E6420534D 8609 9111223344556677F8"
        " 8B18 0100099110325476F840F40C54657374204D657373616765",
        (1, 0x13, 0),
        "network",
        [
            ("alpha_identifier", {"text": "Send SM"}),
            ("address", {"value_hex": _SMS_SC}),
            ("sms_tpdu", {"value_hex": "0100099110325476F840F40C54657374204D657373616765"}),
        ],
    ),  # SMS-SUBMIT to +01234567 (unpacked 8-bit) "Test Message"
    _cmd(
        "send_sms_121",
        OFONO,
        "D032 810301130182028183 8507 53656E6420534D 8609 9111223344556677F8"
        " 8B13 0100099110325476F840F407 53656E6420534D",
        (1, 0x13, 0x01),
        "network",
        [
            ("alpha_identifier", {"text": "Send SM"}),
            ("address", {"value_hex": _SMS_SC}),
            ("sms_tpdu", {"value_hex": "0100099110325476F840F40753656E6420534D"}),
        ],
    ),  # qualifier 01: packing by the terminal required
    # send_sms_141: a 172-byte TPDU, so the SMS TPDU object uses the '81' length form inside a '81' command
    _cmd(
        "send_sms_141",
        OFONO,
        _h("D081FD 810301130182028183 8538")
        + _SMS141_ALPHA
        + _h("8609 9111223344556677F8 8B81AC")
        + _h("0100099110325476F840F4A0")
        + _SMS141_TEXT,
        (1, 0x13, 0x01),
        "network",
        [
            ("alpha_identifier", {"text": "The address data object holds the RP_Destination_Address"}),
            ("address", {"value_hex": _SMS_SC}),
            ("sms_tpdu", {"value_hex": ("0100099110325476F840F4A0" + _SMS141_TEXT.hex()).upper()}),
        ],
    ),
    _cmd("provide_local_info_121", OFONO, "D009 810301260182028182", (1, 0x26, 0x01)),  # IMEI
    _cmd("provide_local_info_141", OFONO, "D009 810301260382028182", (1, 0x26, 0x03)),  # date/time
    _cmd("more_time_111", OFONO_DATA, "D009 810301020082028182", (1, 0x02, 0)),
    # --- DISPLAY TEXT (27.22.4.1) -------------------------------------------------------------------------------
    _cmd(
        "display_text_111",
        OFONO_DATA,
        "D01A 810301218082028102 8D0F04546F6F6C6B69742054657374 2031",
        (1, 0x21, 0x80),
        "display",
        [("text_string", {"dcs": 4, "text": "Toolkit Test 1"})],
    ),
    # 7-bit packed GSM text
    _cmd(
        "display_text_141",
        OFONO_DATA,
        "D019 810301218082028102 8D0E00D4F79BBD4ED341D4F29C0E9A01",
        (1, 0x21, 0x80),
        "display",
        [("text_string", {"dcs": 0, "text": "Toolkit Test 3"})],
    ),
    # 160 characters: '81' length form on the BER-TLV and on the text string
    _cmd(
        "display_text_161",
        OFONO_DATA,
        _h("D081AD 810301218082028102 8D81A104") + _DT161,
        (1, 0x21, 0x80),
        "display",
        [("text_string", {"dcs": 4, "text": _DT161.decode()})],
    ),
    _cmd(
        "display_text_191",
        OFONO_DATA,
        "D00F 810301218082028102 8D00 9E020001",
        (1, 0x21, 0x80),
        "display",
        [("text_string", {"dcs": 0, "text": ""}), ("icon_identifier", {"qualifier": 0, "id": 1})],
    ),
    _cmd(
        "display_text_611",
        OFONO_DATA,
        "D024 810301218082028102 8D19080417041404200410041204210422041204230419042204 15",
        (1, 0x21, 0x80),
        "display",
        [("text_string", {"dcs": 8, "text": "ЗДРАВСТВУЙТЕ"})],
    ),  # UCS2
    _cmd(
        "display_text_711",
        OFONO_DATA,
        "D019 810301218082028102 8D0A043130205365636F6E64 8402010A",
        (1, 0x21, 0x80),
        "display",
        [("text_string", {"dcs": 4, "text": "10 Second"}), ("duration", {"unit": 1, "interval": 10})],
    ),
    _cmd(
        "display_text_811",
        OFONO_DATA,
        "D022 810301218082028102 8D110454657874204174747269627574652031 D004001000B4",
        (1, 0x21, 0x80),
        "display",
        [("text_string", {"dcs": 4, "text": "Text Attribute 1"}), (_TA, {"value_hex": "001000B4"})],
    ),
    _cmd(
        "get_input_1211",
        OFONO_DATA,
        "D01B 810301230382028182 8D0C04456E7465722048656C6C6F 91020202",
        (1, 0x23, 0x03),
        objects=[
            ("text_string", {"dcs": 4, "text": "Enter Hello"}),
            ("response_length", {"value_hex": "0202"}),
        ],
    ),
    # --- TERMINAL RESPONSEs -----------------------------------------------------------------------------------
    _tr(
        "open_channel_response_211",
        OFONO,
        "810301400182028281830100 38028100 35070203040304 1F02 39020578",
        (1, 0x40, 0x01),
        [
            _ok(),
            ("channel_status", {"channel_id": 1, "link_established": True, "further_info": 0}),
            ("bearer_description", _GPRS),
            ("buffer_size", {"size": 1400}),
        ],
    ),
    _tr(
        "open_channel_response_271",
        OFONO,
        "810301400182028281830122 35070203040304 1F02 39020578",
        (1, 0x40, 0x01),
        [
            ("result", {"general": 0x22, "additional_hex": ""}),  # user did not accept
            ("bearer_description", _GPRS),
            ("buffer_size", {"size": 1400}),
        ],
    ),
    _tr(
        "close_channel_response_121",
        OFONO,
        "81030141008202828183023A03",
        (1, 0x41, 0),
        [("result", {"general": 0x3A, "additional_hex": "03"})],
    ),  # BIP error: channel id not valid
    _tr(
        "close_channel_response_131",
        OFONO,
        "81030141008202828183023A02",
        (1, 0x41, 0),
        [("result", {"general": 0x3A, "additional_hex": "02"})],
    ),  # BIP error: channel closed
    # 200 bytes of received data ('81' length form) and "more than 255 bytes remaining"
    _tr(
        "receive_data_response_111",
        OFONO,
        _h("810301420082028281830100 B681C8") + _RX200 + _h("B701FF"),
        (1, 0x42, 0),
        [
            _ok(),
            ("channel_data", {"data_hex": _RX200.hex().upper()}),
            ("channel_data_length", {"length": 255}),
        ],
    ),
    _tr(
        "send_data_response_111",
        OFONO,
        "810301430182028281830100 B701FF",
        (1, 0x43, 0x01),
        [_ok(), ("channel_data_length", {"length": 255})],
    ),
    _tr(
        "send_data_response_121",
        OFONO,
        "810301430082028281830100 B701FF",
        (1, 0x43, 0x00),
        [_ok(), ("channel_data_length", {"length": 255})],
    ),
    _tr(
        "send_data_response_151",
        OFONO,
        "81030143018202828183023A03",
        (1, 0x43, 0x01),
        [("result", {"general": 0x3A, "additional_hex": "03"})],
    ),
    _tr(
        "get_channel_status_response_111",
        OFONO,
        "810301440082028281830100 B8020000",
        (1, 0x44, 0),
        [_ok(), ("channel_status", {"channel_id": 0, "link_established": False, "further_info": 0})],
    ),
    _tr(
        "get_channel_status_response_121",
        OFONO,
        "810301440082028281830100 B8028100",
        (1, 0x44, 0),
        [_ok(), ("channel_status", {"channel_id": 1, "link_established": True, "further_info": 0})],
    ),
    _tr(
        "get_channel_status_response_131",
        OFONO,
        "810301440082028281830100 B8020105",
        (1, 0x44, 0),
        [_ok(), ("channel_status", {"channel_id": 1, "link_established": False, "further_info": 5})],
    ),
    _tr("display_text_response_111", OFONO_DATA, "810301218082028281830100", (1, 0x21, 0x80), [_ok()]),
    _tr(
        "display_text_response_121",
        OFONO_DATA,
        "81030121808202828183022001",
        (1, 0x21, 0x80),
        [("result", {"general": 0x20, "additional_hex": "01"})],
    ),  # terminal unable: screen busy
    _tr(
        "display_text_response_171",
        OFONO_DATA,
        "810301218082028281830111",
        (1, 0x21, 0x80),
        [("result", {"general": 0x11, "additional_hex": ""})],
    ),  # backward move
    _tr("more_time_response_111", OFONO_DATA, "810301020082028281830100", (1, 0x02, 0), [_ok()]),
    _tr(
        "poll_interval_response_111",
        OFONO,
        "810301030082028281830100 84020114",
        (1, 0x03, 0),
        [_ok(), ("duration", {"unit": 1, "interval": 20})],
    ),  # TS 102 384: the terminal accepts 20 s
    _tr(
        "poll_interval_response_111a",
        OFONO,
        "810301030082028281830100 84020001",
        (1, 0x03, 0),
        [_ok(), ("duration", {"unit": 0, "interval": 1})],
    ),  # TS 31.124: the terminal rounds to 1 minute
    _tr("polling_off_response_112", OFONO, "810301040082028281830100", (1, 0x04, 0), [_ok()]),
    _tr("send_sms_response_111", OFONO, "810301130082028281830100", (1, 0x13, 0), [_ok()]),
    _tr("send_sms_response_121", OFONO, "810301130182028281830100", (1, 0x13, 0x01), [_ok()]),
    _tr(
        "provide_local_info_response_111a",
        OFONO,
        "810301260082028281830100 930700F110000100 01",
        (1, 0x26, 0),
        [_ok(), ("location_information", {"value_hex": "00F11000010001"})],
    ),  # MCC 001, MNC 01, LAC 0001, cell 0001
    _tr(
        "provide_local_info_response_121",
        OFONO + "; " + PYSIM_CAT + " IMEI_Test",
        "810301260182028281830100 94081A32547698103254",
        (1, 0x26, 0x01),
        [_ok(), ("imei", {"value_hex": "1A32547698103254"})],
    ),  # IMEI 123456789012345 (TS 24.008 mobile identity value part)
    _tr(
        "provide_local_info_response_141",
        OFONO,
        "810301260382028281830100 A607205070418071FF",
        (1, 0x26, 0x03),
        [_ok(), ("date_time_and_time_zone", {"value_hex": "205070418071FF"})],
    ),  # 2002-05-07 14:08:17, no time zone
    _tr(
        "provide_local_info_response_191",
        OFONO + "; " + PYSIM_CAT + " IMEISV_Test",
        "810301260882028281830100 E2091332547698103254F6",
        (1, 0x26, 0x08),
        [_ok(), ("imeisv", {"value_hex": "1332547698103254F6"})],
    ),  # IMEISV 1234567890123456
    _tr(
        "provide_local_info_response_1171",
        OFONO,
        "810301260082028281830100 930900F11000010000001F",
        (1, 0x26, 0),
        [_ok(), ("location_information", {"value_hex": "00F11000010000001F"})],
    ),  # E-UTRAN: TAC 0001, 28-bit cell identity 0000001
    _tr(
        "get_inkey_response_611b",
        OFONO,
        "8103012200820282818301048D02042B",
        (1, 0x22, 0),
        [("result", {"general": 0x04, "additional_hex": ""}), ("text_string", {"dcs": 4, "text": "+"})],
    ),
    _tr(
        "get_inkey_response_711",
        OFONO,
        "810301228082028281830113",
        (1, 0x22, 0x80),
        [("result", {"general": 0x13, "additional_hex": ""})],
    ),  # help requested
    _tr(
        "get_input_response_812",
        OFONO,
        "8103012300820282818301008D06043232323232",
        (1, 0x23, 0),
        [_ok(), ("text_string", {"dcs": 4, "text": "22222"})],
    ),
    # --- ENVELOPEs ----------------------------------------------------------------------------------------------
    _env(
        "event_download_data_available_111",
        OFONO,
        "D60E 99010982028281 B8028100 B701FF",
        0xD6,
        "terminal",
        [
            ("event_list", {"events": [9]}),
            ("channel_status", {"channel_id": 1, "link_established": True, "further_info": 0}),
            ("channel_data_length", {"length": 255}),
        ],
    ),
    _env(
        "event_download_channel_status_131",
        OFONO,
        "D60B 99010A82028281 B8020105",
        0xD6,
        "terminal",
        [
            ("event_list", {"events": [10]}),
            ("channel_status", {"channel_id": 1, "link_established": False, "further_info": 5}),
        ],
    ),  # dropped
    _env(
        "event_download_channel_status_211",
        OFONO,
        "D60B 99010A82028281 B8024100",
        0xD6,
        "terminal",
        [
            ("event_list", {"events": [10]}),
            ("channel_status", {"channel_id": 1, "link_established": False, "further_info": 0}),
        ],
    ),  # listen
    _env(
        "event_download_channel_status_221",
        OFONO,
        "D60B 99010A82028281 B8028100",
        0xD6,
        "terminal",
        [
            ("event_list", {"events": [10]}),
            ("channel_status", {"channel_id": 1, "link_established": True, "further_info": 0}),
        ],
    ),
    _env(
        "event_download_location_status_111",
        OFONO,
        "D60A 99010382028281 9B0102",
        0xD6,
        "terminal",
        [("event_list", {"events": [3]}), ("location_status", {"value_hex": "02"})],
    ),  # no service
    _env(
        "event_download_location_status_112a",
        OFONO,
        "D615 99010382028281 9B0100 130900F110000200020001",
        0xD6,
        "terminal",
        [
            ("event_list", {"events": [3]}),
            ("location_status", {"value_hex": "00"}),
            ("location_information", {"value_hex": "00F110000200020001"}),
        ],
    ),  # MCC 001 MNC 01 LAC 2 CI 2
    _env(
        "event_download_user_activity_111",
        OFONO,
        "D607 99010482028281",
        0xD6,
        "terminal",
        [("event_list", {"events": [4]})],
    ),
    _env(
        "event_download_mt_call_112",
        OFONO,
        "D60F 99010082028381 9C0100 0603818967",
        0xD6,
        "network",
        [
            ("event_list", {"events": [0]}),
            ("transaction_identifier", {"value_hex": "00"}),
            ("address", {"value_hex": "818967"}),
        ],
    ),
    _env(
        "event_download_call_disconnected_112b",
        OFONO,
        "D60E 99010282028281 9C0180 1A026090",
        0xD6,
        "terminal",
        [
            ("event_list", {"events": [2]}),
            ("transaction_identifier", {"value_hex": "80"}),
            ("cause", {"value_hex": "6090"}),
        ],
    ),
    _env(
        "event_download_network_rejection_111",
        OFONO,
        "D617 99011282028381 7D0500F1100001 BF0108 F40109 F5010B",
        0xD6,
        "network",
        [
            ("event_list", {"events": [0x12]}),  # network rejection: EPS attach, PLMN not allowed
            ("tracking_area_identification", {"value_hex": "00F1100001"}),
            ("access_technology", {"value_hex": "08"}),
            ("update_attach_type", {"value_hex": "09"}),
            ("rejection_cause_code", {"value_hex": "0B"}),
        ],
    ),
    _env(
        "timer_expiration_211",
        OFONO,
        "D70C 82028281 A40101 A503000001",
        0xD7,
        "terminal",
        [("timer_identifier", {"value_hex": "01"}), ("timer_value", {"value_hex": "000001"})],
    ),
    _env(
        "timer_expiration_221a",
        OFONO,
        "D70C 82028281 A40101 A503000003",
        0xD7,
        "terminal",
        [("timer_identifier", {"value_hex": "01"}), ("timer_value", {"value_hex": "000003"})],
    ),
    _env(
        "sms_pp_data_download_161",
        OFONO,
        "D12D 82028381 06099111223344556677F8 8B1C 04049121437F16891010000000000D53686F7274204D657373616765",
        0xD1,
        "network",
        [
            ("address", {"value_hex": "9111223344556677F8"}),
            ("sms_tpdu", {"value_hex": "04049121437F16891010000000000D53686F7274204D657373616765"}),
        ],
    ),
    # SMS-PP DOWNLOAD envelopes carrying TS 102 225 secured command packets
    _env(
        "sms_pp_download_ota_3des_nocc",
        PYSIM_OTA + " SmsOtaTestCase 3DES-SJA5-UNCIPHERED-NOCC encoded_tpdu",
        _sms_pp(OTA_TPDU_3DES_NOCC),
        0xD1,
        "network",
        [("address", {"value_hex": _SMS_SC}), ("sms_tpdu", {"value_hex": OTA_TPDU_3DES_NOCC})],
    ),
    _env(
        "sms_pp_download_ota_aes_cc",
        PYSIM_OTA + " SmsOtaTestCase AES128-SJA5-CIPHERED-CC encoded_tpdu",
        _sms_pp(OTA_TPDU_AES_CC),
        0xD1,
        "network",
        [("address", {"value_hex": _SMS_SC}), ("sms_tpdu", {"value_hex": OTA_TPDU_AES_CC})],
    ),
    _env(
        "menu_selection_211",
        OFONO,
        "D309 82020181 900102 1500",
        0xD3,
        "keypad",
        [("item_identifier", {"value_hex": "02"}), ("help_request", {"value_hex": ""})],
    ),
    _env(
        "call_control_111a",
        OFONO,
        "D425 82028281 860B9110325476981032547698 070706600402000581 130900F110000100010001",
        0xD4,
        "terminal",
        [
            ("address", {"value_hex": "9110325476981032547698"}),
            ("capability_configuration_parameters", {"value_hex": "06600402000581"}),
            ("location_information", {"value_hex": "00F110000100010001"}),
        ],
    ),
    _env(
        "mo_short_message_control_111a",
        OFONO,
        "D522 02028281 06099111223344556677F8 06069110325476F8 130900F110000100010001",
        0xD5,
        "terminal",
        [
            ("address", {"value_hex": "9111223344556677F8"}),
            ("address", {"value_hex": "9110325476F8"}),
            ("location_information", {"value_hex": "00F110000100010001"}),
        ],
    ),
]
