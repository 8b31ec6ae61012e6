"""What every scenario shares: options from the command line, the result, and the checks scenarios make.

Checks select trace events by `kind` and read their `fields` (docs/protocols.md, "Traces"), never the summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bipsim.scenarios.harness import RunResult
from bipsim.trace.events import TraceEvent
from bipsim.trace.kinds import Kind
from bipsim.trace.steps import check_step_order


class ScenarioFailed(AssertionError):
    pass


@dataclass
class ScenarioOptions:
    directory: Path | None = None
    port_a: str | None = None
    port_b: str | None = None
    card: str = "sim"  # bipsim cp --card: sim, or pcsc:N / pcsc:NAME (the embodiments only)
    # the packet data plane (bipsim scenario run --radio/--network/--seed): the embodiments and the packet
    # scenarios take them (a packet scenario's own impairment wins over --radio)
    radio: str = "ideal"
    network: str = "nat"
    seed: int = 0
    wlan: str | None = None  # the AP's Wi-Fi link model (embodiment 2)
    # with a PC/SC card: where the OTA server listens, HOST:PORT (None: the built-in profile's ota_host:ota_port)
    ota_listen: str | None = None

    def plane(self) -> dict[str, Any]:
        """The RunConfig fields of these options."""
        return {"radio": self.radio, "network": self.network, "seed": self.seed, "wlan": self.wlan}


@dataclass
class ScenarioResult:
    name: str
    run: RunResult
    notes: list[str] = field(default_factory=list)


def check(condition: bool, message: str, run: RunResult | None = None) -> None:
    if not condition:
        raise ScenarioFailed(message + (f" ({run.explain()})" if run is not None else ""))


def check_ota_completed(run: RunResult) -> None:
    check(run.cp_code == 0, "the CP did not end its session cleanly", run)
    check(run.completed, "the OTA server did not complete the campaign with 90 00 everywhere", run)
    if not card_state_known(run):
        return  # the card's own status words, 90 00 for every command of the campaign, are all there is to see
    gp = run.card_state.get("gp", {})
    check(
        "a0000005590010ff01" in gp.get("applications", {}),
        "the card's registry lacks the installed applet",
        run,
    )
    spn = run.card_state.get("files", {}).get("3F00/7FF0/6F46", "")
    check(bytes.fromhex(spn)[1:11] == b"BIPSIM-OTA", "EF_SPN was not updated", run)


def card_state_known(run: RunResult) -> bool:
    """Whether the run's card state could be read: always for the simulated card; for a card behind PC/SC
    (`--card pcsc:...`) only when the run was given its state file (a simulated card that `bipsim card serve`
    exports); a real card keeps it to itself."""
    return run.config.card == "sim" or bool(run.card_state)


def check_steps(run: RunResult, embodiment: int) -> None:
    problems = check_step_order(run.events, embodiment)
    check(not problems, f"patent steps of embodiment {embodiment}: {problems}", run)


def terminal_responses(run: RunResult) -> list[tuple[str, bytes]]:
    """(command answered, TR bytes) of every TERMINAL RESPONSE the CP sent (kind cat.terminal_response, the
    command's name from `fields.command`, e.g. "OPEN CHANNEL")."""
    out = []
    for event in run.events:
        if event.kind == Kind.CAT_TERMINAL_RESPONSE and event.src.value == "cp":
            out.append((str(event.field("command", "")), event.data[5:]))
    return out


def proactive_commands(run: RunResult, command: str) -> list[TraceEvent]:
    """The card's proactive commands named `command` (kind cat.proactive, `fields.command`)."""
    return [e for e in run.events if e.kind == Kind.CAT_PROACTIVE and e.field("command") == command]


def channel_status_envelopes(run: RunResult, link: str) -> list[TraceEvent]:
    """The CP's ENVELOPE (event download: Channel Status) events whose `fields.link` is `link` ("established",
    "dropped", "not_established")."""
    return [
        e
        for e in run.events
        if e.kind == Kind.CAT_ENVELOPE
        and e.src.value == "cp"
        and e.field("event") == "channel_status"
        and e.field("link") == link
    ]
