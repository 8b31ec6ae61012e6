"""In-process cards for the OTA server's load and fault checks: each card is a SimCard with its GP registry and
OTA agent (uicc/ota_agent.py: our sans-IO TLS 1.2 PSK client and the GlobalPlatform Amd B POST loop), driven
straight over a trio TCP stream instead of a BIP channel. The agent sees the same BipClient calls a BIP engine
makes (connection_made, data_received, connection_lost), so reconnect-and-resume works the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from bipsim.uicc.card import SimCard
from bipsim.uicc.gp_registry import GpRegistry
from bipsim.uicc.ota_agent import OtaAgent
from bipsim.uicc.profile import CardProfile, load_profile


@dataclass
class LoadCard:
    card: SimCard
    registry: GpRegistry
    agent: OtaAgent
    connections: int = 0


def make_card(
    iccid: str | None = None,
    *,
    identity: str | None = None,
    psk: bytes | None = None,
    tls: bool = True,
    state_path: str | Path | None = None,
    profile: CardProfile | None = None,
    random: Callable[[int], bytes] | None = None,
) -> LoadCard:
    """A card of the built-in profile (or `profile`), with its own ICCID / PSK when given; `random` is the source
    of its TLS randoms (uicc/ota_agent.py card_random: os.urandom unless seeded)."""
    base = profile or load_profile()
    changes: dict[str, object] = {}
    if iccid is not None:
        changes["iccid"] = iccid
    if identity is not None:
        changes["psk_identity"] = identity
    if psk is not None:
        changes["psk_hex"] = psk.hex()
    chosen = base.with_overrides(**changes) if changes else base
    card = SimCard(chosen, state_path=state_path)
    registry = GpRegistry()
    card.attach_state("gp", registry)
    agent = OtaAgent.of_profile(card, registry, tls=tls)
    if random is not None:
        agent.random = random
    return LoadCard(card, registry, agent)


def new_session(load: LoadCard, *, random: Callable[[int], bytes] | None = None) -> OtaAgent:
    """A fresh agent for the card's next admin session (the next trigger): its log and reconnection count start
    anew, the card and its GP registry (its persistent state) stay the same."""
    old = load.agent
    agent = OtaAgent.of_profile(load.card, load.registry, tls=old.tls_enabled, host=old.host)
    agent.random = random if random is not None else old.random
    load.agent = agent
    return agent


async def run_card(load: LoadCard, host: str, port: int, *, receive_size: int = 4096) -> OtaAgent:
    """Runs one admin session (with its reconnections) to completion or failure; never raises for peer faults."""
    agent = load.agent
    while True:
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            agent.connection_lost(f"connect: {exc}")
            if agent.wants_reconnect:
                continue
            return agent
        load.connections += 1
        try:
            async with stream:
                await stream.send_all(agent.connection_made())
                while not agent.done:
                    data = await stream.receive_some(receive_size)
                    if not data:
                        agent.connection_lost("closed by the server")
                        break
                    out = agent.data_received(bytes(data))
                    if out:
                        await stream.send_all(out)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            agent.connection_lost(f"connection error: {exc}")
        if not agent.wants_reconnect:
            return agent
