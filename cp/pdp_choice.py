"""Which packet data parameters a BIP channel of the card uses when no AP answers for it (issue 16, item 9).

ETSI TS 102 223 section 6.4.27 lets OPEN CHANNEL name the bearer's network access name (8.61), user login and
password (8.5 text strings); a modem driven by a standard host (oFono, ModemManager) has no `%GETNET` answer on DLC
2, so the CP chooses the parameters itself, in this order:

1. the card's own: OPEN CHANNEL's network access name, with its user and password;
2. the host's: the lowest <cid> the host defined with +CGDCONT (3GPP TS 27.007 10.1.1) with a non-empty APN, and
   the user and password +CGAUTH (10.1.31) gave it;
3. the network's default: the first APN the network model lists, with its credentials.

`choose_pdp` is pure; `trace_choice` writes the choice as a `pdp.choice` trace event (docs/protocols.md,
"Packet data contexts").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer

# what the CP reads of a standard host's contexts: +CGDCONT's and +CGAUTH's tables (cp/commands.py ModemCommands)
HostContexts = Callable[[], tuple[Mapping[int, tuple[str, str]], Mapping[int, tuple[int, str, str]]]]


class PdpSource(StrEnum):
    CARD = "card"  # OPEN CHANNEL's network access name
    HOST = "host"  # the host's +CGDCONT / +CGAUTH
    NETWORK = "network"  # the network's default APN


@dataclass(frozen=True)
class PdpChoice:
    apn: str
    user: str
    password: str
    source: PdpSource
    cid: int | None = None  # the host's context it came from (source HOST)


def choose_pdp(
    *,
    card_apn: str | None,
    card_user: str = "",
    card_password: str = "",
    definitions: Mapping[int, tuple[str, str]],
    authentications: Mapping[int, tuple[int, str, str]],
    network_apns: Mapping[str, tuple[str, str]],
) -> PdpChoice | None:
    """The parameters of the module docstring's order; None when nobody names an APN (a network without APNs).

    `definitions` is +CGDCONT's <cid> -> (<PDP_type>, <APN>), `authentications` +CGAUTH's <cid> ->
    (<auth_prot>, <userid>, <password>), `network_apns` the network's APN -> (user, password), default first."""
    if card_apn:
        return PdpChoice(card_apn, card_user, card_password, PdpSource.CARD)
    for cid in sorted(definitions):
        pdp_type, apn = definitions[cid]
        if not apn or pdp_type.upper() not in ("IP", "IPV4V6"):
            continue  # an IPv6-only context cannot carry the CP's IPv4 stack
        prot, user, password = authentications.get(cid, (0, "", ""))
        if prot == 0:
            user = password = ""
        return PdpChoice(apn, user, password, PdpSource.HOST, cid)
    for apn, (user, password) in network_apns.items():
        return PdpChoice(apn, user, password, PdpSource.NETWORK)
    return None


def trace_choice(tracer: Tracer, choice: PdpChoice | None, channel: int | None = None) -> None:
    """The choice as a `pdp.choice` event (the password is never traced)."""
    if choice is None:
        tracer.emit(
            Actor.CP,
            Actor.NET,
            Layer.APP,
            "no APN for the card's channel: neither the card, the host nor the network names one",
            error=True,
            kind=Kind.PDP_CHOICE,
            fields={"source": None, "channel": channel},
        )
        return
    fields: dict[str, object] = {"source": str(choice.source), "apn": choice.apn, "user": choice.user}
    if choice.cid is not None:
        fields["cid"] = choice.cid
    if channel is not None:
        fields["channel"] = channel
    tracer.emit(
        Actor.CP,
        Actor.NET,
        Layer.APP,
        f"APN {choice.apn!r} for the card's channel, from the {choice.source}",
        kind=Kind.PDP_CHOICE,
        fields=fields,
    )
