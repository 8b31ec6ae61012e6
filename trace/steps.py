"""The steps of patent CN101594614A (figures 4 and 7) as docs/protocols.md ("The patent's steps") names them.

Components label trace events with these codes; scenarios check that a merged trace shows every step of its
embodiment with first occurrences in this order; renderers show the descriptions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bipsim.trace.events import TraceEvent


@dataclass(frozen=True, slots=True)
class Step:
    code: str
    description: str


EMBODIMENT_1: tuple[Step, ...] = (
    Step("S401", "FETCH OPEN CHANNEL (client)"),
    Step("S402", "CP sends AT%GETNET to the AP proxy and TR (channel id) to the card"),
    Step("S403", "AP reads APN/user/password and answers %NETPAR"),
    Step("S404", "CP's stack sends the TCP connection request (SYN)"),
    Step("S405", "server's TCP acknowledgement"),
    Step("S406", "ENVELOPE event Channel Status (link established)"),
    Step("S407", "FETCH SEND DATA"),
    Step("S408", "CP sends the data as TCP/IP and TR to the card"),
    Step("S409", "server sends data"),
    Step("S410", "ENVELOPE event Data Available"),
    Step("S411", "FETCH RECEIVE DATA"),
    Step("S412", "TR (data)"),
    Step("S413", "FETCH CLOSE CHANNEL"),
    Step("S414", "TR (channel status: link not established) and CP's TCP close"),
    Step("S415", "server's close acknowledgement"),
)

EMBODIMENT_2: tuple[Step, ...] = (
    Step("S701", "FETCH OPEN CHANNEL"),
    Step("S702", "TR (channel id) and AT%WEBOPCH to the AP proxy"),
    Step("S703", "AP's TCP connection request"),
    Step("S704", "server's TCP acknowledgement"),
    Step("S705", "proxy answers OK"),
    Step("S706", "ENVELOPE Channel Status (link established)"),
    Step("S707", "FETCH SEND DATA"),
    Step("S708", "CP relays the data over its CMUX data channel and TR to the card"),
    Step("S709", "AP sends it as TCP/IP"),
    Step("S710", "server sends data to the AP"),
    Step("S711", "AP relays it over CMUX to the CP"),
    Step("S712", "ENVELOPE Data Available"),
    Step("S713", "FETCH RECEIVE DATA"),
    Step("S714", "TR (data)"),
    Step("S715", "FETCH CLOSE CHANNEL"),
    Step("S716", "TR (link not established) and AT%WEBCLCH to the AP"),
    Step("S717", "AP's TCP close"),
    Step("S718", "server's close acknowledgement"),
)

STEPS: dict[str, Step] = {step.code: step for step in EMBODIMENT_1 + EMBODIMENT_2}


def embodiment_steps(embodiment: int) -> tuple[Step, ...]:
    """The ordered steps of embodiment 1 or 2."""
    if embodiment == 1:
        return EMBODIMENT_1
    if embodiment == 2:
        return EMBODIMENT_2
    raise ValueError(f"CN101594614A has embodiments 1 and 2, not {embodiment}")


def check_step_order(events: Iterable[TraceEvent], embodiment: int) -> list[str]:
    """Problems with a merged trace's steps: missing steps, or first occurrences out of the patent's order.

    Returns an empty list when every step of the embodiment occurs and their first occurrences follow the order.
    """
    first: dict[str, float] = {}
    for event in events:
        if event.step is not None and event.step not in first:
            first[event.step] = event.t
    steps = embodiment_steps(embodiment)
    problems = [f"{s.code} missing ({s.description})" for s in steps if s.code not in first]
    present = [s.code for s in steps if s.code in first]
    for earlier, later in zip(present, present[1:], strict=False):
        if first[later] < first[earlier]:
            problems.append(f"{later} (t={first[later]:.6f}) comes before {earlier} (t={first[earlier]:.6f})")
    return problems
