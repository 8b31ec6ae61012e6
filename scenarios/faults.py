"""Failure scenarios: no network on the AP, a server that refuses, one that drops the session, and a serial line
that goes away and comes back. Each must end with the specification's answer to the card and no lost state."""

from __future__ import annotations

from bipsim.scenarios.base import (
    ScenarioOptions,
    ScenarioResult,
    check,
    check_ota_completed,
    terminal_responses,
)
from bipsim.scenarios.campaigns import applet_download
from bipsim.scenarios.harness import Harness, HarnessError, RunConfig, RunResult, run_processes
from bipsim.trace.reader import read_trace
from bipsim.uicc.cat import decode_terminal_response


def _open_result(run: RunResult) -> bytes:
    for summary, data in terminal_responses(run):
        if "OPEN CHANNEL" in summary:
            general, additional = decode_terminal_response(data).result
            return bytes((general,)) + additional
    return b""


def _failed_open(options: ScenarioOptions, config: RunConfig, expected: bytes) -> RunResult:
    """Runs `config` in immediate link mode on the options' line: the CP must end cleanly and the card's OPEN
    CHANNEL must get the TR result `expected` (general result and additional information)."""
    config.link_mode = "immediate"
    config.port_a, config.port_b = options.port_a, options.port_b
    run = run_processes(config, options.directory)
    check(run.cp_code == 0, "the CP did not end cleanly", run)
    result = _open_result(run)
    check(result == expected, f"OPEN CHANNEL result {result.hex()} instead of {expected.hex().upper()}", run)
    return run


def ap_no_network(options: ScenarioOptions) -> ScenarioResult:
    """The AP has neither Wi-Fi nor an APN: %WEBOPCH and %GETNET get +CME ERROR: 30; the card gets TR 0x20 'no
    service' (TS 102 223 8.12.2) and the session ends cleanly."""
    config = RunConfig(session="ap-no-network", bearer="auto", ap_args=["--no-wifi", "--no-cellular"])
    run = _failed_open(options, config, b"\x20\x04")
    check(
        not run.results or not any(card["scripts"] for card in run.results.values()),
        "no admin script may run",
        run,
    )
    return ScenarioResult("ap-no-network", run)


def server_refuses(options: ScenarioOptions) -> ScenarioResult:
    """Nothing listens on the server's port: the CP's connect is refused; TR 0x3A 'remote device not reachable'."""
    config = RunConfig(session="server-refuses", bearer="own-stack", server=False)
    return ScenarioResult("server-refuses", _failed_open(options, config, b"\x3a\x07"))


def server_drops(options: ScenarioOptions) -> ScenarioResult:
    """The server closes the connection in the middle of the campaign: the card gets Channel Status 'link dropped',
    closes the channel, opens a new one and resumes (X-Admin-Resume); the campaign still completes."""
    config = RunConfig(
        session="server-drops",
        bearer="ap-proxy",
        server_args=["--drop-after", "2"],
        port_a=options.port_a,
        port_b=options.port_b,
    )
    run = run_processes(config, options.directory)
    dropped = [e for e in run.events if e.layer.value == "apdu" and "link dropped" in e.summary]
    check(bool(dropped), "no Channel Status (link dropped) envelope reached the card", run)
    check_ota_completed(run)
    (card,) = run.results.values()
    check(card["resumed"] >= 1, "the card did not resume its admin session", run)
    return ScenarioResult("server-drops", run)


def line_drop(options: ScenarioOptions) -> ScenarioResult:
    """The serial line goes away (the pty pair closes) and comes back, twice: once after the AP attached and once in
    the middle of the card's session. Each time the CP reopens its line in plain AT mode and the AP probes again and
    restarts CMUX; the card gets Channel Status (link dropped), opens the channel again and resumes its admin
    session (X-Admin-Resume), which then completes."""

    async def drop(harness: Harness) -> None:
        # once the AP has opened its proxy channel (the CP answered SABM on DLC 2 with UA), pull the line
        if not await harness.wait_for_trace("cp", "UA DLC2"):
            raise HarnessError("the AP never attached, so there was no line to drop")
        await harness.restart_pair()
        # and again while the card's session runs: the first data from the server has reached the card
        if not await harness.wait_for_trace("cp", "ENVELOPE: Data Available"):
            raise HarnessError("the card's session never started after the first drop")
        await harness.restart_pair()

    config = RunConfig(
        session="line-drop",
        bearer="ap-proxy",
        campaign=LINE_DROP_CAMPAIGN,
        cp_args=["--start-delay", "1"],
        during=drop,
    )
    run = run_processes(config, options.directory)
    check_ota_completed(run)
    reopened = [e for e in run.events if "serial line" in e.summary and "reopened" in e.summary]
    check(len(reopened) >= 2, f"the CP reopened its line {len(reopened)} times, not twice", run)
    ap_events, _ = read_trace([run.directory / "ap.jsonl"])
    probes = [e for e in ap_events if e.src.value == "ap" and e.summary.startswith("AT+CMUX=")]
    check(len(probes) >= 3, f"the AP switched to CMUX {len(probes)} times, not 3", run)
    first_data = next(e.t for e in run.events if "ENVELOPE: Data Available" in e.summary)
    dropped = [
        e
        for e in run.events
        if e.layer.value == "apdu" and "Channel Status (link dropped)" in e.summary and e.t > first_data
    ]
    check(bool(dropped), "the card got no Channel Status (link dropped) in the middle of its session", run)
    (card,) = run.results.values()
    check(card["resumed"] >= 1, "the card did not resume its admin session", run)
    return ScenarioResult(
        "line-drop", run, [f"line reopened {len(reopened)} times, session resumed {card['resumed']} time(s)"]
    )


# a campaign long enough (a 12 000-byte load file, ~50 RECEIVE DATA rounds) for a drop to land in its middle
LINE_DROP_CAMPAIGN = applet_download(12000)


def large_download(options: ScenarioOptions) -> ScenarioResult:
    """A 70 000-byte load file: the command script arrives through many RECEIVE DATA rounds (0xFF rule)."""
    config = RunConfig(
        session="large-download",
        bearer="ap-proxy",
        campaign=applet_download(70000),
        timeout=90,
        port_a=options.port_a,
        port_b=options.port_b,
    )
    run = run_processes(config, options.directory)
    check_ota_completed(run)
    rounds = [e for e in run.events if e.summary == "FETCH: RECEIVE DATA" and e.src.value == "uicc"]
    received = sum(
        len(e.data)
        for e in run.events
        if e.layer.value == "tcp" and e.src.value == "ota" and e.dst.value == "ap"
    )
    check(received >= 64 * 1024, f"only {received} bytes came from the server", run)
    check(len(rounds) >= received // 237, f"{len(rounds)} RECEIVE DATA rounds for {received} bytes", run)
    return ScenarioResult("large-download", run, [f"{received} bytes in {len(rounds)} RECEIVE DATA rounds"])
