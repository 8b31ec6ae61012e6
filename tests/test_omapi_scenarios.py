"""Issue 19's points on the real processes: `bipsim ap --omapi-listen` and `bipsim cp` with the built-in `omapi*`
card profiles on a pty pair (scenarios/omapi.py runs them through the harness), checked from the merged trace and
the OMAPI answers. The five named scenarios themselves run in tests/test_scenarios.py; here are the variations
(no card, --nfc flipped, two cards with rules, a malformed rule set, a pulled card, a reboot, the command line, the
pcap through tshark)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from bipsim.scenarios.base import ScenarioOptions
from bipsim.scenarios.harness import Harness, RunResult
from bipsim.scenarios.omapi import (
    ARA_M,
    DENIED,
    ECHO,
    GRANTED,
    OmapiRun,
    answer_lines,
    app_request,
    at_commands,
    ccho_lines,
    check_boot_loaded,
    first_steps,
    run_omapi,
    variable_of,
)
from bipsim.trace.kinds import Kind
from bipsim.uicc.applets.echo import long_select_response
from bipsim.uicc.profile import load_profile

ECHO_LONG = "A000000476416E64726F696443545332"  # the CTS applet whose SELECT answers a 256-byte FCI
PATTERN = bytes(i & 0xFF for i in range(256))[:-1] + b"\xff"  # the echo applet's 256 bytes, the last one FF
OMAPI_LINES = ("AT+CPIN?", "AT+CCHO", "AT+CGLA", "AT+CCHC", "AT%SLOT")

Runner = Callable[[OmapiRun], RunResult]


@pytest.fixture
def run_it(tmp_path: Path) -> Runner:
    def run(spec: OmapiRun) -> RunResult:
        return run_omapi(spec, ScenarioOptions(tmp_path / spec.name))

    return run


def omapi_lines(result: RunResult) -> list[str]:
    """The AP's card commands on DLC 1 (the RIL's +CSQ polls and the like are left out: their number is time)."""
    return [line for line in at_commands(result) if line.startswith(OMAPI_LINES)]


def step_sequence(result: RunResult) -> list[str]:
    return [e.step for e in result.events if e.step and e.step.startswith("004:")]


def collapsed(items: list[str]) -> list[str]:
    """`items` with each run of equal neighbours kept once."""
    return [item for i, item in enumerate(items) if i == 0 or items[i - 1] != item]


def slot_of_each(lines: list[str]) -> list[tuple[int, str]]:
    """(slot selected by the last AT%SLOT before it, line) for each card command."""
    slot, out = 1, []
    for line in lines:
        if line.startswith("AT%SLOT="):
            slot = int(line.split("=")[1])
        else:
            out.append((slot, line))
    return out


def test_boot_sequence_with_rules_and_the_reboot_reloads(run_it: Runner) -> None:
    spec = OmapiRun("omapi-reboot", requests=[app_request("SIM1"), {"op": "boot"}, app_request("SIM1")])
    result = run_it(spec)
    check_boot_loaded(result)  # AT+CCHO ARA-M, AT+CGLA 80CAFF4000, AT+CCHC; 201..205, 301..304 in order
    lines = collapsed(omapi_lines(result))  # a +CPIN? answered "SIM busy" is asked again
    assert lines[:6] == [
        "AT%SLOTS?",
        "AT+CPIN?",
        f'AT+CCHO="{ARA_M}"',
        'AT+CGLA=1,10,"80CAFF4000"',
        'AT+CGLA=1,10,"80CADF2000"',
        "AT+CCHC=1",
    ]
    # the first application's open read the variable and did not load the rules: one GET DATA [All] until the
    # reboot, which loads them again
    boot_at = next(i for i, line in enumerate(lines) if i > 6 and line == "AT+CPIN?")
    assert sum("80CAFF4000" in line for line in lines[:boot_at]) == 1
    assert sum("80CAFF4000" in line for line in lines[boot_at:]) == 1
    assert [a.get("ok") for a in spec.answers] == [True, True, True]
    assert spec.answers[1]["readers"][0]["variable"] is True


def test_rules_changed_on_the_card_take_effect_at_the_refresh_tag_change(run_it: Runner) -> None:
    # the `omapi` card, plus a rule that lets the test application administer the ARA-M (STORE DATA)
    rules = [*load_profile("omapi").ara_m_rules, {"aid": ARA_M, "hash": GRANTED, "apdu": "always"}]
    delete_all = (
        "80E2900002F100"  # STORE DATA Command-Delete, empty: every rule (GPD_SPE_013 v1.1 section 5.1)
    )
    admin = {**app_request("SIM1", apdus=(delete_all,)), "aid": ARA_M, "select_response": False}
    spec = OmapiRun(
        "omapi-refresh",
        profile_changes={"ara_m_rules": tuple(rules)},
        requests=[app_request("SIM1"), admin, app_request("SIM1")],
    )
    result = run_it(spec)
    before, stored, after = spec.answers
    assert before["ok"] and stored["ok"] and stored["responses"] == ["9000"], spec.answers
    # the variable and the rules loaded at boot served the first two opens: one GET DATA [All] until then
    lines = omapi_lines(result)
    store_at = next(i for i, line in enumerate(lines) if delete_all in line)
    assert sum("80CAFF4000" in line for line in lines[:store_at]) == 1
    # the next openSession read a new refresh tag, loaded the (now empty) rules again: the open is refused
    assert sum("80CAFF4000" in line for line in lines[store_at:]) == 1
    refreshes = [
        e.field("changed")
        for e in result.events
        if e.kind == Kind.OMAPI_FRAMEWORK and e.field("event") == "refresh"
    ]
    assert refreshes == [False, False, True]
    assert after["exception"] == "SecurityException" and "no rule" in after["reason"], after


# the echo applet's three answers: 256 bytes behind 61 00, a bare 90 00, a warning with its data
TRANSMIT_REQUESTS: list[dict[str, Any]] = [
    app_request("SIM1", apdus=("00080000", "000A0000", "00F3010C01AA00"))
]


def test_transmit_returns_the_applets_answer_and_close_uses_the_session(shared_run: SharedRun) -> None:
    result = shared_run.result
    (answer,) = shared_run.answers(TRANSMIT_REQUESTS)
    assert answer["ok"], answer
    responses = [bytes.fromhex(text) for text in answer["responses"]]
    assert responses[0] == PATTERN + b"\x90\x00"  # 61 00 and GET RESPONSE handled below the API
    assert responses[1] == b"\x90\x00"
    # a warning with its data comes as the card gave it (docs/protocols.md, "The echo applet")
    assert responses[2] == bytes.fromhex("01F3010C01AA006200")
    session = answer["channel"]
    # this request's lines in the shared run: from its open of the echo applet (the last before its warning APDU,
    # which no other request sends) to the first close after that APDU
    lines = at_commands(result)
    warning = next(
        i for i, line in enumerate(lines) if line.startswith("AT+CGLA=") and "00F3010C01AA00" in line
    )
    opened = max(i for i, line in enumerate(lines[:warning]) if line == f'AT+CCHO="{ECHO}"')
    closed = next(i for i, line in enumerate(lines) if i > warning and line.startswith("AT+CCHC="))
    assert lines[closed] == f"AT+CCHC={session}"
    mine = [line for line in lines[opened:closed] if line.startswith("AT+CGLA")]
    assert len(mine) >= 3 and all(line.startswith(f"AT+CGLA={session},") for line in mine), mine
    # what the card answered the warning APDU is exactly what the application got
    cp_answers = [e.data for e in result.events if e.kind == Kind.APDU_RESPONSE and e.src.value == "uicc"]
    assert responses[2] in cp_answers


# the NFC flip's cases, each run with --no-nfc (the default) and --nfc; a card with rules (SIM1) beside an empty slot
# tried once (SIM2) makes two of the three cases in one run, and its --no-nfc run is also the empty slot's mode 2
NFC_CASES: dict[str, Callable[[str], OmapiRun]] = {
    "rules-and-no-card": lambda nfc: OmapiRun(
        f"omapi-nfc-{nfc}-rules-empty",
        empty_slot2=True,
        ap_args=[nfc, "--no-card-mode", "2"],
        requests=[{"op": "status"}, app_request("SIM1"), app_request("SIM2")],
    ),
    "no-ara-m": lambda nfc: OmapiRun(
        f"omapi-nfc-{nfc}-none", profile="omapi-no-rules", ap_args=[nfc], requests=[app_request("SIM1")]
    ),
}
NfcRun = Callable[[str, str], tuple[OmapiRun, RunResult]]


@pytest.fixture(scope="module")
def nfc_run(tmp_path_factory: pytest.TempPathFactory) -> NfcRun:
    """Runs NFC_CASES[case] with `flag` once per module."""
    done: dict[tuple[str, str], tuple[OmapiRun, RunResult]] = {}

    def run(case: str, flag: str) -> tuple[OmapiRun, RunResult]:
        if (case, flag) not in done:
            spec = NFC_CASES[case](flag)
            result = run_omapi(spec, ScenarioOptions(tmp_path_factory.mktemp(spec.name.replace("--", ""))))
            done[(case, flag)] = (spec, result)
        return done[(case, flag)]

    return run


@pytest.mark.parametrize("mode", ["1", "2"])
def test_an_empty_slot_mode_1_sends_no_rule_load_mode_2_one_attempt(
    run_it: Runner, nfc_run: NfcRun, mode: str
) -> None:
    if mode == "2":
        spec, result = nfc_run("rules-and-no-card", "--no-nfc")  # --no-card-mode 2, the status asked first
    else:
        spec = OmapiRun(
            f"omapi-empty-slot-{mode}",
            empty_slot2=True,
            ap_args=["--no-card-mode", mode],
            requests=[{"op": "status"}],
        )
        result = run_it(spec)
    on_slot2 = [line for slot, line in slot_of_each(omapi_lines(result)) if slot == 2]
    rule_loads = [line for line in on_slot2 if line.startswith(("AT+CCHO", "AT+CGLA"))]
    assert rule_loads == ([] if mode == "1" else [f'AT+CCHO="{ARA_M}"'])
    assert variable_of(result, "SIM2") is False and variable_of(result, "SIM1") is True
    status = {item["name"]: item for item in spec.answers[0]["readers"]}
    assert status["SIM2"]["present"] is False and status["SIM2"]["available"] is False


@pytest.mark.parametrize("case", list(NFC_CASES))
def test_flipping_nfc_changes_nothing(nfc_run: NfcRun, case: str) -> None:
    outcomes = []
    for flag in ("--no-nfc", "--nfc"):
        run, result = nfc_run(case, flag)
        # the channel number is the CP's to choose; a status answer reports the flag itself (`nfc`)
        answers = [{k: v for k, v in a.items() if k not in ("channel", "nfc")} for a in run.answers]
        # a command the CP answered "SIM busy" (+CME ERROR: 14) while its card was starting is sent again: how often
        # is a matter of time, so repeats count once
        outcomes.append((collapsed(omapi_lines(result)), collapsed(step_sequence(result)), answers))
        assert {e.field("nfc") for e in result.events if e.kind == Kind.OMAPI_CHECK} == {flag == "--nfc"}
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("choice", ["SIM2", "script"])
def test_two_cards_with_rules_both_are_offered_and_the_choice_is_used(
    run_it: Runner, tmp_path: Path, choice: str
) -> None:
    policy = choice
    if choice == "script":
        (tmp_path / "answers.txt").write_text("# the user's taps\n2\n")
        policy = f"script:{tmp_path / 'answers.txt'}"
    spec = OmapiRun(
        f"omapi-both-{choice}",
        profile2="omapi",
        ap_args=["--se-choose", policy],
        requests=[app_request(None)],
    )
    result = run_it(spec)
    listed = [
        e.field("readers")
        for e in result.events
        if e.kind == Kind.OMAPI_CHOOSER and e.field("event") == "list"
    ]
    assert listed == [["SIM1", "SIM2"]]
    (answer,) = spec.answers
    assert answer["ok"] and answer["reader"] == "SIM2", answer
    session = answer["channel"]
    after_choice = slot_of_each(omapi_lines(result))
    opened = after_choice.index((2, f'AT+CCHO="{ECHO}"'))  # opened on slot 2 ...
    assert (1, f"AT+CCHC={session}") in after_choice[
        opened:
    ]  # ... closed by its session id, whatever %SLOT says
    # the card of slot 2 got the application's APDU, the card of slot 1 did not
    got = [
        e.field("slot", 1)
        for e in result.events
        if e.kind == Kind.APDU_COMMAND and e.data[1:4] == b"\x08\x00\x00"
    ]
    assert got == [2]


def test_malformed_rules_leave_the_variable_false_with_the_reason(run_it: Runner) -> None:
    spec = OmapiRun("omapi-malformed", profile="omapi-malformed", requests=[app_request("SIM1")])
    result = run_it(spec)
    (loaded,) = [e for e in result.events if e.kind == Kind.OMAPI_FRAMEWORK and e.field("event") == "loaded"]
    assert loaded.error and loaded.field("loaded") is False and "offset" in loaded.field("reason")
    assert variable_of(result, "SIM1") is False
    assert spec.answers[0]["exception"] == "SecurityException"
    assert not ccho_lines(result, ECHO)
    assert "004:206" in first_steps(result)


def test_an_empty_rule_set_loads_and_grants_nobody(run_it: Runner) -> None:
    spec = OmapiRun("omapi-empty-rules", profile="omapi-empty", requests=[app_request("SIM1")])
    result = run_it(spec)
    assert variable_of(result, "SIM1") is True
    assert spec.answers[0]["exception"] == "SecurityException"
    assert not ccho_lines(result, ECHO)


@pytest.fixture(scope="module")
def pulled_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[OmapiRun, RunResult]:
    """One run for both pulled-card tests: a channel is open when the card goes (its transmit fails, its close does
    not raise, a later transmit finds no channel), a new open while the card is out fails too, then the card comes
    back and the service still answers."""

    async def before(index: int, harness: Harness) -> None:
        if index == 1:  # the channel is open (the first answer came): now the card goes
            await harness.remove_card(1)
        if index == 5:
            await harness.insert_card(1)

    opened = {**app_request("SIM1", apdus=("000A0000",)), "keep_open": True}
    spec = OmapiRun(
        "omapi-pulled",
        card_control=True,
        before=before,
        requests=[
            opened,
            {"op": "transmit", "handle": 1, "apdus": ["000A0000"]},
            {"op": "close", "handle": 1},
            {"op": "transmit", "handle": 1, "apdus": ["000A0000"]},
            app_request("SIM1"),
            {"op": "status"},
        ],
    )
    result = run_omapi(spec, ScenarioOptions(tmp_path_factory.mktemp("omapi-pulled")))
    return spec, result


def test_a_pulled_card_is_io_exception_then_the_card_comes_back(
    pulled_run: tuple[OmapiRun, RunResult],
) -> None:
    spec, result = pulled_run
    first, opened_while_out, status = spec.answers[0], spec.answers[4], spec.answers[5]
    assert first["ok"] is True
    assert opened_while_out["exception"] == "IOException", opened_while_out
    errors = [e for e in result.events if e.kind == Kind.OMAPI_ERROR]
    assert errors and errors[-1].field("exception") == "IOException" and "10" in errors[-1].field("reason")
    assert status["ok"] is True  # the service still answers
    # the status is the start-up's record, labelled so: it says nothing of the pull and the re-insert
    assert status["as_of"] == "start-up" and status["readers"][0]["present"] is True


def test_a_card_pulled_mid_session_fails_the_next_transmit_with_io_exception(
    pulled_run: tuple[OmapiRun, RunResult],
) -> None:
    spec, result = pulled_run
    first, pulled, closed, gone = spec.answers[:4]
    assert first["ok"] and first["handle"] == 1 and first["responses"] == ["9000"], first
    assert pulled["exception"] == "IOException" and "10" in pulled["reason"], pulled
    assert closed["ok"] is True  # closing a channel whose card went away does not raise
    assert "no open channel" in gone["error"]
    (error,) = [e for e in result.events if e.kind == Kind.OMAPI_ERROR and e.field("api") == "transmit"]
    assert error.field("exception") == "IOException"
    assert any(e.kind == Kind.APP_EVENT and e.field("event") == "card_removed" for e in result.events)


def test_no_channel_left_is_null_and_an_absent_applet_is_no_such_element(run_it: Runner) -> None:
    absent = "A0000000010203"
    rules = [*load_profile("omapi").ara_m_rules, {"aid": absent, "hash": GRANTED, "apdu": "always"}]
    keep = {**app_request("SIM1", apdus=()), "keep_open": True, "select_response": False}
    spec = OmapiRun(
        "omapi-channels",
        profile_changes={"ara_m_rules": tuple(rules)},
        requests=[
            keep,
            keep,
            keep,
            keep,
            {"op": "close", "handle": 1},
            keep,
            {"op": "close", "handle": 2},
            {**app_request("SIM1"), "aid": absent},
        ],
    )
    result = run_it(spec)
    first, second, third, fourth, closed, again, _, missing = spec.answers
    assert [a.get("handle") for a in (first, second, third)] == [1, 2, 3]
    # the `omapi` card has 3 logical channels: MANAGE CHANNEL 6881 -> +CME ERROR: 20 -> openLogicalChannel null
    assert fourth["ok"] is False and fourth["channel"] is None and "exception" not in fourth, fourth
    assert any(e.kind == Kind.OMAPI_CALL and e.field("result") == "null" for e in result.events)
    assert closed["ok"] and again["ok"] and again["handle"] == 4
    # a rule grants the AID, the card has no such applet: SELECT 6A82 -> +CME ERROR: 22 -> NoSuchElementException
    assert missing["exception"] == "NoSuchElementException", missing
    assert ccho_lines(result, absent) == [f'AT+CCHO="{absent}"']


# One run of the `omapi` card for the checks that read answers or the whole run: the command-line client (before
# the first request), the transmit, the select responses and a short APDU, the bad control requests, and the pcap
# through tshark. Their requests follow each other on one control socket, as several applications' would.
BAD_REQUESTS: list[dict[str, Any]] = [
    {"op": "dance"},
    {"op": "run", "hash": "zz", "aid": ECHO},
    {"op": "run", "hash": GRANTED, "aid": ECHO, "apdus": "00"},
    {"op": "run", "hash": GRANTED, "aid": "A000", "reader": "SIM1"},
    {"op": "status"},
]
SELECT_REQUESTS: list[dict[str, Any]] = [
    app_request(None),
    app_request("SIM1", GRANTED, apdus=("00",)),
    {**app_request("SIM1", apdus=("000A0000",)), "aid": ECHO_LONG},
]


@dataclass
class SharedRun:
    spec: OmapiRun
    result: RunResult
    cli: list[subprocess.CompletedProcess[str]]

    def answers(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The answers to `requests`, a slice of the run's requests (the same list objects)."""
        start = next(i for i, r in enumerate(self.spec.requests) if r is requests[0])
        return self.spec.answers[start : start + len(requests)]


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory: pytest.TempPathFactory) -> SharedRun:
    outputs: list[subprocess.CompletedProcess[str]] = []

    async def before(index: int, harness: Harness) -> None:
        if index != 0:
            return
        port = next(
            e["fields"]["port"] for e in harness.events_so_far("ap") if e.get("kind") == Kind.OMAPI_CONTROL
        )
        base = [sys.executable, "-m", "bipsim", "omapi", "--connect", f"127.0.0.1:{port}"]
        for extra in (
            ["--apdu", "000A0000", "--select-response"],
            ["--app-hash", DENIED, "--apdu", "000A0000"],
            ["--status"],
            ["--aid", "zz"],
        ):
            done = await trio.run_process(
                [*base, *extra], capture_stdout=True, capture_stderr=True, check=False
            )
            outputs.append(
                subprocess.CompletedProcess(
                    done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
                )
            )

    spec = OmapiRun(
        "omapi-shared",
        before=before,
        requests=[{"op": "status"}, *TRANSMIT_REQUESTS, *SELECT_REQUESTS, *BAD_REQUESTS],
    )
    result = run_omapi(spec, ScenarioOptions(tmp_path_factory.mktemp("omapi-shared")))
    return SharedRun(spec, result, outputs)


def test_the_command_line_client(shared_run: SharedRun) -> None:
    granted, denied, status, bad = shared_run.cli
    assert (
        granted.returncode == 0 and "000A0000 -> 9000" in granted.stdout and "reader SIM1" in granted.stdout
    )
    assert denied.returncode == 1 and denied.stderr.startswith("bipsim omapi: SecurityException")
    assert (
        status.returncode == 0
        and "SIM1: card present at start-up, enforceCarrierPrivilege true" in status.stdout
    )
    assert status.stdout.startswith("readers as the last OMAPI start-up found them")
    assert bad.returncode == 2 and "not hex" in bad.stderr and "Traceback" not in bad.stderr


def test_bad_control_requests_get_an_error_answer_and_the_socket_stays_usable(shared_run: SharedRun) -> None:
    answers = shared_run.answers(BAD_REQUESTS)
    assert [a.get("ok") for a in answers] == [False, False, False, False, True]
    assert "unknown op" in answers[0]["error"] and "not hex" in answers[1]["error"]
    assert answers[3]["exception"] == "IllegalArgumentException"


@pytest.mark.needs("tshark")
def test_tshark_decodes_the_scenarios_pcap(shared_run: SharedRun, tmp_path: Path) -> None:
    result = shared_run.result
    trace = tmp_path / "omapi.jsonl"
    trace.write_text("".join(event.to_json() + "\n" for event in result.events))
    pcap = tmp_path / "omapi.pcap"
    subprocess.run(
        [sys.executable, "-m", "bipsim", "trace", "pcap", str(trace), "-o", str(pcap)],
        check=True,
        capture_output=True,
    )
    fields = subprocess.run(
        [
            "tshark",
            "-r",
            str(pcap),
            "-Y",
            "gsm_sim",
            "-T",
            "fields",
            "-e",
            "gsm_sim.apdu.ins",
            "-e",
            "gsm_sim.aid",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    rows = [line.split("\t") for line in fields]
    assert ["0x70", ""] in rows  # MANAGE CHANNEL
    assert ["0xa4", ARA_M.lower()] in rows  # SELECT of the ARA-M
    assert ["0xca", ""] in rows  # GET DATA
    malformed = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "_ws.malformed"], check=True, capture_output=True, text=True
    ).stdout
    assert malformed.strip() == ""


def test_select_responses_and_a_short_apdu_through_the_service(shared_run: SharedRun) -> None:
    result = shared_run.result
    chosen, short, long_answer = shared_run.answers(SELECT_REQUESTS)
    # ...31: SELECT answers no data; the echo APDU its 256 bytes (61 00 and GET RESPONSE joined below the API)
    assert chosen["ok"] is True and chosen["select_response"] == "9000", chosen
    assert chosen["responses"] == [PATTERN.hex().upper() + "9000"]
    assert short["exception"] == "IllegalArgumentException"
    # ...32: getSelectResponse is the FCI the card returns on SELECT, byte for byte: 1F00 81FC and the pattern
    fci = long_select_response()
    assert fci[:4] == bytes.fromhex("1F0081FC") and len(fci) == 256 and fci[-1] == 0xFF
    assert long_answer["ok"] is True and long_answer["select_response"] == (fci + b"\x90\x00").hex().upper()
    assert long_answer["responses"] == ["9000"]
    # and it is what the card itself answered the SELECT on that channel
    session = long_answer["channel"]
    lines = at_commands(result)
    select = f"00A4040010{ECHO_LONG}00"
    assert f'AT+CGLA={session},{len(select)},"{select}"' in lines, [x for x in lines if "A404" in x]


def test_the_scenario_prints_one_line_per_answer_and_the_choosers_list() -> None:
    run = OmapiRun(
        "omapi-lines",
        requests=[{"op": "status"}, app_request(None), app_request("SIM1", DENIED)],
        answers=[
            {
                "ok": True,
                "readers": [
                    {"name": "SIM1", "variable": True, "available": True, "reason": "2 rules"},
                    {"name": "SIM2", "variable": False, "available": False, "reason": "+CME ERROR: 22"},
                ],
            },
            {
                "ok": True,
                "reader": "SIM1",
                "readers": ["SIM1", "SIM2"],  # getReaders: every slot, not what the dialog offered
                "channel": 4,
                "select_response": "9000",
                "responses": [PATTERN.hex().upper() + "9000"],
            },
            {
                "ok": False,
                "reader": "SIM1",
                "exception": "SecurityException",
                "reason": "access rules: denied",
            },
        ],
    )
    assert answer_lines(run, [["SIM1"]]) == [
        "status SIM1: enforceCarrierPrivilege true, available (2 rules)",
        "status SIM2: enforceCarrierPrivilege false, not available (+CME ERROR: 22)",
        "chooser lists: SIM1",
        "SIM1 ch 4: getSelectResponse -> 9000",
        "SIM1 ch 4: 00080000 -> 256 bytes + 9000",
        "SIM1: SecurityException: access rules: denied",
    ]


def test_a_card_with_access_rule_files_only_loads_them_and_they_are_enforced(run_it: Runner) -> None:
    pkcs15 = "A000000063504B43532D3135"
    spec = OmapiRun(
        "omapi-arf",
        profile="omapi-arf",
        requests=[{"op": "status"}, app_request(None), app_request("SIM1", DENIED)],
    )
    result = run_it(spec)
    status, granted, denied = spec.answers
    # GP SEAC: the ARA-M first (SELECT 6A82: +CME ERROR: 22), then the ARF; the load succeeded: 205
    lines = omapi_lines(result)
    assert lines.index(f'AT+CCHO="{ARA_M}"') < lines.index(f'AT+CCHO="{pkcs15}"')
    assert ccho_lines(result, ARA_M) == [f'AT+CCHO="{ARA_M}"']  # tried once; the refresh reads EF_ACMain
    assert any(line.endswith('"00A40004024200"') for line in lines)  # SELECT EF_ACMain by file identifier
    assert any(line.startswith("AT+CGLA=") and ',"00B0' in line for line in lines)  # READ BINARY
    assert variable_of(result, "SIM1") is True and "004:205" in first_steps(result)
    (loaded,) = [e for e in result.events if e.kind == Kind.OMAPI_FRAMEWORK and e.field("event") == "loaded"]
    assert loaded.field("loaded") is True and loaded.field("source") == "ARF" and loaded.field("rules") == 2
    (sim1,) = status["readers"]
    assert sim1["variable"] is True and sim1["available"] is True and sim1["reason"] == "2 rules from the ARF"
    # the rules are enforced: the granted application reaches the echo applet through the chooser, the other not
    assert granted["ok"] is True and granted["reader"] == "SIM1", granted
    assert granted["responses"] == [PATTERN.hex().upper() + "9000"]
    assert denied["exception"] == "SecurityException" and "access rules" in denied["reason"], denied
    assert len(ccho_lines(result, ECHO)) == 1
