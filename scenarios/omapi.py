"""The OMAPI scenarios of seed 004, a terminal without NFC that offers the Open Mobile API (docs/protocols.md,
"OMAPI on the AP"): each runs the real AP (`bipsim ap --omapi-listen`) and CP (`bipsim cp`, the built-in `omapi*`
card profiles) on a pty pair, calls OMAPI through the AP's control socket as an application would, and checks the
outcome from the merged trace (kinds and fields, never summaries) and the OMAPI answers.

`omapi-non-nfc`, `omapi-no-rules`, `omapi-denied`, `omapi-two-readers` (PROTOCOL of the seed: the card's rules
decide, not the NFC process) and `omapi-nfc-legacy` (the old rule, for comparison: no NFC process, no channel).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bipsim.ap.omapi.control import request
from bipsim.scenarios.base import ScenarioOptions, ScenarioResult, check
from bipsim.scenarios.harness import EventQuery, Harness, RunConfig, RunResult, run_processes
from bipsim.trace.events import TraceEvent
from bipsim.trace.kinds import Kind
from bipsim.trace.steps import STEPS
from bipsim.uicc.profile import load_profile

ARA_M = "A00000015141434C00"
ECHO = "A000000476416E64726F696443545331"
# the test applications of the built-in `omapi` profile (uicc/profiles/omapi.toml): SHA-1 of their stand-in
# certificates; the first is granted the echo applet, no rule names the second
GRANTED = "80FBFFB49AFF0C7D942F1F5E1D4761780911E205"
DENIED = "B120191D0D3A67BF18B3B72954C9C3BF26F2F72B"
ECHO_APDU = "00080000"  # the echo applet answers 256 bytes 00 01 .. FF (behind 61 00 and GET RESPONSE)
BOOT_STEPS = ("004:201", "004:202", "004:203", "004:204")


@dataclass
class OmapiRun:
    """What one scenario asks: card profiles, AP options, and the control requests its application makes."""

    name: str
    profile: str = "omapi"
    profile2: str | None = None  # a second slot (SIM2) with this profile
    profile_changes: dict[str, Any] = field(default_factory=dict)  # keys over `profile` (e.g. ara_m_rules)
    empty_slot2: bool = False  # a second slot without a card
    card_control: bool = False  # the harness may pull a card (Harness.remove_card)
    # a hook run by the application between its requests: (request index, harness) before that request
    before: Callable[[int, Harness], Any] | None = None
    ap_args: list[str] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)
    failure: str | None = None


def app_request(
    reader: str | None, cert_hash: str = GRANTED, apdus: tuple[str, ...] = (ECHO_APDU,)
) -> dict[str, Any]:
    return {
        "op": "run",
        "package": "org.bipsim.wallet",
        "hash": cert_hash,
        "aid": ECHO,
        "apdus": list(apdus),
        "reader": reader,
        "select_response": True,
    }


def card_profile(name: str) -> dict[str, Any]:
    """The overrides that make the harness's card the built-in profile `name`, without a BIP session of its own
    (trigger manual: these scenarios are about OMAPI, and the CP's run ends when the application is done)."""
    profile = load_profile(name)
    values = {f.name: getattr(profile, f.name) for f in dataclasses.fields(profile)}
    for key in ("ota_port", "link_mode"):
        values.pop(key, None)
    values["trigger"] = "manual"
    return values


async def _drive(run: OmapiRun, harness: Harness) -> None:
    """The application: waits for the AP's control socket, makes the requests, then ends the CP (and the run)."""
    try:
        listening = await harness.wait_for_event(
            "ap", EventQuery(Kind.OMAPI_CONTROL, lambda f: "port" in f), timeout=60
        )
        if listening is None:
            run.failure = "the AP's OMAPI control socket never listened"
            return
        port = int(listening["fields"]["port"])
        for index, message in enumerate(run.requests):
            if run.before is not None:
                await run.before(index, harness)
            run.answers.append(await request("127.0.0.1", port, message, timeout=60))
    except (OSError, ConnectionError, ValueError, trio.TooSlowError) as exc:
        run.failure = f"the control socket failed: {exc!r}"
    finally:
        cp = harness.processes.get("cp")
        if cp is not None and cp.returncode is None:
            cp.terminate()


def run_omapi(run: OmapiRun, options: ScenarioOptions) -> RunResult:
    directory = options.directory or Path(tempfile.mkdtemp(prefix=f"bipsim-{run.name}-"))
    config = RunConfig(
        session=run.name,
        profile={**card_profile(run.profile), **run.profile_changes},
        ap_args=["--omapi-listen", "127.0.0.1:0", *run.ap_args],
        card2="sim" if run.profile2 is not None else ("none" if run.empty_slot2 else None),
        profile2=card_profile(run.profile2) if run.profile2 is not None else {},
        card_control=run.card_control,
        server=False,
        port_a=options.port_a,
        port_b=options.port_b,
        timeout=120.0,
        during=lambda harness: _drive(run, harness),
    )
    result = run_processes(config, directory)
    check(run.failure is None, f"{run.name}: {run.failure}", result)
    check(len(run.answers) == len(run.requests), f"{run.name}: {len(run.answers)} OMAPI answers", result)
    check_step_labels(result)
    return result


# ---- checks on the merged trace ---------------------------------------------------------------------------------


def ap_events(result: RunResult, kind: str) -> list[TraceEvent]:
    return [e for e in result.events if e.kind == kind and e.src.value == "ap"]


def at_commands(result: RunResult) -> list[str]:
    """The AP's AT command lines on DLC 1, in order (without the CR)."""
    return [e.data.decode("ascii", "replace").strip() for e in ap_events(result, Kind.AT_COMMAND)]


def first_steps(result: RunResult) -> dict[str, float]:
    first: dict[str, float] = {}
    for event in result.events:
        if event.step is not None and event.step.startswith("004:") and event.step not in first:
            first[event.step] = event.t
    return first


def check_order(result: RunResult, codes: tuple[str, ...]) -> None:
    first = first_steps(result)
    missing = [code for code in codes if code not in first]
    check(not missing, f"steps missing: {missing} (present: {sorted(first)})", result)
    times = [first[code] for code in codes]
    check(times == sorted(times), f"steps {codes} out of order: {times}", result)


def check_step_labels(result: RunResult) -> None:
    """Every event labelled with a 004 step is a message of that step (trace/steps.py's table)."""
    wrong = [
        f"{e.step} on {e.kind} {e.src.value}->{e.dst.value}"
        for e in result.events
        if e.step is not None and e.step.startswith("004:") and not STEPS[e.step].matches(e)
    ]
    check(not wrong, f"mislabelled 004 steps: {wrong[:5]}", result)


def variable_of(result: RunResult, reader: str) -> bool | None:
    values = [
        e.field("variable")
        for e in ap_events(result, Kind.OMAPI_FRAMEWORK)
        if e.field("event") == "variable" and e.field("reader") == reader
    ]
    return values[-1] if values else None


def ccho_lines(result: RunResult, aid: str) -> list[str]:
    return [line for line in at_commands(result) if line == f'AT+CCHO="{aid}"']


def check_boot_loaded(result: RunResult) -> None:
    """Test 1 of issue 19: the rule load's AT sequence and steps 201..205, init opens a channel (301..304)."""
    lines = at_commands(result)
    check(f'AT+CCHO="{ARA_M}"' in lines, "no AT+CCHO of the ARA-M at boot", result)
    start = lines.index(f'AT+CCHO="{ARA_M}"')
    check(any("80CAFF4000" in line for line in lines[start:]), "no AT+CGLA GET DATA 80CAFF4000", result)
    check(
        any(line.startswith("AT+CCHC=") for line in lines[start:]), "the ARA-M channel was not closed", result
    )
    check_order(result, (*BOOT_STEPS, "004:205", "004:301", "004:302", "004:303", "004:304"))


def answer_exception(run: OmapiRun, index: int = -1) -> str | None:
    exception = run.answers[index].get("exception")
    return str(exception) if exception is not None else None


# ---- the scenarios ----------------------------------------------------------------------------------------------


def r_apdu(answer: str) -> str:
    """An R-APDU in hex told short: `256 bytes + 9000`, or the status word alone."""
    data = len(answer) // 2 - 2
    return f"{data} bytes + {answer[-4:]}" if data > 0 else answer[-4:]


def answer_lines(run: OmapiRun, chooser_lists: list[list[str]]) -> list[str]:
    """One line per OMAPI answer of `run` (`SIM1 ch 4: 00080000 -> 256 bytes + 9000`, `SIM1: SecurityException:
    ...`), with the chooser dialog's own list (`chooser_lists`, one per dialog in order) before the answer of a
    request that let the chooser pick."""
    lists = iter(chooser_lists)
    lines: list[str] = []
    for message, answer in zip(run.requests, run.answers, strict=False):
        op = message.get("op")
        if "error" in answer:
            lines.append(f"{op}: refused: {answer['error']}")
        elif op in ("status", "boot"):
            for item in answer.get("readers", []):
                lines.append(
                    f"{op} {item['name']}: enforceCarrierPrivilege {str(item['variable']).lower()}, "
                    f"{'available' if item['available'] else 'not available'} ({item['reason']})"
                )
        elif op == "run":
            if message.get("reader") is None:
                listed = next(lists, None)
                if listed is not None:
                    lines.append(f"chooser lists: {', '.join(listed) or 'no reader'}")
            reader = answer.get("reader") or "no reader"
            if answer.get("exception"):
                lines.append(f"{reader}: {answer['exception']}: {answer.get('reason', '')}")
                continue
            if answer.get("channel") is None:
                lines.append(f"{reader}: {answer.get('reason', 'no channel')}")
                continue
            where = f"{reader} ch {answer['channel']}"
            if answer.get("select_response") is not None:
                lines.append(f"{where}: getSelectResponse -> {r_apdu(answer['select_response'])}")
            for apdu, response in zip(message.get("apdus", []), answer.get("responses", []), strict=False):
                lines.append(f"{where}: {apdu} -> {r_apdu(response)}")
        else:
            lines.append(f"{op}: {'ok' if answer.get('ok') else answer.get('exception', 'failed')}")
    return lines


def _scenario(
    run: OmapiRun, options: ScenarioOptions, checks: Callable[[OmapiRun, RunResult], None]
) -> ScenarioResult:
    result = run_omapi(run, options)
    checks(run, result)
    listed = [e.field("readers") for e in ap_events(result, Kind.OMAPI_CHOOSER) if e.field("event") == "list"]
    for line in answer_lines(run, listed):  # the application's view, one line per answer
        print(f"  {line}", flush=True)
    count = len(run.answers)
    return ScenarioResult(run.name, result, [f"{count} OMAPI answer{'' if count == 1 else 's'}, above"])


def omapi_non_nfc(options: ScenarioOptions) -> ScenarioResult:
    """OMAPI without NFC: the card's ARA-M rules load at start-up (004:201..205) and a granted application opens a
    channel to the echo applet through the chooser (004:401..407), transmits and closes."""
    run = OmapiRun("omapi-non-nfc", ap_args=["--no-nfc"], requests=[app_request(None)])

    def checks(run: OmapiRun, result: RunResult) -> None:
        check_boot_loaded(result)
        check(variable_of(result, "SIM1") is True, "enforceCarrierPrivilege of SIM1 is not true", result)
        answer = run.answers[0]
        check(answer.get("ok") is True, f"the application's OMAPI calls failed: {answer}", result)
        check_order(
            result,
            (
                "004:401",
                "004:402",
                "004:403",
                "004:404",
                "004:405",
                "004:406",
                "004:101",
                "004:102",
                "004:407",
            ),
        )
        lines = at_commands(result)
        opened = f'AT+CCHO="{ECHO}"'
        check(opened in lines, "no AT+CCHO of the echo applet", result)
        session = answer["channel"]
        after = lines[lines.index(opened) :]
        check(f"AT+CCHC={session}" in after, f"the channel's close is not AT+CCHC={session}", result)
        check(
            any(line.startswith(f"AT+CGLA={session},") and ECHO_APDU in line for line in after),
            "the APDU did not go out on the channel's session",
            result,
        )

    return _scenario(run, options, checks)


def omapi_no_rules(options: ScenarioOptions) -> ScenarioResult:
    """A card without an ARA-M (and no ARF): enforceCarrierPrivilege false (004:206), the channel open stops
    (004:305) with SecurityException and no AT+CCHO of the target applet reaches the CP."""
    run = OmapiRun("omapi-no-rules", profile="omapi-no-rules", requests=[app_request("SIM1")])

    def checks(run: OmapiRun, result: RunResult) -> None:
        check_order(result, (*BOOT_STEPS, "004:206", "004:301", "004:302", "004:305"))
        check(variable_of(result, "SIM1") is False, "enforceCarrierPrivilege of SIM1 is not false", result)
        check(
            answer_exception(run) == "SecurityException", f"expected SecurityException: {run.answers}", result
        )
        check(not ccho_lines(result, ECHO), "an AT+CCHO of the target applet reached the CP", result)

    return _scenario(run, options, checks)


def omapi_denied(options: ScenarioOptions) -> ScenarioResult:
    """The rules load (variable true) but name only another application: SecurityException from the GP SEAC
    enforcement on top of the invention's gate, and no AT+CCHO of the target applet."""
    run = OmapiRun("omapi-denied", requests=[app_request("SIM1", DENIED), app_request("SIM1", GRANTED)])

    def checks(run: OmapiRun, result: RunResult) -> None:
        check_boot_loaded(result)
        check(variable_of(result, "SIM1") is True, "enforceCarrierPrivilege of SIM1 is not true", result)
        check(
            answer_exception(run, 0) == "SecurityException",
            f"expected SecurityException: {run.answers}",
            result,
        )
        decisions = [e.field("granted") for e in ap_events(result, Kind.OMAPI_ACCESS)]
        check(
            decisions == [False, True], f"access decisions {decisions}, expected denied then granted", result
        )
        check(run.answers[1].get("ok") is True, f"the granted application failed: {run.answers[1]}", result)
        check(len(ccho_lines(result, ECHO)) == 1, "the denied application's open reached the CP", result)

    return _scenario(run, options, checks)


def omapi_two_readers(options: ScenarioOptions) -> ScenarioResult:
    """Two cards, only SIM1 with ARA-M rules: the chooser dialog (004:403) lists SIM1 alone, the choice puts the
    session and the channel on slot 1."""
    run = OmapiRun(
        "omapi-two-readers",
        profile2="omapi-no-rules",
        ap_args=["--se-choose", "first"],
        requests=[{"op": "status"}, app_request(None)],
    )

    def checks(run: OmapiRun, result: RunResult) -> None:
        status = {item["name"]: item for item in run.answers[0].get("readers", [])}
        check(sorted(status) == ["SIM1", "SIM2"], f"readers {sorted(status)}", result)
        check(
            status["SIM1"]["variable"] is True and status["SIM2"]["variable"] is False,
            f"variables {status}",
            result,
        )
        listed = [
            e.field("readers") for e in ap_events(result, Kind.OMAPI_CHOOSER) if e.field("event") == "list"
        ]
        check(listed == [["SIM1"]], f"the chooser listed {listed}", result)
        check(
            run.answers[1].get("ok") is True and run.answers[1].get("reader") == "SIM1",
            f"the application's calls: {run.answers[1]}",
            result,
        )
        lines = at_commands(result)
        opened = lines.index(f'AT+CCHO="{ECHO}"')
        # +CCHO addresses the slot the line chose: slot 2 only right after AT%SLOT=2, which the RIL undoes at once
        check(lines[opened - 1] != "AT%SLOT=2", "the channel was opened on slot 2", result)
        slot2 = [e for e in result.events if e.kind == Kind.APDU_COMMAND and e.field("slot") == 2]
        check(
            all(e.data[1:4] != bytes.fromhex("080000") for e in slot2),
            "the APDU went to slot 2's card",
            result,
        )

    return _scenario(run, options, checks)


def omapi_nfc_legacy(options: ScenarioOptions) -> ScenarioResult:
    """For comparison, the old rule (only the NFC process may open a channel) on the same card without an NFC
    process: the rules load, yet every open is refused (004:305), which the invention's gate does not do."""
    run = OmapiRun(
        "omapi-nfc-legacy", ap_args=["--omapi-gate", "nfc-legacy", "--no-nfc"], requests=[app_request("SIM1")]
    )

    def checks(run: OmapiRun, result: RunResult) -> None:
        check_boot_loaded_variable_only(result)
        check(
            answer_exception(run) == "SecurityException", f"expected SecurityException: {run.answers}", result
        )
        gates = {e.field("gate") for e in ap_events(result, Kind.OMAPI_CHECK) if e.field("gate")}
        check(gates == {"nfc_legacy"}, f"the check used gates {gates}", result)
        check(not ccho_lines(result, ECHO), "an AT+CCHO of the target applet reached the CP", result)

    return _scenario(run, options, checks)


def check_boot_loaded_variable_only(result: RunResult) -> None:
    check_order(result, (*BOOT_STEPS, "004:205", "004:301", "004:302", "004:305"))
