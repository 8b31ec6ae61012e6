"""The other OPEN CHANNEL link modes of TS 102 223 section 6.4.27: on demand and immediate (without background)."""

from __future__ import annotations

from bipsim.scenarios.base import (
    ScenarioOptions,
    ScenarioResult,
    channel_status_envelopes,
    check,
    check_ota_completed,
    terminal_responses,
)
from bipsim.scenarios.harness import RunConfig, run_processes
from bipsim.uicc.cat import channel_statuses, decode_terminal_response


def _run(mode: str, options: ScenarioOptions) -> ScenarioResult:
    config = RunConfig(
        session=mode, bearer="ap-proxy", link_mode=mode, port_a=options.port_a, port_b=options.port_b
    )
    run = run_processes(config, options.directory)
    check_ota_completed(run)
    envelopes = channel_status_envelopes(run, "established")
    check(not envelopes, f"{mode}: no Channel Status event is due outside background mode", run)
    opened = [data for command, data in terminal_responses(run) if command == "OPEN CHANNEL"]
    check(bool(opened), "no TERMINAL RESPONSE to OPEN CHANNEL", run)
    # channel status in the TR (8.56): on demand reports the link not yet established, immediate reports it up
    statuses = channel_statuses(decode_terminal_response(opened[0]))
    expected_up = mode == "immediate"
    check(
        bool(statuses) and statuses[0]["link_established"] == expected_up,
        f"{mode}: channel status {statuses} in the OPEN CHANNEL TR",
        run,
    )
    return ScenarioResult(mode, run)


def on_demand(options: ScenarioOptions) -> ScenarioResult:
    """On demand: the TR comes at once; the link is set up by the first SEND DATA."""
    return _run("on-demand", options)


def immediate(options: ScenarioOptions) -> ScenarioResult:
    """Immediate: the link first, then the TR with the channel established."""
    return _run("immediate", options)
