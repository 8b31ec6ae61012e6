"""Packet data context addresses (3GPP TS 27.007 section 10.1.10 +CGACT, 10.1.1 +CGDCONT): an address goes back to
the network's pool on deactivation, on detach and when its context is undefined, so a modem runs any number of
sessions; a pool in use answers SM cause #26 (insufficient resources, TS 24.008 10.5.6.6), +CME ERROR: 148."""

from __future__ import annotations

import socket

import pytest
import trio

from bipsim.cp.bearer import LinkError
from bipsim.cp.network import CellularNetwork, NetworkConfig, PdpError, SmCause
from tests.test_cp_commands import Cp, _start


async def _cp(nursery: trio.Nursery, network: CellularNetwork | None = None) -> Cp:
    cp = await _start(nursery)
    if network is not None:
        cp.commands.network = network
        cp.network = network
    await cp.dte.at("ATE0")
    await cp.dte.at("AT+CMEE=1")
    return cp


async def test_a_thousand_activations_and_deactivations_then_activation_still_works(
    nursery: trio.Nursery,
) -> None:
    cp = await _cp(nursery)
    dte = cp.dte
    assert await dte.at('AT+CGDCONT=1,"IP","internet"') == "\r\nOK\r\n"
    for _ in range(1000):
        assert await dte.at("AT+CGACT=1,1") == "\r\nOK\r\n"
        assert await dte.at("AT+CGACT=0,1") == "\r\nOK\r\n"
    assert await dte.at("AT+CGACT=1,1") == "\r\nOK\r\n"
    assert cp.network.contexts[1].address == "198.51.100.2"  # the lowest address, handed back every time


async def test_activating_an_active_context_again_takes_no_second_address(nursery: trio.Nursery) -> None:
    cp = await _cp(nursery)
    await cp.dte.at('AT+CGDCONT=1,"IP","internet"')
    free = cp.network.free_addresses
    for _ in range(300):
        assert await cp.dte.at("AT+CGACT=1,1") == "\r\nOK\r\n"
    assert cp.network.free_addresses == free - 1


async def test_contexts_up_to_the_pool_then_insufficient_resources(nursery: trio.Nursery) -> None:
    cp = await _cp(nursery, CellularNetwork(NetworkConfig(pool="198.51.100.0/29")))  # hosts .2 .. .6: five
    dte = cp.dte
    for cid in range(1, 7):
        assert await dte.at(f'AT+CGDCONT={cid},"IP","internet"') == "\r\nOK\r\n"
    for cid in range(1, 6):
        assert await dte.at(f"AT+CGACT=1,{cid}") == "\r\nOK\r\n"
    assert sorted(c.address for c in cp.network.contexts.values()) == [f"198.51.100.{n}" for n in range(2, 7)]
    assert await dte.at("AT+CGACT=1,6") == "\r\n+CME ERROR: 148\r\n"  # #26 insufficient resources
    assert await dte.at("AT+CGACT=0,3") == "\r\nOK\r\n"
    assert await dte.at("AT+CGACT=1,6") == "\r\nOK\r\n"
    assert cp.network.contexts[6].address == "198.51.100.4"
    assert await dte.at("AT+CGDCONT=6") == "\r\nOK\r\n"  # undefining an active context frees its address
    assert 6 not in cp.network.contexts and cp.network.free_addresses == 1
    assert await dte.at("AT+CFUN=4") == "\r\nOK\r\n"  # detach frees them all
    assert cp.network.free_addresses == 5


def test_every_context_identifier_in_use_is_insufficient_resources_not_a_crash() -> None:
    network = CellularNetwork()
    for _ in range(16):
        network.activate("internet")
    with pytest.raises(PdpError) as refused:
        network.activate("internet")
    assert refused.value.cause is SmCause.INSUFFICIENT_RESOURCES
    network.deactivate(5)
    assert network.activate("internet").cid == 5


async def test_the_own_stack_runs_more_sessions_than_the_pool_has_addresses() -> None:
    """Embodiment 1: every channel activates a context and its close (or a failed connect) frees the address, so a
    pool of five addresses carries twenty sessions, and refused connections leak none."""
    from functools import partial

    from bipsim.ap.network import ApNetwork
    from tests.test_gateway import ProxyRig, request

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, host="127.0.0.1"), lambda stream: stream.aclose(), 0
        )
        port = listeners[0].socket.getsockname()[1]
        # a bound socket that never listens holds its port for the whole test: every connect to it is refused
        refuser = socket.socket()
        refuser.bind(("127.0.0.1", 0))
        closed = refuser.getsockname()[1]
        rig = ProxyRig(ApNetwork())
        rig.cellular = CellularNetwork(NetworkConfig(pool="198.51.100.0/29"))
        await rig.start(nursery)
        bearer = rig.own_stack()
        for _ in range(20):
            stream = await bearer.connect(1, request(bearer=2, port=port))
            await bearer.disconnect(1, stream)
            with pytest.raises(LinkError):
                await bearer.connect(2, request(bearer=2, port=closed))
        assert not rig.cellular.contexts and rig.cellular.free_addresses == 5
        refuser.close()
        nursery.cancel_scope.cancel()


async def test_deactivation_is_told_to_listeners_with_its_reason(nursery: trio.Nursery) -> None:
    """AT+CGACT=0, a detach and the network's own deactivation each tell the listeners once (the CP's stack for the
    context aborts its flows on it); an inactive context tells nobody."""
    cp = await _cp(nursery)
    told: list[tuple[int, str, str]] = []
    cp.network.deactivation_listeners.append(lambda ctx, why: told.append((ctx.cid, ctx.address, why)))
    await cp.dte.at('AT+CGDCONT=1,"IP","internet"')
    await cp.dte.at('AT+CGDCONT=2,"IP","internet"')
    assert await cp.dte.at("AT+CGACT=1,1") == "\r\nOK\r\n"
    assert cp.network.contexts[1].dns == ("198.51.100.1",)
    assert cp.network.gateway == "198.51.100.1"
    assert await cp.dte.at("AT+CGACT=0,1") == "\r\nOK\r\n"
    assert await cp.dte.at("AT+CGACT=0,1") == "\r\nOK\r\n"  # already inactive: nobody is told again
    assert told == [(1, "198.51.100.2", "deactivated")]
    assert await cp.dte.at("AT+CGACT=1,1,2") == "\r\nOK\r\n"
    assert cp.network.network_deactivate(2, "network says so")
    assert not cp.network.network_deactivate(2)
    assert await cp.dte.at("AT+CFUN=4") == "\r\nOK\r\n"
    assert told[1:] == [(2, "198.51.100.3", "network says so"), (1, "198.51.100.2", "detached")]
