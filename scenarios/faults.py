"""Failure scenarios: no network on the AP, a server that refuses, one that drops the session, and a serial line
that goes away and comes back. Each must end with the specification's answer to the card and no lost state."""

from __future__ import annotations

import trio

from bipsim.scenarios.base import (
    ScenarioOptions,
    ScenarioResult,
    check,
    check_ota_completed,
)
from bipsim.scenarios.campaigns import applet_download
from bipsim.scenarios.harness import (
    EventQuery,
    Harness,
    HarnessError,
    RunConfig,
    RunResult,
    run_processes,
    select,
)
from bipsim.trace.kinds import Kind
from bipsim.trace.reader import read_trace
from bipsim.uicc.cat import decode_terminal_response

# The events the fault scenarios act on and check, by kind and fields (docs/protocols.md, "Traces").
AP_ATTACHED = EventQuery(
    Kind.CMUX_FRAME,
    lambda f: f.get("dlci") == 2 and f.get("frame") == "UA",
    src="cp",
)
DATA_AVAILABLE = EventQuery(Kind.CAT_ENVELOPE, lambda f: f.get("event") == "data_available")
LINK_DROPPED = EventQuery(
    Kind.CAT_ENVELOPE,
    lambda f: f.get("event") == "channel_status" and f.get("link") == "dropped",
)
LINE_REOPENED = EventQuery(Kind.LINE_REOPENED, src="cp")
CMUX_SWITCH = EventQuery(Kind.AT_COMMAND, src="ap", data_prefix=b"AT+CMUX=")
RECEIVE_DATA = EventQuery(Kind.CAT_PROACTIVE, lambda f: f.get("command") == "RECEIVE DATA", src="uicc")
OPEN_CHANNEL_ANSWER = EventQuery(  # the TERMINAL RESPONSE C-APDU answering OPEN CHANNEL
    Kind.CAT_TERMINAL_RESPONSE,
    lambda f: f.get("command") == "OPEN CHANNEL",
    src="cp",
    data_prefix=b"\x80\x14",
)


def _open_result(run: RunResult) -> bytes:
    for event in select(run.events, OPEN_CHANNEL_ANSWER):
        general, additional = decode_terminal_response(event.data[5:]).result
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
    dropped = select(run.events, LINK_DROPPED)
    check(bool(dropped), "no Channel Status (link dropped) envelope reached the card", run)
    check_ota_completed(run)
    (card,) = run.results.values()
    check(card["resumed"] >= 1, "the card did not resume its admin session", run)
    return ScenarioResult("server-drops", run)


def line_drop(options: ScenarioOptions) -> ScenarioResult:
    """The serial line goes away (the pty pair closes) and comes back, twice: once after the AP attached and once in
    the middle of the card's session. Each time the CP reopens its line in plain AT mode and the AP probes again and
    restarts CMUX; the card gets Channel Status (link dropped), opens the channel again and resumes its admin
    session (X-Admin-Resume), which then completes.

    Both drops are caused, not timed: the server's bytes are held (ServerLink) until the first drop is done, then
    held again 4 000 bytes into the download, inside the 12 000-byte load script, so the session cannot end before
    the second drop; that drop follows the event proving the card is mid-download (a Data Available envelope)."""

    async def drop(harness: Harness) -> None:
        assert harness.link is not None
        harness.link.hold_at(0)  # no server byte reaches the card until the first drop is done
        # once the AP has opened its proxy channel (the CP answered SABM on DLC 2 with UA), pull the line
        if await harness.wait_for_event("cp", AP_ATTACHED, timeout=WAIT) is None:
            raise HarnessError("the AP never attached, so there was no line to drop")
        await harness.restart_pair()
        # and again while the card's session runs, with the rest of the download held back
        harness.link.hold_at(LINE_DROP_OFFSET)
        with trio.move_on_after(WAIT):
            await harness.link.reached(LINE_DROP_OFFSET)
        if harness.link.stats.to_card < LINE_DROP_OFFSET:
            raise HarnessError("the card's session never started after the first drop")
        if await harness.wait_for_event("cp", DATA_AVAILABLE, timeout=WAIT) is None:
            raise HarnessError("no server data reached the card after the first drop")
        await harness.restart_pair()
        harness.link.hold_at(None)

    config = RunConfig(
        session="line-drop",
        bearer="ap-proxy",
        campaign=LINE_DROP_CAMPAIGN,
        cp_args=["--start-delay", "1"],
        during=drop,
        server_link=True,
        timeout=2 * WAIT,
    )
    run = run_processes(config, options.directory)
    check_ota_completed(run)
    reopened = select(run.events, LINE_REOPENED)
    check(len(reopened) >= 2, f"the CP reopened its line {len(reopened)} times, not twice", run)
    ap_events, _ = read_trace([run.directory / "ap.jsonl"])
    probes = select(ap_events, CMUX_SWITCH)
    check(len(probes) >= 3, f"the AP switched to CMUX {len(probes)} times, not 3", run)
    first_data = next(e.t for e in select(run.events, DATA_AVAILABLE))
    dropped = [e for e in select(run.events, LINK_DROPPED) if e.t > first_data]
    check(bool(dropped), "the card got no Channel Status (link dropped) in the middle of its session", run)
    (card,) = run.results.values()
    check(card["resumed"] >= 1, "the card did not resume its admin session", run)
    return ScenarioResult(
        "line-drop", run, [f"line reopened {len(reopened)} times, session resumed {card['resumed']} time(s)"]
    )


# seconds a moment may take to come: only a broken run waits this long (a loaded machine is slow, not wrong)
WAIT = 60.0
# the second drop lands this many bytes into what the server sent: past the TLS handshake and the EF_SPN script,
# well inside the load script
LINE_DROP_OFFSET = 4000
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
    rounds = select(run.events, RECEIVE_DATA)
    received = sum(
        len(e.data)
        for e in run.events
        if e.layer.value == "tcp" and e.src.value == "ota" and e.dst.value == "ap"
    )
    check(received >= 64 * 1024, f"only {received} bytes came from the server", run)
    check(len(rounds) >= received // 237, f"{len(rounds)} RECEIVE DATA rounds for {received} bytes", run)
    return ScenarioResult("large-download", run, [f"{received} bytes in {len(rounds)} RECEIVE DATA rounds"])
