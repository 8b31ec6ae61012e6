"""`bipsim decode` reads what traces show and names what it reads.

- Every form a trace of this project holds decodes in auto mode: the hex strings below were copied from
  `bipsim scenario run embodiment1 --trace` and `bipsim scenario run sms-trigger --trace` (events of layer `apdu`,
  and the `%SMSPP` answer on DLC 1).
- The name tables match their published sources: Wireshark's epan/dissectors/packet-card_app_toolkit.c (value_string
  tables bearer_descr_vals, transport_ptype_vals, result_vals, result_bip_vals, event_list_vals, ...), Wireshark's
  packet-gsm_sim.c, pySim's pySim/ts_102_221.py (instruction table `ts_102_22x_cmdset` and the status word table of
  CardProfileUICC), 3GPP TS 23.038 section 4 for the data coding scheme.
- Arbitrary bytes raise nothing but TlvError (the CLI: exit 2 and one line).
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bipsim.cli import main
from bipsim.uicc.apdu_names import INSTRUCTIONS, STATUS_WORDS, StatusWord
from bipsim.uicc.cat_names import (
    BEARER_TYPES,
    BIP_CAUSES,
    EVENTS,
    GENERAL_RESULTS,
    PDP_TYPES,
    TRANSPORT_PROTOCOLS,
    dcs_name,
    qualifier_name,
)
from bipsim.uicc.cat_render import INPUT_KINDS, decode_input, describe_bytes, render_json, render_tree
from bipsim.uicc.tlv import TlvError

# --- real hex from the project's traces ------------------------------------------------------------------------

# embodiment1: the card's answers (R-APDUs: FETCH data + SW, bare SWs, file data + SW)
FETCH_SET_UP_EVENT_LIST = "D00D8103010500820281829902090A9000"
FETCH_OPEN_CHANNEL = "D01C810302400582028182350103390205783C03029B0B3E05217F0000019000"
FETCH_SEND_DATA = (
    "D041810303430182028121B63616030300310100002D0303CC25479F1619757BE4CD3E4065F9EF18A2347FC8C841BA3DFE27F57A0F"
    "EB83E800000600AE008C00A801009000"
)
FETCH_RECEIVE_DATA = "D00C810304420082028121B701639000"
FETCH_CLOSE_CHANNEL = "D0098103214100820281219000"
SW_PROACTIVE_PENDING = "910F"
SW_RESPONSE_AVAILABLE = "6124"
READ_BINARY_ANSWER = "0809101010325476989000"
GET_RESPONSE_ANSWER = "62228202782183027FF08410A0000000871002FF33FF0189000001008A01058B032F06019000"
# embodiment1: the CP's commands (C-APDUs)
TERMINAL_PROFILE = "8010000014730FE181110C00030100001FE200000043000000"
FETCH = "801200000F"
TR_SET_UP_EVENT_LIST = "801400000C810301050082028281830100"
TR_OPEN_CHANNEL = "80140000178103024005820282818301003802010035010339020578"
ENVELOPE_CHANNEL_STATUS = "80C200000DD60B99010A82028281B8028100"
ENVELOPE_DATA_AVAILABLE = "80C2000010D60E99010982028281B8028100B70163"
SELECT_ADF_USIM = "00A4040410A0000000871002FF33FF018900000100"
SELECT_EF_IMSI = "00A4000C026F07"
READ_BINARY_IMSI = "00B0000009"
GET_RESPONSE = "00C0000024"
# sms-trigger: the SMS-PP DOWNLOAD envelope, its TPDU alone (as AT%SMSPP carried it), the PoR (as %SMSPP answered
# it) and the GET RESPONSE answer carrying that PoR
ENVELOPE_SMS_PP = (
    "80C200004ED14C820283810607914421436587098B3D4405812143F57FF6521070200000002D02700000281516011212000000EEF248"
    "2A9E16010B8E0D0E5D750A250778EB4F08ECE43E05B77B8ACA2E6C4DCE"
)
SMS_DELIVER = ENVELOPE_SMS_PP[ENVELOPE_SMS_PP.index("8B3D") + 4 :]
POR = "027100000E0A00000000000000010000019000"
POR_ANSWER = POR + "910F"

TRACE_FORMS: list[tuple[str, str, str]] = [
    # (hex, JSON kind, headline)
    (FETCH_SET_UP_EVENT_LIST, "proactive_command", "PROACTIVE COMMAND: SET UP EVENT LIST, status word 9000"),
    (FETCH_OPEN_CHANNEL, "proactive_command", "PROACTIVE COMMAND: OPEN CHANNEL, status word 9000"),
    (FETCH_SEND_DATA, "proactive_command", "PROACTIVE COMMAND: SEND DATA, status word 9000"),
    (FETCH_RECEIVE_DATA, "proactive_command", "PROACTIVE COMMAND: RECEIVE DATA, status word 9000"),
    (FETCH_CLOSE_CHANNEL, "proactive_command", "PROACTIVE COMMAND: CLOSE CHANNEL, status word 9000"),
    (SW_PROACTIVE_PENDING, "response_apdu", "status word 910F: " + StatusWord(0x91, 0x0F).name),
    (SW_RESPONSE_AVAILABLE, "response_apdu", "status word 6124: " + StatusWord(0x61, 0x24).name),
    (READ_BINARY_ANSWER, "response_apdu", "response data (9 bytes), status word 9000"),
    (GET_RESPONSE_ANSWER, "response_apdu", "response data (36 bytes), status word 9000"),
    (TERMINAL_PROFILE, "command_apdu", "TERMINAL PROFILE"),
    (FETCH, "command_apdu", "FETCH"),
    (TR_SET_UP_EVENT_LIST, "terminal_response", "TERMINAL RESPONSE: SET UP EVENT LIST (result 0x00)"),
    (TR_OPEN_CHANNEL, "terminal_response", "TERMINAL RESPONSE: OPEN CHANNEL (result 0x00)"),
    (ENVELOPE_CHANNEL_STATUS, "envelope", "ENVELOPE: EVENT DOWNLOAD"),
    (ENVELOPE_DATA_AVAILABLE, "envelope", "ENVELOPE: EVENT DOWNLOAD"),
    (SELECT_ADF_USIM, "command_apdu", "SELECT"),
    (SELECT_EF_IMSI, "command_apdu", "SELECT"),
    (READ_BINARY_IMSI, "command_apdu", "READ BINARY"),
    (GET_RESPONSE, "command_apdu", "GET RESPONSE"),
    (ENVELOPE_SMS_PP, "envelope", "ENVELOPE: SMS PP DOWNLOAD"),
    (SMS_DELIVER, "sms_tpdu", "SMS-DELIVER"),
    (POR, "sms_user_data", "secured packet"),
    (POR_ANSWER, "response_apdu", "response data (19 bytes, secured packet), status word 910F"),
]


def invoke(*args: str) -> tuple[int, str, str]:
    """`bipsim decode ARGS` through the console entry point: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["decode", *args])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def cli_json(*args: str) -> dict[str, Any]:
    code, out, err = invoke("--json", *args)
    assert code == 0 and err == "", err
    result: dict[str, Any] = json.loads(out)
    return result


def cli_tree(*args: str) -> str:
    code, out, err = invoke(*args)
    assert code == 0 and err == "", err
    return out


@pytest.mark.parametrize(("hexdata", "kind", "headline"), TRACE_FORMS, ids=[f[2][:40] for f in TRACE_FORMS])
def test_every_form_from_a_trace_decodes_in_auto_mode(hexdata: str, kind: str, headline: str) -> None:
    assert cli_json(hexdata)["kind"] == kind
    assert describe_bytes(bytes.fromhex(hexdata)) == headline
    assert cli_tree(hexdata).strip()


def test_a_fetch_r_apdu_shows_the_command_and_names_the_status_word() -> None:
    data = cli_json(FETCH_OPEN_CHANNEL)
    assert data["status_word"] == {
        "sw": "9000",
        "sw1": 0x90,
        "sw2": 0x00,
        "group": "Normal",
        "name": "Normal ending of the command",
    }
    assert data["command"]["qualifier"] == 5
    assert data["command"]["qualifier_name"] == (
        "immediate link establishment, no automatic reconnection, immediate link establishment in background mode"
    )
    fields = {o["name"]: o["fields"] for o in data["objects"]}
    assert fields["bearer_description"]["bearer_type"] == 3
    assert fields["bearer_description"]["bearer_type_name"] == "default bearer for requested transport layer"
    assert fields["transport_level"] == {
        "protocol": 2,
        "port": 39691,
        "protocol_name": "TCP, UICC in client mode, remote connection",
    }
    tree = cli_tree(FETCH_OPEN_CHANNEL)
    assert tree.splitlines()[0] == "RESPONSE APDU: status word 9000 (Normal: Normal ending of the command)"
    assert "    protocol: 2 (TCP, UICC in client mode, remote connection)\n" in tree
    assert "    bearer type: 3 (default bearer for requested transport layer)\n" in tree


def test_a_c_apdu_names_its_header_and_decodes_the_cat_inside() -> None:
    data = cli_json(TR_OPEN_CHANNEL)
    assert data["apdu"]["ins_name"] == "TERMINAL RESPONSE" and data["apdu"]["lc"] == 0x17
    assert (data["apdu"]["cla"], data["apdu"]["p1"], data["apdu"]["p2"], data["apdu"]["le"]) == (
        0x80,
        0,
        0,
        None,
    )
    result = next(o for o in data["objects"] if o["name"] == "result")
    assert result["fields"]["general_name"] == "Command performed successfully"
    select = cli_json(SELECT_EF_IMSI)["apdu"]
    assert select["ins_name"] == "SELECT" and select["details"]["files"] == ["6F07 (EF.IMSI)"]
    assert cli_json(READ_BINARY_IMSI)["apdu"]["le"] == 9
    tree = cli_tree(ENVELOPE_DATA_AVAILABLE)
    assert tree.startswith("COMMAND APDU: ENVELOPE\n  CLA 0x80 (")
    assert "    events: 0x09 (Data available)\n" in tree


def test_an_sms_pp_download_names_the_tpdu_and_the_command_packet() -> None:
    data = cli_json(ENVELOPE_SMS_PP)
    tpdu = data["sms_tpdu"]
    assert (tpdu["tp_mti_name"], tpdu["tp_pid"], tpdu["tp_pid_name"]) == (
        "SMS-DELIVER",
        0x7F,
        "(U)SIM Data download",
    )
    assert (tpdu["tp_dcs"], tpdu["tp_dcs_name"]) == (0xF6, "8 bit data, class 2")
    assert tpdu["tp_oa"]["number"] == "12345"
    packet = tpdu["command_packet"]
    assert (
        packet["spi"] == "1601" and packet["spi_ciphering"] and packet["tar_name"] == "Issuer Security Domain"
    )
    assert packet["spi_check_name"] == "Cryptographic Checksum"
    assert packet["kic_name"] == "AES: CBC mode, key version 1"
    assert cli_json(SMS_DELIVER)["tpdu"] == tpdu
    por = cli_json(POR_ANSWER)
    assert por["status_word"]["sw"] == "910F"
    assert por["user_data"]["response_packet"]["status_name"] == "PoR OK"
    assert cli_json("--as", "sms", POR)["user_data"] == por["user_data"]


def test_pysim_ota_tpdus_decode_despite_their_tp_udl() -> None:
    """pySim tests/unittests/test_ota.py SmsOtaTestCase: TP-UDL 3 before a whole 3DES command packet."""
    from tests.cat_vectors import OTA_TPDU_3DES_NOCC

    tpdu = cli_json("--as", "sms", OTA_TPDU_3DES_NOCC)["tpdu"]
    assert tpdu["tp_udl"] == 3 and "note" in tpdu
    packet = tpdu["command_packet"]
    assert packet["tar"] == "B00011"
    assert packet["kic_name"] == "DES: triple DES in outer-CBC mode using two different keys, key version 3"


@pytest.mark.parametrize(
    ("kind", "hexdata", "expect"),
    [
        ("apdu", TR_SET_UP_EVENT_LIST, "terminal_response"),
        ("apdu", READ_BINARY_IMSI, "command_apdu"),
        ("rapdu", FETCH_CLOSE_CHANNEL, "proactive_command"),
        ("rapdu", READ_BINARY_ANSWER, "response_apdu"),
        ("tlv", FETCH_CLOSE_CHANNEL[:-4], "proactive_command"),
        ("tlv", TR_SET_UP_EVENT_LIST[10:], "terminal_response"),
        ("sms", SMS_DELIVER, "sms_tpdu"),
        ("sms", POR, "sms_user_data"),
    ],
)
def test_as_forces_the_form(kind: str, hexdata: str, expect: str) -> None:
    assert cli_json("--as", kind, hexdata)["kind"] == expect


@pytest.mark.parametrize(
    ("kind", "hexdata"),
    [("rapdu", FETCH_CLOSE_CHANNEL[:-4]), ("apdu", FETCH_CLOSE_CHANNEL), ("tlv", FETCH_CLOSE_CHANNEL),
     ("sms", FETCH_CLOSE_CHANNEL), ("proactive", TR_OPEN_CHANNEL)],
)  # fmt: skip
def test_as_refuses_what_is_not_that_form(kind: str, hexdata: str) -> None:
    code, out, err = invoke("--as", kind, hexdata)
    assert code == 2 and out == "" and err.count("\n") == 1 and "malformed input at offset" in err


def test_help_documents_every_kind() -> None:
    code, text, _ = invoke("--help")
    assert code == 0
    for kind in INPUT_KINDS:
        assert kind in text
    assert "R-APDU" in text and "C-APDU" in text and "SMS" in text


def test_bare_cat_json_keeps_the_section_5_keys_and_types() -> None:
    data = cli_json(FETCH_OPEN_CHANNEL[:-4])
    assert set(data) == {"kind", "command", "device", "objects"}
    assert {k: type(v) for k, v in data["command"].items() if k != "qualifier_name"} == {
        "number": int,
        "type": int,
        "type_name": str,
        "qualifier": int,
    }
    for item in data["objects"]:
        assert set(item) == {"name", "tag", "cr", "fields"}


# --- name tables against their published sources ------------------------------------------------------------


def test_bearer_and_transport_names_are_wiresharks() -> None:
    """packet-card_app_toolkit.c bearer_descr_vals, transport_ptype_vals, pdp_type_vals (TS 102 223 8.52, 8.59)."""
    assert BEARER_TYPES[0x01] == "CSD"
    assert BEARER_TYPES[0x02] == "GPRS / UTRAN packet service / E-UTRAN"
    assert BEARER_TYPES[0x03] == "default bearer for requested transport layer"
    assert BEARER_TYPES[0x09] == "UTRAN packet service with extended parameters / HSDPA / E-UTRAN"
    assert BEARER_TYPES[0x0B] == "E-UTRAN / Mapped UTRAN packet service"
    assert TRANSPORT_PROTOCOLS == {
        0x01: "UDP, UICC in client mode, remote connection",
        0x02: "TCP, UICC in client mode, remote connection",
        0x03: "TCP, UICC in server mode",
        0x04: "UDP, UICC in client mode, local connection",
        0x05: "TCP, UICC in client mode, local connection",
        0x06: "direct communication channel",
    }
    assert PDP_TYPES == {1: "X.25", 2: "IP", 3: "IPV6", 4: "IPV4V6", 5: "OSPIH", 6: "PPP"}


def test_result_and_bip_cause_names_are_wiresharks() -> None:
    """result_vals and result_bip_vals (TS 102 223 8.12, 8.12.11)."""
    assert GENERAL_RESULTS[0x00] == "Command performed successfully"
    assert GENERAL_RESULTS[0x20] == "Terminal currently unable to process command"
    assert GENERAL_RESULTS[0x3A] == "Bearer Independent Protocol error"
    assert BIP_CAUSES[0x00] == "No specific cause can be given"
    assert BIP_CAUSES[0x01] == "No channel available"
    assert BIP_CAUSES[0x02] == "Channel closed"
    assert BIP_CAUSES[0x03] == "Channel identifier not valid"
    assert BIP_CAUSES[0x07] == "Remote device is not reachable"
    assert BIP_CAUSES[0x10] == "Port not available"


def test_event_names_are_wiresharks() -> None:
    """event_list_vals (TS 102 223 8.25)."""
    assert EVENTS[0x09] == "Data available" and EVENTS[0x0A] == "Channel status"
    assert EVENTS[0x04] == "User activity" and EVENTS[0x12] == "Network Rejection"
    assert len(EVENTS) == 0x1D


def test_gprs_bearer_parameters_are_named_as_the_dissector_fields() -> None:
    """TS 102 384 27.22.4.27.2 OPEN CHANNEL (oFono stk test data): 02 03 04 03 04 1F 02."""
    data = cli_json("--as", "tlv", "D0" + "12" + "8103014001" + "82028182" + "350702030403041F02")
    fields = data["objects"][0]["fields"]
    assert fields["bearer_type_name"] == "GPRS / UTRAN packet service / E-UTRAN"
    assert [fields[k] for k in ("precedence_class", "delay_class", "reliability_class")] == [3, 4, 3]
    assert [fields[k] for k in ("peak_throughput_class", "mean_throughput_class", "pdp_type")] == [4, 31, 2]
    assert fields["pdp_type_name"] == "IP (Internet Protocol, IETF STD 5)"
    tree = cli_tree("D012810301400182028182350702030403041F02")
    assert "    bearer type: 2 (GPRS / UTRAN packet service / E-UTRAN)\n" in tree
    assert "    pdp type: 2 (IP (Internet Protocol, IETF STD 5))\n" in tree


@pytest.mark.parametrize(
    ("dcs", "name"),
    [
        (0x00, "GSM 7 bit default alphabet"),
        (0x04, "8 bit data"),
        (0x08, "UCS2 (16 bit)"),
        (0xF0, "GSM 7 bit default alphabet, class 0"),
        (0xF4, "8 bit data, class 0"),
        (0xF6, "8 bit data, class 2"),
        (0x16, "8 bit data, class 2"),
    ],
)
def test_dcs_names_follow_ts_23_038(dcs: int, name: str) -> None:
    assert dcs_name(dcs) == name


def test_qualifier_names_per_command() -> None:
    """TS 102 223 8.6; SEND DATA wording from the dissector's cmd_qual_send_data_value."""
    assert qualifier_name(0x43, 0x01) == "Send data immediately"
    assert qualifier_name(0x43, 0x00) == "Store data in Tx buffer"
    assert qualifier_name(0x40, 0x03).startswith("immediate link establishment, automatic reconnection")
    assert qualifier_name(0x01, 0x04) == "UICC Reset"
    assert qualifier_name(0x44, 0x00) == ""


def test_instruction_and_status_word_names_are_pysims() -> None:
    """pySim/ts_102_221.py: ts_102_22x_cmdset (TS 102 221 table 10.5) and CardProfileUICC.sw (10.2.1)."""
    assert INSTRUCTIONS[0xA4] == "SELECT" and INSTRUCTIONS[0x70] == "MANAGE CHANNEL"
    assert (
        INSTRUCTIONS[0x12] == "FETCH"
        and INSTRUCTIONS[0xC2] == "ENVELOPE"
        and INSTRUCTIONS[0xCB] == "RETRIEVE DATA"
    )
    assert STATUS_WORDS[0x9000] == ("Normal", "Normal ending of the command")
    assert STATUS_WORDS[0x6A82] == ("Wrong parameters", "File not found")
    assert StatusWord(0x91, 0x0F).name == (
        "Normal ending of the command, with extra information from the proactive UICC containing a command for "
        "the terminal"
    )
    assert StatusWord(0x63, 0xC2).name.endswith("2 times")


# --- only the typed error --------------------------------------------------------------------------------------


def _decode_everything(data: bytes) -> None:
    for kind in INPUT_KINDS:
        try:
            decoded = decode_input(data, kind)
        except TlvError:
            continue
        json.dumps(render_json(decoded))
        render_tree(decoded)
    try:
        describe_bytes(data)
    except TlvError:
        pass


@settings(max_examples=500, derandomize=True, deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_raise_only_the_typed_error(data: bytes) -> None:
    _decode_everything(data)


_SEEDS = [bytes.fromhex(h) for h, _, _ in TRACE_FORMS]


@settings(max_examples=400, derandomize=True, deadline=None)
@given(st.sampled_from(_SEEDS), st.data())
def test_damaged_trace_hex_raises_only_the_typed_error(seed: bytes, draw: st.DataObject) -> None:
    data = bytearray(seed)
    for _ in range(draw.draw(st.integers(1, 4))):
        action = draw.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = draw.draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[at] = draw.draw(st.integers(0, 255))
        elif action == "cut":
            del data[at:]
        else:
            data.insert(at, draw.draw(st.integers(0, 255)))
    _decode_everything(bytes(data))


@settings(max_examples=150, derandomize=True, deadline=None)
@given(st.binary(max_size=40))
def test_the_command_exits_0_or_2_with_one_line(data: bytes) -> None:
    code, out, err = invoke(data.hex())
    assert code in (0, 2)
    if code == 2:
        assert out == "" and err.count("\n") == 1 and "malformed input at offset" in err
    else:
        assert out and err == ""


def test_a_real_process_decodes_a_fetch_answer() -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "bipsim", "decode", FETCH_SET_UP_EVENT_LIST],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and ok.stderr == ""
    assert "    events: 0x09 (Data available), 0x0A (Channel status)\n" in ok.stdout


def test_sms_user_data_without_a_header_reads_as_text() -> None:
    """oFono send_sms_111 (TS 102 384 27.22.4.10): SMS-SUBMIT, DCS F4, "Test Message"; and a 7 bit SMS-DELIVER."""
    from tests.cat_vectors import VECTORS

    send_sms = next(v for v in VECTORS if v.name == "send_sms_111").data.hex()
    tpdu = cli_json(send_sms)["sms_tpdu"]
    assert (tpdu["tp_mti_name"], tpdu["tp_da"]["number"], tpdu["tp_ud_text"]) == (
        "SMS-SUBMIT",
        "012345678",
        "Test Message",
    )
    deliver = cli_json("040B911234567890F000005210702000000005E8329BFD06")["tpdu"]
    assert (deliver["tp_dcs_name"], deliver["tp_udl"], deliver["tp_ud_text"]) == (
        "GSM 7 bit default alphabet",
        5,
        "hello",
    )
    assert deliver["tp_scts"] == "25-01-07 02:00:00 +00:00"


@pytest.mark.parametrize(
    ("hexdata", "ins_name", "lc", "le", "details"),
    [
        ("0070000001", "MANAGE CHANNEL", None, 1, {"p1": 0, "p1_name": "Open Channel", "channel": 0}),
        ("0070800100", "MANAGE CHANNEL", None, 0, {"p1": 0x80, "p1_name": "Close Channel", "channel": 1}),
        ("80CA00FE00", "GET DATA", None, 0, None),
        ("80F2000000", "STATUS / GET STATUS", None, 0, None),
        ("00B2010418", "READ RECORD", None, 0x18, {"record": 1}),
        ("00D6000A0201FF", "UPDATE BINARY", 2, None, {"offset": 10}),
    ],
)
def test_other_ts_102_221_commands_are_named(
    hexdata: str, ins_name: str, lc: int | None, le: int | None, details: dict[str, Any] | None
) -> None:
    apdu = cli_json(hexdata)["apdu"]
    assert (apdu["ins_name"], apdu["lc"], apdu["le"]) == (ins_name, lc, le)
    assert apdu.get("details") == details
