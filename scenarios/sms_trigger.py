"""The SMS-PP push trigger end to end (GlobalPlatform Amd B session triggering, ETSI TS 102 225/226): the card starts
idle (profile trigger = "sms"), the AP hands the network's SMS-DELIVER to the CP with AT%SMSPP on DLC 1, the CP sends
it to the card as ENVELOPE (SMS-PP DOWNLOAD) and the answer carries the card's PoR. `sms-trigger`: a packet with a
good AES-CMAC, AES-CBC ciphering and a fresh counter -> PoR status 00 and the full OTA session of embodiment 2.
`sms-trigger-bad-mac`: the same packet with a wrong checksum -> PoR status 01 and no BIP session at all.
"""

from __future__ import annotations

from typing import Any

import trio

from bipsim.scenarios.base import (
    ScenarioOptions,
    ScenarioResult,
    check,
    check_ota_completed,
    check_steps,
    proactive_commands,
)
from bipsim.scenarios.harness import EventQuery, Harness, RunConfig, RunResult, run_processes
from bipsim.trace.kinds import Kind
from bipsim.uicc.ota_trigger import (
    Check,
    CounterMode,
    Keyset,
    PorMode,
    Spi,
    command_packet,
    push_script,
    sms_deliver,
    sms_user_data,
)
from bipsim.uicc.profile import load_profile

PROTECTED = Spi(Check.CC, True, CounterMode.HIGHER, PorMode.REQUIRED)


def trigger_tpdu(*, bad_mac: bool = False, counter: int = 1) -> bytes:
    """The SMS-DELIVER of an OTA platform: a PUSH (request for BIP channel opening, no objects: the card's profile
    names the server), secured with the default profile's key set."""
    kvn, kic, kid = load_profile().ota_keyset
    keys = Keyset(kvn, kic, kid)
    if bad_mac:
        keys = Keyset(kvn, kic, bytes(16))  # the platform signs with a key the card does not have
    packet = command_packet(push_script(), spi=PROTECTED, keys=keys, counter=counter)
    return sms_deliver(sms_user_data(packet))


def _config(name: str, options: ScenarioOptions, tpdu: bytes, **extra: object) -> RunConfig:
    return RunConfig(
        session=name,
        bearer="ap-proxy",
        profile={"trigger": "sms"},
        ap_args=["--push-sms", tpdu.hex().upper()],
        port_a=options.port_a,
        port_b=options.port_b,
        **extra,  # type: ignore[arg-type]
    )


def _por_status(run: RunResult) -> str | None:
    """The status of the first proof of receipt (kind sms.por, `fields.status`: two hex digits)."""
    for event in run.events:
        if event.kind == Kind.SMS_POR:
            status = event.field("status")
            return None if status is None else str(status).upper()
    return None


def sms_trigger(options: ScenarioOptions) -> ScenarioResult:
    """SMS-PP push (AES-CMAC, AES-CBC, counter) over AT%SMSPP: PoR 00, then the full OTA session (embodiment 2)."""
    run = run_processes(_config("sms-trigger", options, trigger_tpdu()), options.directory)
    check(_por_status(run) == "00", f"PoR status {_por_status(run)} instead of 00", run)
    check_ota_completed(run)
    check_steps(run, 2)
    counters = run.card_state.get("ota_counters", {})
    check(counters == {"1": 1}, f"the card's replay counter is {counters}, not 1", run)
    return ScenarioResult("sms-trigger", run)


# what proves the card has nothing to fetch after the push (TS 102 221 7.4.2.2, 14.7.2): the SMS-PP DOWNLOAD
# envelope, then a STATUS poll of the CP answered plain 90 00 (a pending OPEN CHANNEL would make it 91 xx)
SMS_PP_ENVELOPE = EventQuery(Kind.CAT_ENVELOPE, lambda f: f.get("envelope") == "sms_pp_download", src="cp")
STATUS_POLL = EventQuery(Kind.APDU_COMMAND, src="cp", data_prefix=b"\x80\xf2")
PLAIN_9000 = EventQuery(Kind.APDU_RESPONSE, lambda f: f.get("sw") == "9000", src="uicc")


def card_idle_after_the_push(events: list[dict[str, Any]]) -> bool:
    """Whether the CP's trace `events` hold a STATUS poll answered 90 00 after the SMS-PP DOWNLOAD envelope."""
    start = next((i for i, e in enumerate(events) if SMS_PP_ENVELOPE.matches_dict(e)), None)
    if start is None:
        return False
    polled = False
    for event in events[start + 1 :]:
        if STATUS_POLL.matches_dict(event):
            polled = True
        elif polled and event.get("kind") == Kind.APDU_RESPONSE and event.get("src") == "uicc":
            if PLAIN_9000.matches_dict(event):
                return True  # the poll's answer (other events of the CP may come between the two)
            polled = False
    return False


async def _stop_after_the_por(harness: Harness) -> None:
    """No session will come: once the PoR is traced and the card answered a poll after it with nothing pending,
    stop the CP (SIGTERM, a clean exit) so that the run ends."""
    await harness.wait_for_event("ap", EventQuery(Kind.SMS_POR), timeout=25)
    with trio.move_on_after(25):  # the CP polls every few hundred ms; only a broken run waits this long
        while not card_idle_after_the_push(harness.events_so_far("cp")):
            await trio.sleep(0.05)
    harness.processes["cp"].terminate()


def sms_trigger_bad_mac(options: ScenarioOptions) -> ScenarioResult:
    """SMS-PP push with a wrong cryptographic checksum: PoR status 01 (RC/CC/DS failed) and no BIP session."""
    config = _config("sms-trigger-bad-mac", options, trigger_tpdu(bad_mac=True), during=_stop_after_the_por)
    run = run_processes(config, options.directory)
    check(run.cp_code == 0, "the CP did not end cleanly", run)
    check(_por_status(run) == "01", f"PoR status {_por_status(run)} instead of 01", run)
    opened = proactive_commands(run, "OPEN CHANNEL")
    check(not opened, "the card opened a channel after a packet that failed its checks", run)
    check(
        not run.results or not any(card["scripts"] for card in run.results.values()), "no admin script", run
    )
    return ScenarioResult("sms-trigger-bad-mac", run)
