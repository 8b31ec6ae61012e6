"""A full OTA session in one process: the card's BIP engine and OTA agent (our PSK-TLS client), the CP's BIP service,
and the OTA server (sslpsk3 + ssl) over loopback: a file update and an applet install end with 204."""

from __future__ import annotations

from pathlib import Path

import trio

from bipsim.cp.bip_service import BipService
from bipsim.cp.card_driver import CardDriver
from bipsim.ota.admin import AdminServer
from bipsim.ota.campaign import Campaign
from bipsim.ota.server import OtaServer
from bipsim.trace.recorder import Tracer
from bipsim.uicc.bip_engine import BipConfig, BipEngine, EngineState, LinkMode
from bipsim.uicc.card import SimCard
from bipsim.uicc.gp_registry import SELECTABLE, GpRegistry
from bipsim.uicc.ota_agent import OtaAgent
from bipsim.uicc.profile import load_profile
from bipsim.uicc.sim_transport import SimulatedCard

from .test_bip_session import DirectBearer

APP = bytes.fromhex("A0000005590010FF01")


async def run_ota(
    tmp_path: Path, *, psk: bytes | None = None, tls: bool = True
) -> tuple[SimCard, GpRegistry, OtaAgent, AdminServer, BipEngine]:
    profile = load_profile()
    keys = {profile.psk_identity: profile.psk}
    admin = AdminServer(Campaign.load(), results_path=tmp_path / "results.json")
    server = OtaServer(admin, keys=keys if tls else None)
    tracer = Tracer(keep=True)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        registry = GpRegistry()
        card = SimCard(profile, state_path=tmp_path / "card.json")
        card.attach_state("gp", registry)
        agent = OtaAgent(
            card,
            registry,
            host="127.0.0.1",
            identity=profile.psk_identity.encode(),
            psk=psk or profile.psk,
            tls=tls,
        )
        engine = BipEngine(BipConfig(port=port, link_mode=LinkMode.BACKGROUND), agent)
        card.toolkit = engine
        service = BipService(CardDriver(SimulatedCard(card), tracer=tracer), DirectBearer(), tracer=tracer)
        with trio.fail_after(30):
            await nursery.start(service.run)
            while engine.busy or not service.session_finished.is_set():
                await service.session_finished.wait()
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    return card, registry, agent, admin, engine


async def test_file_update_and_applet_install(tmp_path: Path) -> None:
    card, registry, agent, admin, engine = await run_ota(tmp_path)
    assert agent.log.finished, agent.log.errors
    assert engine.state is EngineState.DONE
    spn = card.fs.usim.children[0x6F46].data
    assert bytes(spn[1:11]) == b"BIPSIM-OTA"
    assert registry.applications[APP].state == SELECTABLE
    results = admin.results()
    (card_result,) = results.values()
    assert card_result["completed"] and card_result["all_ok"], card_result
    # persisted: a fresh card loads the same state
    again = SimCard(load_profile(), state_path=tmp_path / "card.json")
    reloaded = GpRegistry()
    again.attach_state("gp", reloaded)
    assert APP in reloaded.applications and bytes(again.fs.usim.children[0x6F46].data[1:11]) == b"BIPSIM-OTA"


async def test_wrong_psk_leaves_the_card_untouched(tmp_path: Path) -> None:
    card, registry, agent, admin, engine = await run_ota(tmp_path, psk=bytes(16))
    assert not agent.log.finished and any("TLS" in e for e in agent.log.errors)
    assert not registry.applications and bytes(card.fs.usim.children[0x6F46].data[1:7]) == b"bipsim"
    assert not admin.cards or not any(p.log for p in admin.cards.values())


async def test_plain_http_session(tmp_path: Path) -> None:
    _, registry, agent, _, _ = await run_ota(tmp_path, tls=False)
    assert agent.log.finished and APP in registry.applications
