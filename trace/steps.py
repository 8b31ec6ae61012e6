"""The steps of patent CN101594614A (figures 4 and 7) as docs/protocols.md ("The patent's steps") names them.

Components label trace events with these codes; scenarios check that a merged trace shows every step of its
embodiment with first occurrences in this order; renderers show the descriptions. Each step names the messages it
labels by `kind`, ends and `fields` (docs/protocols.md, "Traces"): `step_of` finds the step of an event from those
alone, and `mislabelled` lists labelled events that are not what their step says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bipsim.trace.events import TraceEvent
from bipsim.trace.kinds import Kind

SERVER = frozenset({"ota", "net"})


@dataclass(frozen=True, slots=True)
class Message:
    """One kind of event a step labels: its kinds, its ends, the facts its `fields` must hold where it has them,
    and how its bytes begin (an AT command's name)."""

    kinds: frozenset[str]
    src: frozenset[str]
    dst: frozenset[str]
    fields: Mapping[str, object] = field(default_factory=dict)
    prefix: bytes = b""

    def matches(self, event: TraceEvent) -> bool:
        if event.kind not in self.kinds or event.src.value not in self.src or event.dst.value not in self.dst:
            return False
        if self.prefix and not event.data.startswith(self.prefix):
            return False
        return all(event.field(name) in (None, value) for name, value in self.fields.items())

    def __str__(self) -> str:
        facts = "".join(f" {name}={value}" for name, value in self.fields.items())
        prefix = f" {self.prefix.decode()}..." if self.prefix else ""
        ends = f"{'|'.join(sorted(self.src))}->{'|'.join(sorted(self.dst))}"
        return f"{'|'.join(sorted(self.kinds))} {ends}{facts}{prefix}"


def _m(kinds: str, src: str, dst: str, prefix: bytes = b"", **facts: object) -> Message:
    ends = {"server": SERVER}
    return Message(
        frozenset(kinds.split()),
        ends.get(src, frozenset({src})),
        ends.get(dst, frozenset({dst})),
        facts,
        prefix,
    )


@dataclass(frozen=True, slots=True)
class Step:
    """A patent step and the messages (by kind and fields, never by summary) that it labels."""

    code: str
    description: str
    messages: tuple[Message, ...] = ()

    def matches(self, event: TraceEvent) -> bool:
        return any(message.matches(event) for message in self.messages)


def _fetch(command: str) -> Message:
    return _m(Kind.CAT_PROACTIVE, "uicc", "cp", command=command)


def _tr(command: str) -> Message:
    return _m(Kind.CAT_TERMINAL_RESPONSE, "cp", "uicc", command=command)


def _envelope(event: str, link: str | None = None) -> Message:
    if link is None:
        return _m(Kind.CAT_ENVELOPE, "cp", "uicc", event=event)
    return _m(Kind.CAT_ENVELOPE, "cp", "uicc", event=event, link=link)


# BIP data between the CP and the AP on the channel's DLC (embodiment 2): the relaying process's event
RELAY = f"{Kind.CMUX_DATA} {Kind.APP_EVENT} {Kind.TCP_DATA}"
ANSWER = f"{Kind.AT_INFO} {Kind.AT_FINAL}"

EMBODIMENT_1: tuple[Step, ...] = (
    Step("S401", "FETCH OPEN CHANNEL (client)", (_fetch("OPEN CHANNEL"),)),
    Step(
        "S402",
        "CP sends AT%GETNET to the AP proxy and TR (channel id) to the card",
        (_m(Kind.AT_COMMAND, "cp", "ap", b"AT%GETNET"), _tr("OPEN CHANNEL")),
    ),
    Step("S403", "AP reads APN/user/password and answers %NETPAR", (_m(ANSWER, "ap", "cp"),)),
    Step(
        "S404", "CP's stack sends the TCP connection request (SYN)", (_m(Kind.TCP_CONNECT, "cp", "server"),)
    ),
    Step("S405", "server's TCP acknowledgement", (_m(Kind.TCP_ACCEPT, "server", "cp"),)),
    Step(
        "S406",
        "ENVELOPE event Channel Status (link established)",
        (_envelope("channel_status", link="established"),),
    ),
    Step("S407", "FETCH SEND DATA", (_fetch("SEND DATA"),)),
    Step(
        "S408",
        "CP sends the data as TCP/IP and TR to the card",
        (_m(Kind.TCP_DATA, "cp", "server"), _tr("SEND DATA")),
    ),
    Step("S409", "server sends data", (_m(Kind.TCP_DATA, "server", "cp"),)),
    Step("S410", "ENVELOPE event Data Available", (_envelope("data_available"),)),
    Step("S411", "FETCH RECEIVE DATA", (_fetch("RECEIVE DATA"),)),
    Step("S412", "TR (data)", (_tr("RECEIVE DATA"),)),
    Step("S413", "FETCH CLOSE CHANNEL", (_fetch("CLOSE CHANNEL"),)),
    Step(
        "S414",
        "TR (channel status: link not established) and CP's TCP close",
        (_tr("CLOSE CHANNEL"), _m(Kind.TCP_CLOSE, "cp", "server")),
    ),
    Step("S415", "server's close acknowledgement", (_m(Kind.TCP_CLOSED, "server", "cp"),)),
)

EMBODIMENT_2: tuple[Step, ...] = (
    Step("S701", "FETCH OPEN CHANNEL", (_fetch("OPEN CHANNEL"),)),
    Step(
        "S702",
        "TR (channel id) and AT%WEBOPCH to the AP proxy",
        (_tr("OPEN CHANNEL"), _m(Kind.AT_COMMAND, "cp", "ap", b"AT%WEBOPCH")),
    ),
    Step("S703", "AP's TCP connection request", (_m(Kind.TCP_CONNECT, "ap", "server"),)),
    Step("S704", "server's TCP acknowledgement", (_m(Kind.TCP_ACCEPT, "server", "ap"),)),
    Step("S705", "proxy answers OK", (_m(ANSWER, "ap", "cp"),)),
    Step(
        "S706",
        "ENVELOPE Channel Status (link established)",
        (_envelope("channel_status", link="established"),),
    ),
    Step("S707", "FETCH SEND DATA", (_fetch("SEND DATA"),)),
    Step(
        "S708",
        "CP relays the data over its CMUX data channel and TR to the card",
        (_m(RELAY, "cp", "ap"), _tr("SEND DATA")),
    ),
    Step("S709", "AP sends it as TCP/IP", (_m(Kind.TCP_DATA, "ap", "server"),)),
    Step("S710", "server sends data to the AP", (_m(Kind.TCP_DATA, "server", "ap"),)),
    Step("S711", "AP relays it over CMUX to the CP", (_m(RELAY, "ap", "cp"),)),
    Step("S712", "ENVELOPE Data Available", (_envelope("data_available"),)),
    Step("S713", "FETCH RECEIVE DATA", (_fetch("RECEIVE DATA"),)),
    Step("S714", "TR (data)", (_tr("RECEIVE DATA"),)),
    Step("S715", "FETCH CLOSE CHANNEL", (_fetch("CLOSE CHANNEL"),)),
    Step(
        "S716",
        "TR (link not established) and AT%WEBCLCH to the AP",
        (_tr("CLOSE CHANNEL"), _m(Kind.AT_COMMAND, "cp", "ap", b"AT%WEBCLCH")),
    ),
    Step("S717", "AP's TCP close", (_m(Kind.TCP_CLOSE, "ap", "server"),)),
    Step("S718", "server's close acknowledgement", (_m(Kind.TCP_CLOSED, "server", "ap"),)),
)

# seed 004, OMAPI on a terminal without NFC (docs/protocols.md, "OMAPI on the AP"): the AP's layers label these
_FW = Kind.OMAPI_FRAMEWORK
SEED_004: tuple[Step, ...] = (
    Step(
        "004:101",
        "when a logical channel must be opened, read the variable",
        (_m(Kind.OMAPI_CHECK, "ap", "ap"),),
    ),
    Step("004:102", "open it if the variable is true", (_m(Kind.OMAPI_CHECK, "ap", "ap", allowed=True),)),
    Step("004:201", "terminal powers on", (_m(_FW, "ap", "ap", event="power_on"),)),
    Step(
        "004:202",
        "Framework layer checks that a card is present",
        (_m(_FW, "ap", "ap", event="card_check"), _m(Kind.AT_COMMAND, "ap", "cp", b"AT+CPIN?")),
    ),
    Step(
        "004:203",
        "load the rules from the card (ARA-M: +CCHO, +CGLA GET DATA, +CCHC)",
        (_m(_FW, "ap", "ap", event="load_rules"), _m(Kind.AT_COMMAND, "ap", "cp")),
    ),
    Step("004:204", "rules loaded?", (_m(_FW, "ap", "ap", event="loaded"),)),
    Step(
        "004:205", "enforceCarrierPrivilege = true", (_m(_FW, "ap", "ap", event="variable", variable=True),)
    ),
    Step(
        "004:206", "enforceCarrierPrivilege = false", (_m(_FW, "ap", "ap", event="variable", variable=False),)
    ),
    Step("004:301", "initialise OMAPI", (_m(Kind.OMAPI_CALL, "ap", "ap"),)),
    Step("004:302", "PhoneInterfaceManager layer checks the variable", (_m(Kind.OMAPI_CHECK, "ap", "ap"),)),
    Step("004:303", "RIL layer calls open-logical-channel", (_m(Kind.OMAPI_RIL, "ap", "cp", op="open"),)),
    Step("004:304", "the command goes to the card", (_m(Kind.AT_COMMAND, "ap", "cp", b"AT+CCHO"),)),
    Step(
        "004:305",
        "stop and forbid access",
        (_m(f"{Kind.OMAPI_CHECK} {Kind.OMAPI_ERROR} {Kind.OMAPI_CALL}", "ap", "ap"),),
    ),
    Step("004:401", "application creates an SEService", (_m(Kind.OMAPI_CALL, "ap", "ap", api="SEService"),)),
    Step("004:402", "it gets the available readers", (_m(Kind.OMAPI_CALL, "ap", "ap", api="getReaders"),)),
    Step("004:403", "a dialog lists them", (_m(Kind.OMAPI_CHOOSER, "ap", "ap", event="list"),)),
    Step("004:404", "the user's choice", (_m(Kind.OMAPI_CHOOSER, "ap", "ap", event="choice"),)),
    Step("004:405", "that card becomes the Reader", (_m(Kind.OMAPI_CALL, "ap", "ap", api="Reader"),)),
    Step("004:406", "Session", (_m(Kind.OMAPI_CALL, "ap", "ap", api="openSession"),)),
    Step(
        "004:407",
        "logical channel to the applet",
        (
            _m(Kind.OMAPI_CALL, "ap", "ap", api="openLogicalChannel"),
            _m(Kind.AT_COMMAND, "ap", "cp", b"AT+CCHO"),
        ),
    ),
)

# seed 002, SIM data sync (docs/protocols.md, "SIM data sync"): the AP's sync service (ap/sync/) labels these
SEED_002: tuple[Step, ...] = (
    Step(
        "002:S11",
        "detect a preset operation (SIM inserted/removed, virtual SIM added/deleted, records edited)",
        (
            _m(Kind.APP_EVENT, "ap", "ap", event="sync_trigger"),
            _m(Kind.AT_COMMAND, "ap", "cp", b"AT%SLOTS?"),  # the card presence the CP reports
            _m(Kind.HTTP_REQUEST, "ap", "sync", method="GET"),  # the server's version: an edit made there
        ),
    ),
    Step(
        "002:S12",
        "read the SIM information and user data",
        (
            _m(Kind.AT_COMMAND, "ap", "cp"),
            _m(Kind.HTTP_REQUEST, "ap", "sync"),
            _m(Kind.APP_EVENT, "ap", "ap", event="sync_bad_record"),  # a record read that the sync refuses
            _m(Kind.APP_EVENT, "ap", "ap", event="sync_record_kept"),  # a record read that it leaves alone
        ),
    ),
    Step(
        "002:S13",
        "synchronise by the preset rules",
        (
            _m(Kind.APP_EVENT, "ap", "ap", event="sync_merged"),
            _m(Kind.AT_COMMAND, "ap", "cp"),
            _m(Kind.HTTP_REQUEST, "ap", "sync"),
            # a write a SIM cannot take: skipped for that SIM, or the cycle aborted
            _m(Kind.APP_EVENT, "ap", "ap", event="sync_record_unfit"),
            _m(Kind.APP_EVENT, "ap", "ap", event="sync_sim_full"),
            _m(Kind.APP_EVENT, "ap", "ap", event="sync_write_refused"),
        ),
    ),
)

# seed 001, push deployment (docs/protocols.md, "Push deployment"): the AP's upgrade agent (ap/upgrade/) and the
# publish server (ota/publish_server.py) label these
SEED_001: tuple[Step, ...] = (
    Step("001:201", "notice received, the user asked", (_m(Kind.UPGRADE_PROMPT, "ap", "ap"),)),
    Step("001:202", "connect to the address in the notice", (_m(Kind.TCP_CONNECT, "ap", "publish"),)),
    Step("001:203", "the server authenticates the terminal", (_m(Kind.PUBLISH_AUTH, "publish", "ap"),)),
    Step(
        "001:204",
        "download, install, configure, tell the user the result",
        (_m(Kind.PUBLISH_DOWNLOAD, "publish", "ap"), _m(Kind.UPGRADE_RESULT, "ap", "ap")),
    ),
    Step(
        "001:e1.1",
        "embodiment 1: the agent listens for SMS from boot (+CNMI)",
        (_m(Kind.AT_COMMAND, "ap", "cp", b"AT+CNMI"),),
    ),
    Step(
        "001:e1.2",
        "embodiment 1: the notice SMS (server address, location, name, timestamp)",
        (_m(Kind.UPGRADE_NOTICE, "ap", "ap", via="sms"),),
    ),
    Step(
        "001:e2.1",
        "embodiment 2: the WAP Push Service Indication linking the software",
        (_m(Kind.UPGRADE_NOTICE, "ap", "ap", via="wap"),),
    ),
    Step(
        "001:e3.1",
        "embodiment 3: the user's check sends the installed name and version",
        (_m(Kind.HTTP_REQUEST, "ap", "publish", method="POST", target="/v1/check"),),
    ),
    Step(
        "001:e4.1",
        "embodiment 4: the long-lived connection opened and authenticated at boot",
        (_m(Kind.UPGRADE_PUSH, "ap", "publish", type="hello"),),
    ),
    Step(
        "001:e4.2",
        "embodiment 4: a release message on it",
        (_m(Kind.UPGRADE_PUSH, "publish", "ap", type="release"),),
    ),
)

# seed 000, the eUICC profile download with a cloud backup (docs/protocols.md, "eUICC and the cloud backup"): the
# AP's LPA (ap/lpa/lpa.py) labels these on its own events
SEED_000: tuple[Step, ...] = (
    Step(
        "000:201",
        "the profile's download completed: upload it to the cloud",
        (_m(Kind.LPA_STATE, "ap", "ap", state="uploaded"),),
    ),
    Step("000:202", "install it through the LPA", (_m(Kind.LPA_STATE, "ap", "ap", state="installing"),)),
    Step(
        "000:203",
        "on failure download it back from the cloud and install again; on success delete it from the cloud",
        (_m(Kind.LPA_STATE, "ap", "ap", state="cloud_fetch"), _m(Kind.LPA_CLOUD, "ap", "cloud", op="delete")),
    ),
    Step("000:401", "on download completion", (_m(Kind.LPA_STATE, "ap", "ap", state="downloaded"),)),
    Step(
        "000:4011",
        "fix the protocol with the cloud: fields, order, separator",
        (_m(Kind.LPA_RECORDS, "ap", "ap", part="protocol"),),
    ),
    Step("000:4012", "the terminal identity (EID)", (_m(Kind.LPA_RECORDS, "ap", "ap", part="identity"),)),
    Step("000:4013", "the management file (LPA)", (_m(Kind.LPA_RECORDS, "ap", "ap", part="management"),)),
    Step(
        "000:4014",
        "encapsulate as module=LPA$EID$PPR$profile_len$profile_data, in records of the upload maximum",
        (_m(Kind.LPA_RECORDS, "ap", "ap", part="encapsulate"),),
    ),
    Step("000:4015", "upload", (_m(Kind.LPA_CLOUD, "ap", "cloud", op="upload"),)),
    Step(
        "000:402",
        "install",
        (_m(Kind.LPA_ES10, "ap", "uicc", function="LoadBoundProfilePackage", direction="request"),),
    ),
    Step(
        "000:403",
        "on failure fetch by the identity and the management file",
        (_m(Kind.LPA_CLOUD, "ap", "cloud", op="fetch"),),
    ),
    Step("000:404", "parse and install again", (_m(Kind.LPA_RECORDS, "ap", "ap", part="parse"),)),
)

STEPS: dict[str, Step] = {
    step.code: step for step in EMBODIMENT_1 + EMBODIMENT_2 + SEED_004 + SEED_002 + SEED_001 + SEED_000
}


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


def step_of(event: TraceEvent, embodiment: int) -> str | None:
    """The step of embodiment `embodiment` that `event` is, from its kind, ends, fields and leading bytes; None when
    it is no step's message, or when its fields leave more than one step possible.

    A step that repeats (SEND DATA rounds) is the same message each time: this says which step a message is, not
    whether it is the first of its kind.
    """
    codes = [step.code for step in embodiment_steps(embodiment) if step.matches(event)]
    return codes[0] if len(codes) == 1 else None


def mislabelled(events: Iterable[TraceEvent], embodiment: int) -> list[str]:
    """Events labelled with a step of embodiment `embodiment` whose kind, ends or fields are not its messages'
    (events without a kind, from traces written before kinds, are not judged)."""
    steps = {step.code: step for step in embodiment_steps(embodiment)}
    problems = []
    for event in events:
        step = steps.get(event.step or "")
        if step is None or not event.kind or step.matches(event):
            continue
        expected = "; ".join(str(message) for message in step.messages)
        facts = "".join(
            f" {name}={event.field(name)}"
            for message in step.messages
            for name in message.fields
            if event.field(name)
        )
        problems.append(
            f"{step.code} labels {event.kind} {event.src.value}->{event.dst.value}{facts} at t={event.t:.6f}, "
            f"not {expected}"
        )
    return problems
