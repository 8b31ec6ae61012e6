"""`bipsim decode`: the indented tree, the JSON (docs/protocols.md, "Decoding what traces show"), `--as` for each
kind, what auto mode finds in hex copied from a trace (C-APDU, R-APDU, BER-TLV), and malformed input (exit 2, one line
naming the byte offset and the rule), in-process through the console entry point and as a real process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from bipsim.cli import main
from tests.cat_vectors import VECTORS

OPEN_CHANNEL_231 = next(v for v in VECTORS if v.name == "open_channel_231").data.hex().upper()
DATA_AVAILABLE = "D60E99010982028281B8028100B701FF"
RECEIVE_DATA_RESPONSE = next(v for v in VECTORS if v.name == "receive_data_response_111").data.hex()
SMS_PP = next(v for v in VECTORS if v.name == "sms_pp_data_download_161").data.hex()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(["decode", *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def as_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, out, err = run(capsys, "--json", *args)
    assert code == 0 and err == ""
    result: dict[str, Any] = json.loads(out)
    return result


def test_tree_names_every_object(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, OPEN_CHANNEL_231)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "PROACTIVE COMMAND: OPEN CHANNEL"
    assert lines[1] == (
        "  command details: number 1, type 0x40 (OPEN CHANNEL), qualifier 0x01 (immediate link establishment, "
        "no automatic reconnection, no background mode)"
    )
    assert lines[2] == "  device identities: uicc -> terminal"
    headings = [line.strip() for line in lines if re.match(r"^  \S", line)][2:]
    assert headings == [
        "alpha identifier:",
        "bearer description:",
        "buffer size:",
        "network access name:",
        "text string:",
        "text string:",
        "transport level:",
        "other address:",
    ]
    assert "    apn: TestGp.rs" in lines and "    port: 44444" in lines and "    address: 1.1.1.1" in lines


def test_tree_of_terminal_response_and_envelope(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "81030143018202828183023A03")
    assert code == 0 and out.startswith("TERMINAL RESPONSE: SEND DATA (result 0x3A)\n")
    assert (
        "  result (CR):\n    general: 0x3A (Bearer Independent Protocol error)\n    additional hex: 03\n"
        "    additional information: 0x03 (Channel identifier not valid)\n"
    ) in out
    code, out, _ = run(capsys, DATA_AVAILABLE)
    assert code == 0 and out.startswith("ENVELOPE: EVENT DOWNLOAD\n")
    assert "  channel data length (CR):\n    length: 255\n" in out


def test_json_shape_of_a_proactive_command(capsys: pytest.CaptureFixture[str]) -> None:
    data = as_json(capsys, OPEN_CHANNEL_231)
    assert set(data) == {"kind", "command", "device", "objects"}
    assert data["kind"] == "proactive_command"
    assert data["command"] == {
        "number": 1,
        "type": 64,
        "type_name": "OPEN CHANNEL",
        "qualifier": 1,
        "qualifier_name": "immediate link establishment, no automatic reconnection, no background mode",
    }
    assert data["device"] == {"source": "uicc", "destination": "terminal"}
    objects = data["objects"]
    assert all(set(o) == {"name", "tag", "cr", "fields"} for o in objects)
    assert objects[1] == {
        "name": "bearer_description",
        "tag": 53,
        "cr": False,
        "fields": {
            "bearer_type": 2,
            "parameters_hex": "030403041F02",
            "bearer_type_name": "GPRS / UTRAN packet service / E-UTRAN",
            "precedence_class": 3,
            "delay_class": 4,
            "reliability_class": 3,
            "peak_throughput_class": 4,
            "mean_throughput_class": 31,
            "pdp_type": 2,
            "pdp_type_name": "IP (Internet Protocol, IETF STD 5)",
        },
    }
    assert objects[2]["fields"] == {"size": 1400}
    assert objects[4]["fields"] == {"dcs": 0xF4, "text": "UserLog", "dcs_name": "8 bit data, class 0"}
    assert objects[6]["fields"] == {
        "protocol": 1,
        "port": 44444,
        "protocol_name": "UDP, UICC in client mode, remote connection",
    }
    assert objects[7]["fields"] == {"type": "IPv4", "address": "1.1.1.1"}


def test_json_hex_is_uppercase_and_envelopes_carry_their_tag(capsys: pytest.CaptureFixture[str]) -> None:
    data = as_json(capsys, RECEIVE_DATA_RESPONSE.lower())
    assert data["kind"] == "terminal_response" and "envelope_tag" not in data
    assert data["device"] == {"source": "terminal", "destination": "uicc"}
    channel = data["objects"][1]
    assert channel["name"] == "channel_data" and channel["cr"] is True
    assert channel["fields"]["data_hex"] == channel["fields"]["data_hex"].upper()
    assert channel["fields"]["data_hex"].startswith("C8C9CA") and len(channel["fields"]["data_hex"]) == 400

    data = as_json(capsys, SMS_PP)
    assert data["kind"] == "envelope" and data["envelope_tag"] == 0xD1 and "command" not in data
    assert data["device"] == {"source": "network", "destination": "uicc"}
    assert [o["name"] for o in data["objects"]] == ["address", "sms_tpdu"]
    assert data["objects"][0]["fields"] == {"value_hex": "9111223344556677F8"}

    data = as_json(capsys, DATA_AVAILABLE)
    assert data["envelope_tag"] == 214
    assert data["objects"][0] == {
        "name": "event_list",
        "tag": 25,
        "cr": True,
        "fields": {"events": [9], "event_names": ["Data available"]},
    }
    assert data["objects"][1]["fields"] == {
        "channel_id": 1,
        "link_established": True,
        "further_info": 0,
        "further_info_name": "No further info can be given",
    }


def test_hex_may_have_spaces_colons_and_several_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    expected = as_json(capsys, "D009810301410082028121")
    assert as_json(capsys, "D0 09 81:03:01", "41 00 82 02 81 21") == expected
    assert expected["device"]["destination"] == "channel1"


@pytest.mark.parametrize(
    ("kind", "hexdata", "expect"),
    [
        ("proactive", "D009810301410082028121", "proactive_command"),
        ("terminal_response", "81030141008202828183023A03", "terminal_response"),
        ("envelope", DATA_AVAILABLE, "envelope"),
        ("apdu", "80C2000010" + DATA_AVAILABLE, "envelope"),
        ("apdu", "801400000D81030141008202828183023A03", "terminal_response"),
        ("apdu", "801200000B D009810301440082028182 9000", "proactive_command"),
        ("auto", "80C2000010" + DATA_AVAILABLE, "envelope"),
        ("auto", "D009810301440082028182", "proactive_command"),
        ("auto", "801200000B D009810301440082028182 9000", "proactive_command"),
        ("auto", "D009810301440082028182 9000", "proactive_command"),
        ("auto", "801200000B", "command_apdu"),
        ("auto", "9000", "response_apdu"),
        ("rapdu", "D009810301440082028182 9000", "proactive_command"),
        ("tlv", "81030141008202828183023A03", "terminal_response"),
    ],
)
def test_as_each_kind(capsys: pytest.CaptureFixture[str], kind: str, hexdata: str, expect: str) -> None:
    assert as_json(capsys, "--as", kind, hexdata)["kind"] == expect


@pytest.mark.parametrize(
    ("args", "offset", "rule"),
    [
        (["D00C810301420082028121B705C8"], 12, "truncated: length 5 exceeds the 1 bytes left"),
        (["D009810301410082028121FF"], 11, "trailing garbage: 1 bytes after the TLV"),
        (["D08109810301410082028121"], 1, "overlong length encoding for 9"),
        (["--as", "envelope", "D009810301410082028121"], 0, "unexpected tag 0xD0 (expected D1, D2, D3, D4, D5, "
                                                            "D6, D7)"),
        (["--as", "terminal_response", "83010082028281"], 0, "command details object (tag 01) missing"),
        (["--as", "apdu", "80C2000005D6030102"], 4, "Lc 5 does not match the 4 data bytes"),
        (["--as", "apdu", "00A4000002"], 4, "Lc 2 does not match the 0 data bytes"),
        (["00A4000002"], 4, "Lc 2 does not match the 0 data bytes"),
        (["80C2000005D6030102"], 4, "Lc 5 does not match the 4 data bytes"),
        (["801400000D8103014100820282818302"], 4, "Lc 13 does not match the 11 data bytes"),
        (["--as", "rapdu", "D009810301410082028121"], 9, "SW1 0x81 is not a status word ('61'..'6F', '90'..'9F')"),
        (["D00D8103010500820281829902090A9100FF"], 15, "trailing garbage: 3 bytes after the TLV"),
        (["--as", "sms", "4405812143"], 3, "truncated: TP-OA needs 3 bytes, 2 left"),
        ([""], 0, "empty input"),
    ],
)  # fmt: skip
def test_malformed_input_exits_2_with_offset_and_rule(
    capsys: pytest.CaptureFixture[str], args: list[str], offset: int, rule: str
) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    assert err == f"bipsim: error: malformed input at offset {offset}: {rule}\n"


def test_not_hex_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "D0 0G")
    assert code == 2 and out == "" and err.count("\n") == 1 and "not hexadecimal" in err


def test_as_a_real_process() -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "bipsim", "decode", "--json", DATA_AVAILABLE],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and json.loads(ok.stdout)["envelope_tag"] == 214
    bad = subprocess.run(
        [sys.executable, "-m", "bipsim", "decode", "D00C810301420082028121B705C8"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        "bipsim: error: malformed input at offset 12: truncated: length 5 exceeds the 1 bytes left"
    ]
    assert "Traceback" not in bad.stderr


# From `bipsim scenario run embodiment1 --trace`: the card's answer to the FETCH after OPEN CHANNEL's TR, and the CP's
# TERMINAL RESPONSE to the first command
FETCH_ANSWER = "D00D8103010500820281829902090A9000"
TR_APDU = "801400000C810301050082028281830100"


def test_a_fetch_answer_from_a_trace_decodes_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, FETCH_ANSWER)
    assert code == 0 and err == ""
    assert out == (
        "RESPONSE APDU: status word 9000 (Normal: Normal ending of the command)\n"
        "PROACTIVE COMMAND: SET UP EVENT LIST\n"
        "  command details: number 1, type 0x05 (SET UP EVENT LIST), qualifier 0x00\n"
        "  device identities: uicc -> terminal\n"
        "  event list (CR):\n"
        "    events: 0x09 (Data available), 0x0A (Channel status)\n"
    )


def test_a_fetch_answer_from_a_trace_decodes_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    data = as_json(capsys, FETCH_ANSWER)
    assert data["kind"] == "proactive_command" and data["command"]["type_name"] == "SET UP EVENT LIST"
    assert data["objects"] == [
        {
            "name": "event_list",
            "tag": 25,
            "cr": True,
            "fields": {"events": [9, 10], "event_names": ["Data available", "Channel status"]},
        }
    ]
    assert data["status_word"] == {
        "sw": "9000",
        "sw1": 144,
        "sw2": 0,
        "group": "Normal",
        "name": "Normal ending of the command",
    }


def test_a_terminal_response_apdu_from_a_trace_names_its_header(capsys: pytest.CaptureFixture[str]) -> None:
    data = as_json(capsys, TR_APDU)
    assert data["kind"] == "terminal_response"
    assert {k: data["apdu"][k] for k in ("cla", "ins", "ins_name", "p1", "p2", "lc", "le")} == {
        "cla": 0x80,
        "ins": 0x14,
        "ins_name": "TERMINAL RESPONSE",
        "p1": 0,
        "p2": 0,
        "lc": 12,
        "le": None,
    }
    code, out, _ = run(capsys, TR_APDU)
    assert code == 0 and out.splitlines()[:2] == [
        "COMMAND APDU: TERMINAL RESPONSE",
        "  CLA 0x80 (TS 102 221 / GlobalPlatform proprietary, logical channel 0), INS 0x14 (TERMINAL RESPONSE), "
        "P1 0x00, P2 0x00, Lc 12",
    ]
