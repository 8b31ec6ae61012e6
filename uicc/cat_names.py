"""Names of the values inside CAT simple objects (ETSI TS 102 223 section 8, 3GPP TS 31.111 section 8, 3GPP TS 23.038
section 4), spelled as Wireshark's card application toolkit dissector (epan/dissectors/packet-card_app_toolkit.c)
shows them, so that `bipsim decode` and a Wireshark capture of the same bytes read alike.

Every table maps the raw value to its name; `name_of` answers "reserved (0xNN)" for a value a table does not list.
`object_names` adds `<field>_name` keys (and the decoded bearer parameters) to the fields of one decoded object
without changing any existing key (docs/protocols.md, "Decoding what traces show").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# TS 102 223 section 8.52 bearer type (packet-card_app_toolkit.c bearer_descr_vals)
BEARER_TYPES: dict[int, str] = {
    0x01: "CSD",
    0x02: "GPRS / UTRAN packet service / E-UTRAN",
    0x03: "default bearer for requested transport layer",
    0x04: "local link technology independent",
    0x05: "Bluetooth",
    0x06: "IrDA",
    0x07: "RS232",
    0x08: "TIA/EIA/IS-820 packet data service",
    0x09: "UTRAN packet service with extended parameters / HSDPA / E-UTRAN",
    0x0A: "I-WLAN",
    0x0B: "E-UTRAN / Mapped UTRAN packet service",
    0x10: "USB",
}

# TS 102 223 section 8.52.2: packet data protocol type of the GPRS bearer (gprs_prot_type_vals)
GPRS_PDP_TYPES: dict[int, str] = {0x02: "IP (Internet Protocol, IETF STD 5)"}

# PDP type of the UTRAN extended and E-UTRAN bearers, sections 8.52.3 and 8.52.5 (pdp_type_vals)
PDP_TYPES: dict[int, str] = {1: "X.25", 2: "IP", 3: "IPV6", 4: "IPV4V6", 5: "OSPIH", 6: "PPP"}

# Section 8.52.3 (3GPP TS 24.008 10.5.6.5 QoS): traffic class, delivery order, delivery of erroneous SDUs
UTRAN_TRAFFIC_CLASSES: dict[int, str] = {
    0: "Conversational",
    1: "Streaming",
    2: "Interactive",
    3: "Background",
    4: "Subscribed value",
}
UTRAN_DELIVERY_ORDER: dict[int, str] = {0: "No", 1: "Yes", 2: "Subscribed value"}
UTRAN_ERRONEOUS_SDUS: dict[int, str] = {0: "No", 1: "Yes", 2: "No detect", 3: "Subscribed value"}

# Section 8.52.1 CSD bearer (3GPP TS 27.007 +CBST): bearer service and connection element
CSD_BEARER_SERVICES: dict[int, str] = {
    0: "Data circuit asynchronous (UDI or 3.1 kHz modem)",
    1: "Data circuit synchronous (UDI or 3.1 kHz modem)",
    2: "PAD Access (asynchronous) (UDI)",
    3: "Packet Access (synchronous) (UDI)",
    4: "Data circuit asynchronous (RDI)",
    5: "Data circuit synchronous (RDI)",
    6: "PAD Access (asynchronous) (RDI)",
    7: "Packet Access (synchronous) (RDI)",
}
CSD_CONNECTION_ELEMENTS: dict[int, str] = {
    0: "Transparent",
    1: "Non-transparent",
    2: "Both, transparent preferred",
    3: "Both, non-transparent preferred",
}

# Section 8.59 UICC/terminal interface transport level: transport protocol type (transport_ptype_vals)
TRANSPORT_PROTOCOLS: dict[int, str] = {
    0x01: "UDP, UICC in client mode, remote connection",
    0x02: "TCP, UICC in client mode, remote connection",
    0x03: "TCP, UICC in server mode",
    0x04: "UDP, UICC in client mode, local connection",
    0x05: "TCP, UICC in client mode, local connection",
    0x06: "direct communication channel",
}

# Section 8.58 other address: type of address (other_address_coding_vals)
ADDRESS_TYPES: dict[int, str] = {0x21: "IPv4 address", 0x57: "IPv6 address"}

# Section 8.12 general result (result_vals)
GENERAL_RESULTS: dict[int, str] = {
    0x00: "Command performed successfully",
    0x01: "Command performed with partial comprehension",
    0x02: "Command performed with missing information",
    0x03: "REFRESH performed with additional EFs read",
    0x04: "Command performed successfully, but requested icon could not be displayed",
    0x05: "Command performed, but modified by call control by NAA",
    0x06: "Command performed successfully, limited service",
    0x07: "Command performed with modifications",
    0x08: "REFRESH performed by indicated NAA was not active",
    0x09: "Command performed successfully, tone not played",
    0x10: "Proactive UICC session terminated by the user",
    0x11: "Backward move in the proactive UICC session requested by user",
    0x12: "No response from user",
    0x13: "Help information required by the user",
    0x14: "USSD or SS transaction terminated by the user",
    0x20: "Terminal currently unable to process command",
    0x21: "Network currently unable to process command",
    0x22: "User did not accept the proactive command",
    0x23: "User cleared down call before connection or network refuse",
    0x24: "Action in contradiction with the current timer state",
    0x25: "Interaction with call control by NAA temporary problem",
    0x26: "Launch browser generic error code",
    0x27: "MMS temporary problem",
    0x30: "Command beyond terminal's capabilities",
    0x31: "Command type not understood by terminal",
    0x32: "Command data not understood by terminal",
    0x33: "Command number not known by terminal",
    0x34: "SS Return Error",
    0x35: "SMS RP-ERROR",
    0x36: "Error, required values are missing",
    0x37: "USSD Return Error",
    0x38: "MultipleCard commands error",
    0x39: "Interaction with call control by USIM or MO short message control by USIM, permanent problem",
    0x3A: "Bearer Independent Protocol error",
    0x3B: "Access Technology unable to process command",
    0x3C: "Frames error",
    0x3D: "MMS error",
}

# Section 8.12.2 additional information for "terminal currently unable to process command" (result_term_vals)
TERMINAL_PROBLEMS: dict[int, str] = {
    0x00: "No specific cause can be given",
    0x01: "Screen is busy",
    0x02: "Terminal currently busy on call",
    0x03: "ME currently busy on SS transaction",
    0x04: "No service",
    0x05: "Access control class bar",
    0x06: "Radio resource not granted",
    0x07: "Not in speech call",
    0x08: "ME currently busy on USSD transaction",
    0x09: "Terminal currently busy on SEND DTMF command",
    0x0A: "No NAA active",
}

# Section 8.12.10 launch browser problems (result_launch_browser_vals)
LAUNCH_BROWSER_PROBLEMS: dict[int, str] = {
    0x00: "No specific cause can be given",
    0x01: "Bearer unavailable",
    0x02: "Browser unavailable",
    0x03: "Terminal unable to read the provisioning data",
    0x04: "Default URL unavailable",
}

# Section 8.12.9 MultipleCard command problems (result_multiplecard_vals)
MULTIPLE_CARD_PROBLEMS: dict[int, str] = {
    0x00: "No specific cause can be given",
    0x01: "Card reader removed or not present",
    0x02: "Card removed or not present",
    0x03: "Card reader busy",
    0x04: "Card powered off",
    0x05: "C-APDU format error",
    0x06: "Mute card",
    0x07: "Transmission error",
    0x08: "Protocol not supported",
    0x09: "Specified reader not valid",
}

# Section 8.12.8 call control / MO SM control problems (result_cc_ctrl_mo_sm_ctrl_vals)
CALL_CONTROL_PROBLEMS: dict[int, str] = {
    0x00: "No specific cause can be given",
    0x01: "Action not allowed",
    0x02: "The type of request has changed",
}

# Section 8.12.11 Bearer Independent Protocol causes (result_bip_vals)
BIP_CAUSES: dict[int, str] = {
    0x00: "No specific cause can be given",
    0x01: "No channel available",
    0x02: "Channel closed",
    0x03: "Channel identifier not valid",
    0x04: "Requested buffer size not available",
    0x05: "Security error (unsuccessful authentication)",
    0x06: "Requested UICC/terminal interface transport level not available",
    0x07: "Remote device is not reachable",
    0x08: "Service error",
    0x09: "Service identifier unknown",
    0x10: "Port not available",
    0x11: "Launch parameters missing or incorrect",
    0x12: "Application launch failed",
}

# Section 8.12.12 frames problems (result_frames_cmd_vals)
FRAMES_PROBLEMS: dict[int, str] = {
    0x00: "No specific cause can be given",
    0x01: "Frame identifier is not valid",
    0x02: "Number of frames beyond the terminal's capabilities",
    0x03: "No Frame defined",
    0x04: "Requested size not supported",
    0x05: "Default Active Frame is not valid",
}

# Which table names the first additional information byte, by general result (the dissector's switch)
ADDITIONAL_INFORMATION: dict[int, dict[int, str]] = {
    0x20: TERMINAL_PROBLEMS,
    0x26: LAUNCH_BROWSER_PROBLEMS,
    0x38: MULTIPLE_CARD_PROBLEMS,
    0x39: CALL_CONTROL_PROBLEMS,
    0x3A: BIP_CAUSES,
    0x3C: FRAMES_PROBLEMS,
}

# Section 8.25 event list (event_list_vals)
EVENTS: dict[int, str] = {
    0x00: "MT call",
    0x01: "Call connected",
    0x02: "Call disconnected",
    0x03: "Location status",
    0x04: "User activity",
    0x05: "Idle screen available",
    0x06: "Card reader status",
    0x07: "Language selection",
    0x08: "Browser termination",
    0x09: "Data available",
    0x0A: "Channel status",
    0x0B: "Access Technology Change (single access technology)",
    0x0C: "Display parameters changed",
    0x0D: "Local connection",
    0x0E: "Network Search Mode Change",
    0x0F: "Browsing status",
    0x10: "Frames Information Change",
    0x11: "I-WLAN Access Status",
    0x12: "Network Rejection",
    0x13: "HCI connectivity event",
    0x14: "Access Technology Change (multiple access technologies)",
    0x15: "CSG cell selection",
    0x16: "Contactless state request",
    0x17: "IMS Registration",
    0x18: "Incoming IMS data",
    0x19: "Profile Container",
    0x1A: "Void",
    0x1B: "Secured Profile Container",
    0x1C: "Poll Interval Negotiation",
}

# Section 8.56 channel status, second byte
CHANNEL_STATUS_INFO: dict[int, str] = {
    0x00: "No further info can be given",
    0x05: "Link dropped (network failure or user cancellation)",
}

# Section 8.8 duration: time unit (time_unit_vals)
TIME_UNITS: dict[int, str] = {0x00: "minutes", 0x01: "seconds", 0x02: "tenths of seconds"}

# TS 101 220 section 7.2 BER-TLV tags of envelopes (the gsm_sim dissector's ber_tlv tag table)
ENVELOPE_TAGS: dict[int, str] = {
    0xD1: "SMS-PP Download",
    0xD2: "Cell Broadcast Download",
    0xD3: "Menu selection",
    0xD4: "Call Control",
    0xD5: "MO Short Message control",
    0xD6: "Event Download",
    0xD7: "Timer Expiration",
}

# Section 8.6 command qualifiers that are a value rather than bits (cmd_qual_refresh_vals, cmd_qual_loci_vals,
# cmd_qual_timer_mgmt_vals)
REFRESH_QUALIFIERS: dict[int, str] = {
    0x00: "NAA Initialization and Full File Change Notification",
    0x01: "File Change Notification",
    0x02: "NAA Initialization and File Change Notification",
    0x03: "NAA Initialization",
    0x04: "UICC Reset",
    0x05: "NAA Application Reset, only applicable for a 3G platform",
    0x06: "NAA Session Reset, only applicable for a 3G platform",
    0x07: "Steering of Roaming",
    0x08: "Steering of Roaming for I-WLAN",
}
LOCAL_INFORMATION_QUALIFIERS: dict[int, str] = {
    0x00: "Location Information (MCC, MNC, LAC/TAC, Cell Identity and Extended Cell Identity)",
    0x01: "IMEI of the terminal",
    0x02: "Network Measurement results",
    0x03: "Date, time and time zone",
    0x04: "Language setting",
    0x05: "Timing Advance",
    0x06: "Access Technology (single access technology)",
    0x07: "ESN of the terminal",
    0x08: "IMEISV of the terminal",
    0x09: "Search Mode",
    0x0A: "Charge State of the Battery",
    0x0B: "MEID of the terminal",
}
TIMER_MANAGEMENT_QUALIFIERS: dict[int, str] = {0x00: "Start", 0x01: "Deactivate", 0x02: "Get current value"}

# Section 8.6 command qualifier bits, per command type: (mask, name when set, name when clear). The SEND DATA and
# SEND SHORT MESSAGE wording is the dissector's (cmd_qual_send_data_value, cmd_qual_send_short_msg_value); the
# OPEN CHANNEL bits, which the dissector does not break down, are the specification's wording.
QUALIFIER_BITS: dict[int, tuple[tuple[int, str, str], ...]] = {
    0x40: (  # OPEN CHANNEL
        (0x01, "immediate link establishment", "on demand link establishment"),
        (0x02, "automatic reconnection", "no automatic reconnection"),
        (0x04, "immediate link establishment in background mode", "no background mode"),
        (0x08, "DNS server address(es) requested", ""),
    ),
    0x43: ((0x01, "Send data immediately", "Store data in Tx buffer"),),  # SEND DATA
    0x13: ((0x01, "SMS packing by the terminal required", "Packing not required"),),  # SEND SHORT MESSAGE
    0x21: (  # DISPLAY TEXT
        (0x01, "high priority", "normal priority"),
        (0x80, "wait for user to clear message", "clear message after a delay"),
    ),
}
QUALIFIER_VALUES: dict[int, tuple[int, dict[int, str]]] = {
    0x01: (0xFF, REFRESH_QUALIFIERS),
    0x26: (0xFF, LOCAL_INFORMATION_QUALIFIERS),
    0x27: (0x03, TIMER_MANAGEMENT_QUALIFIERS),
}


def name_of(table: Mapping[int, str], value: int) -> str:
    """The table's name for `value`, or "reserved (0xNN)"."""
    name = table.get(value)
    return name if name is not None else f"reserved (0x{value:02X})"


def dcs_name(dcs: int) -> str:
    """A data coding scheme (3GPP TS 23.038 section 4): its alphabet, and its message class where it has one."""
    group = dcs >> 4
    if group <= 0x07:  # general data coding (0xxx): bits 3-2 alphabet, bit 4 "class meaningful"
        if group & 0x02:
            alphabet = "compressed"
        else:
            alphabet = ("GSM 7 bit default alphabet", "8 bit data", "UCS2 (16 bit)", "reserved alphabet")[
                (dcs >> 2) & 0x03
            ]
        if dcs & 0x10:
            return f"{alphabet}, class {dcs & 0x03}"
        return alphabet
    if group == 0x0F:  # data coding / message class: bit 3 alphabet (7 bit or 8 bit), bits 1-0 class
        alphabet = "8 bit data" if dcs & 0x04 else "GSM 7 bit default alphabet"
        return f"{alphabet}, class {dcs & 0x03}"
    if group in (0x0C, 0x0D):
        return "message waiting indication, " + ("discard message" if group == 0x0C else "GSM 7 bit")
    if group == 0x0E:
        return "message waiting indication, UCS2 (16 bit)"
    return f"reserved coding group (0x{dcs:02X})"


def qualifier_name(command_type: int, qualifier: int) -> str:
    """What a command qualifier means for this command type (section 8.6); "" when the type has none named."""
    if command_type in QUALIFIER_VALUES:
        mask, table = QUALIFIER_VALUES[command_type]
        return name_of(table, qualifier & mask)
    bits = QUALIFIER_BITS.get(command_type)
    if bits is None:
        return ""
    names = [on if qualifier & mask else off for mask, on, off in bits]
    return ", ".join(name for name in names if name)


def bearer_parameters(bearer_type: int, parameters: bytes) -> dict[str, Any]:
    """The QoS parameters of a bearer description (section 8.52), named as the dissector names them; {} when
    the bearer has none decoded here or the parameters are shorter than their structure."""
    p = parameters
    if bearer_type == 0x01 and len(p) >= 3:  # 8.52.1 CSD
        return {
            "data_rate": p[0],
            "bearer_service": p[1],
            "bearer_service_name": name_of(CSD_BEARER_SERVICES, p[1]),
            "connection_element": p[2],
            "connection_element_name": name_of(CSD_CONNECTION_ELEMENTS, p[2]),
        }
    if bearer_type == 0x02 and len(p) >= 6:  # 8.52.2 GPRS / UTRAN packet service / E-UTRAN
        return {
            "precedence_class": p[0],
            "delay_class": p[1],
            "reliability_class": p[2],
            "peak_throughput_class": p[3],
            "mean_throughput_class": p[4],
            "pdp_type": p[5],
            "pdp_type_name": name_of(GPRS_PDP_TYPES, p[5]),
        }
    if bearer_type == 0x09 and len(p) >= 17:  # 8.52.3 UTRAN packet service with extended parameters
        return {
            "traffic_class": p[0],
            "traffic_class_name": name_of(UTRAN_TRAFFIC_CLASSES, p[0]),
            "max_bitrate_ul": int.from_bytes(p[1:3], "big"),
            "max_bitrate_dl": int.from_bytes(p[3:5], "big"),
            "guaranteed_bitrate_ul": int.from_bytes(p[5:7], "big"),
            "guaranteed_bitrate_dl": int.from_bytes(p[7:9], "big"),
            "delivery_order": p[9],
            "delivery_order_name": name_of(UTRAN_DELIVERY_ORDER, p[9]),
            "max_sdu_size": p[10],
            "sdu_error_ratio": p[11],
            "residual_bit_error_ratio": p[12],
            "delivery_of_erroneous_sdus": p[13],
            "delivery_of_erroneous_sdus_name": name_of(UTRAN_ERRONEOUS_SDUS, p[13]),
            "transfer_delay": p[14],
            "traffic_handling_priority": p[15],
            "pdp_type": p[16],
            "pdp_type_name": name_of(PDP_TYPES, p[16]),
        }
    if bearer_type == 0x0B and len(p) >= 2:  # 8.52.5 E-UTRAN: EPS QoS (TS 24.301 9.9.4.3), then the PDP type
        return {
            "qci": p[0],
            "eps_qos_hex": p[:-1].hex().upper(),
            "pdp_type": p[-1],
            "pdp_type_name": name_of(PDP_TYPES, p[-1]),
        }
    return {}


def object_names(tag: int, fields: dict[str, Any]) -> dict[str, Any]:
    """The fields of one decoded object (tag without CR) with the names of their values added beside them."""
    if "value_hex" in fields:
        return fields
    out = dict(fields)
    if tag == 0x03 and "general" in fields:  # result
        general = fields["general"]
        out["general_name"] = name_of(GENERAL_RESULTS, general)
        additional = bytes.fromhex(fields["additional_hex"])
        table = ADDITIONAL_INFORMATION.get(general)
        if table is not None and additional:
            out["additional_information"] = additional[0]
            out["additional_information_name"] = name_of(table, additional[0])
    elif tag == 0x35 and "bearer_type" in fields:  # bearer description
        out["bearer_type_name"] = name_of(BEARER_TYPES, fields["bearer_type"])
        out.update(bearer_parameters(fields["bearer_type"], bytes.fromhex(fields["parameters_hex"])))
    elif tag == 0x3C and "protocol" in fields:  # transport level
        out["protocol_name"] = name_of(TRANSPORT_PROTOCOLS, fields["protocol"])
    elif tag == 0x0D and "dcs" in fields:  # text string
        out["dcs_name"] = dcs_name(fields["dcs"])
    elif tag == 0x19 and "events" in fields:  # event list
        out["event_names"] = [name_of(EVENTS, event) for event in fields["events"]]
    elif tag == 0x38 and "further_info" in fields:  # channel status, section 8.56
        out["further_info_name"] = name_of(CHANNEL_STATUS_INFO, fields["further_info"])
    return out
