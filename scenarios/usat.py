"""The host's SIM toolkit through 27.007 section 12 (docs/protocols.md, "USAT through 27.007"): the card runs its
menu applet (profile key usat_menu, uicc/usat_menu.py) and no OTA session; the AP's toolkit (`bipsim ap --toolkit
select:2`, ap/toolkit.py) writes its TE profile and activates it with AT+CUSATA=2, so the CP sends the card the
merged profile; the card's SET UP MENU reaches the AP as +CUSATP, the AP selects "Choose" (MENU SELECTION through
AT+CUSATE), answers the card's SELECT ITEM with the first colour and its DISPLAY TEXT with OK.
"""

from __future__ import annotations

from bipsim.scenarios.base import ScenarioOptions, ScenarioResult, check
from bipsim.scenarios.harness import EventQuery, Harness, RunConfig, RunResult, run_processes
from bipsim.trace.kinds import Kind

DIALOGUE = ["SET UP MENU", "SELECT ITEM", "DISPLAY TEXT"]


async def _stop_after_the_dialogue(harness: Harness) -> None:
    """The card has no BIP session to end the CP's run: once the AP answered the dialogue's last command and the
    CP traced the end of that proactive session, stop the CP (SIGTERM, a clean exit)."""
    await harness.wait_for_event("ap", EventQuery(Kind.USAT_TOOLKIT), count=len(DIALOGUE), timeout=40)
    await harness.wait_for_event("cp", EventQuery(Kind.USAT_END), count=len(DIALOGUE) - 1, timeout=20)
    harness.processes["cp"].terminate()


def _commands(run: RunResult, kind: Kind, src: str) -> list[str]:
    return [str(e.field("command")) for e in run.events if e.kind == kind and e.src.value == src]


def usat_menu(options: ScenarioOptions) -> ScenarioResult:
    """The card's SET UP MENU, SELECT ITEM and DISPLAY TEXT answered by the AP's toolkit over +CUSATP/+CUSATT."""
    config = RunConfig(
        session="usat-menu",
        bearer="ap-proxy",
        profile={"usat_menu": True, "trigger": "manual"},
        ap_args=["--toolkit", "select:2"],
        server=False,
        port_a=options.port_a,
        port_b=options.port_b,
        timeout=60.0,
        during=_stop_after_the_dialogue,
    )
    run = run_processes(config, options.directory)
    check(run.cp_code == 0, "the CP did not end cleanly", run)
    answered = _commands(run, Kind.USAT_TOOLKIT, "ap")
    check(answered == DIALOGUE, f"the AP's toolkit answered {answered}, not {DIALOGUE}", run)
    handed = _commands(run, Kind.USAT_HANDOVER, "cp")
    check(handed == DIALOGUE, f"the CP handed {handed} to the host, not {DIALOGUE}", run)
    profiles = [e for e in run.events if e.kind == Kind.CAT_TERMINAL_PROFILE]
    check(len(profiles) == 2, f"{len(profiles)} TERMINAL PROFILEs instead of 2 (start, then +CUSATA=2)", run)
    selections = [
        e for e in run.events if e.kind == Kind.CAT_ENVELOPE and e.field("envelope") == "menu_selection"
    ]
    check(len(selections) == 1, f"{len(selections)} MENU SELECTION envelopes instead of 1", run)
    return ScenarioResult("usat-menu", run)
