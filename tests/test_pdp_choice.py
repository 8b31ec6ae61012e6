"""The packet data parameters of a card's BIP channel without an AP (issue 16 item 9, cp/pdp_choice.py): the card's
OPEN CHANNEL (ETSI TS 102 223 6.4.27, 8.61), else the host's +CGDCONT/+CGAUTH context (3GPP TS 27.007 10.1.1,
10.1.31), else the network's default; the choice is a pdp.choice trace event."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from bipsim.cp.bearer import LinkError
from bipsim.cp.bearer_own_stack import OwnStackBearer
from bipsim.cp.network import CellularNetwork, NetworkConfig
from bipsim.cp.pdp_choice import PdpChoice, PdpSource, choose_pdp, trace_choice
from bipsim.cp.proxy_link import ProxyLink
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import Tracer
from bipsim.uicc.cat import OpenChannel

NETWORK = NetworkConfig().apns  # "internet" first: the network's default


def test_the_card_apn_comes_first() -> None:
    choice = choose_pdp(
        card_apn="ota.bipsim",
        card_user="ota",
        card_password="secret",
        definitions={1: ("IP", "internet")},
        authentications={},
        network_apns=NETWORK,
    )
    assert choice == PdpChoice("ota.bipsim", "ota", "secret", PdpSource.CARD)


def test_the_host_context_without_a_card_apn() -> None:
    """The lowest <cid> with an IPv4-capable APN, with its +CGAUTH user and password."""
    choice = choose_pdp(
        card_apn=None,
        definitions={3: ("IP", "internet"), 2: ("IP", "ota.bipsim"), 1: ("IPV6", "v6only")},
        authentications={2: (1, "ota", "secret")},
        network_apns=NETWORK,
    )
    assert choice == PdpChoice("ota.bipsim", "ota", "secret", PdpSource.HOST, cid=2)


def test_auth_protocol_none_carries_no_credentials() -> None:
    choice = choose_pdp(
        card_apn="",
        definitions={1: ("IP", "internet")},
        authentications={1: (0, "u", "p")},
        network_apns=NETWORK,
    )
    assert choice is not None and (choice.user, choice.password, choice.cid) == ("", "", 1)


def test_the_network_default_last() -> None:
    choice = choose_pdp(card_apn=None, definitions={1: ("IP", "")}, authentications={}, network_apns=NETWORK)
    assert choice == PdpChoice("internet", "", "", PdpSource.NETWORK)
    assert choose_pdp(card_apn=None, definitions={}, authentications={}, network_apns={}) is None


def test_the_choice_is_traced_without_the_password() -> None:
    tracer = Tracer(keep=True)
    trace_choice(tracer, PdpChoice("ota.bipsim", "ota", "secret", PdpSource.HOST, cid=2), channel=1)
    trace_choice(tracer, None)
    first, second = tracer.events
    assert first.kind == Kind.PDP_CHOICE
    assert first.fields == {"source": "host", "apn": "ota.bipsim", "user": "ota", "cid": 2, "channel": 1}
    assert "secret" not in first.to_json()
    assert second.error and second.fields == {"source": None, "channel": None}


async def test_own_stack_without_an_ap_takes_the_hosts_context(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No proxy ever attaches on DLC 2 (a standard host): after the bearer's wait, the context the host defined
    with +CGDCONT/+CGAUTH is activated, and the choice is traced."""
    tracer = Tracer(keep=True)
    network = CellularNetwork()
    bearer = OwnStackBearer(ProxyLink(), network, tracer=tracer, timeout=5)
    bearer.host_contexts = lambda: ({1: ("IP", "ota.bipsim")}, {1: (1, "ota", "secret")})
    context = await bearer._activate(1, OpenChannel(bearer_type=3))
    assert (context.apn, context.user) == ("ota.bipsim", "ota")
    (choice,) = [e for e in tracer.events if e.kind == Kind.PDP_CHOICE]
    assert choice.fields["source"] == "host" and choice.fields["cid"] == 1


async def test_own_stack_without_host_contexts_still_fails(autojump_clock: trio.testing.MockClock) -> None:
    """With our AP's embodiment (no host contexts given) a missing %GETNET answer stays "no network service"."""
    bearer = OwnStackBearer(ProxyLink(), CellularNetwork(), timeout=5)
    with pytest.raises(LinkError):
        await bearer._activate(1, OpenChannel(bearer_type=3))
