"""Several BIP channels at once (ETSI TS 102 223: a terminal offers up to 7): the card runs two OTA admin sessions
at the same time, one with each of two OTA servers, on channels 1 and 2; through the AP proxy they travel on CMUX
DLC 3 and DLC 4 (docs/protocols.md, "The serial line")."""

from __future__ import annotations

from bipsim.scenarios.base import (
    ScenarioOptions,
    ScenarioResult,
    channel_status_envelopes,
    check,
    check_ota_completed,
)
from bipsim.scenarios.harness import RunConfig, RunResult, run_processes
from bipsim.trace.events import TraceEvent
from bipsim.trace.kinds import Kind

# The second server's campaign: EF_SMS records 1 and 2 (RFM, TS 102 226; 176-byte records, TS 31.102 4.2.25) in
# two scripts, so its session has several rounds that overlap the first server's (which installs an applet).
SMS_RECORD_SIZE = 176
SMS_RECORDS = tuple(
    (b"\x01" + f"BIPSIM-SMS{n}".encode()).ljust(SMS_RECORD_SIZE, b"\xff").hex().upper() for n in (1, 2)
)
SECOND_CAMPAIGN = '[[card]]\niccid = "*"\n' + "".join(
    f'[[card.step]]\nkind = "rfm-record"\npath = "7FFF/6F3C"\nrecord = {n}\ndata = "{data}"\n'
    for n, data in enumerate(SMS_RECORDS, start=1)
)


def _channel_data(run: RunResult, channel: int) -> list[TraceEvent]:
    """The events carrying BIP channel `channel`'s payload over its data DLC 2 + channel (either direction):
    bytes with `fields.channel` and `fields.dlci`."""
    return [
        e
        for e in run.events
        if e.hex
        and e.field("channel") == channel
        and e.field("dlci") == 2 + channel
        and e.layer.value != "cmux"
    ]


def _opened(run: RunResult, dlci: int) -> bool:
    """Whether the opening of `dlci` was acknowledged (kind cmux.frame, `fields.frame` UA)."""
    return any(
        e.kind == Kind.CMUX_FRAME and e.field("frame") == "UA" and e.field("dlci") == dlci for e in run.events
    )


def two_channels(options: ScenarioOptions) -> ScenarioResult:
    """Two concurrent BIP channels (two OTA servers): data on DLC 3 and DLC 4 at the same time, both complete."""
    config = RunConfig(
        session="two-channels",
        bearer="ap-proxy",
        extra_servers=[SECOND_CAMPAIGN],
        port_a=options.port_a,
        port_b=options.port_b,
    )
    run = run_processes(config, options.directory)
    check_ota_completed(run)
    (second,) = run.extra_results
    check(
        bool(second) and all(c.get("completed") and c.get("all_ok") for c in second.values()),
        f"the second OTA server did not complete its campaign: {second}",
        run,
    )
    sms = run.card_state.get("files", {}).get("3F00/7FF0/6F3C", "").upper()
    check(sms.startswith("".join(SMS_RECORDS)), f"EF_SMS records 1 and 2 were not updated: {sms[:100]}", run)
    for dlci in (3, 4):
        check(_opened(run, dlci), f"DLC {dlci} was never opened", run)
    ones, twos = _channel_data(run, 1), _channel_data(run, 2)
    check(bool(ones) and bool(twos), f"data on channel 1: {len(ones)} events, channel 2: {len(twos)}", run)
    # at the same time: each channel carried data while the other was between its first and last bytes
    overlap = min(ones[-1].t, twos[-1].t) - max(ones[0].t, twos[0].t)
    check(overlap > 0, "the two channels' data did not overlap in time", run)
    merged = sorted([(e.t, 1) for e in ones] + [(e.t, 2) for e in twos])
    switches = sum(1 for (_, a), (_, b) in zip(merged, merged[1:], strict=False) if a != b)
    check(switches >= 2, f"the channels' data alternated only {switches} times", run)
    both_open = channel_status_envelopes(run, "established")
    check(
        len(both_open) >= 2,
        f"{len(both_open)} Channel Status (link established) events for two channels",
        run,
    )
    return ScenarioResult(
        "two-channels",
        run,
        [
            f"channel 1: {len(ones)} data events on DLC 3, channel 2: {len(twos)} on DLC 4, "
            f"overlapping for {overlap:.3f} s, {switches} switches between them"
        ],
    )
