"""The patent's two embodiments (CN101594614A figures 4 and 7), each a full OTA session in immediate-background
link mode: `embodiment1` (the CP's own stack after AT%GETNET) and `embodiment2` (the AP proxy over Wi-Fi)."""

from __future__ import annotations

from typing import Any

from bipsim.scenarios.base import (
    ScenarioOptions,
    ScenarioResult,
    card_state_known,
    check_ota_completed,
    check_steps,
)
from bipsim.scenarios.harness import RunConfig, run_processes
from bipsim.uicc.profile import load_profile


def embodiment_config(number: int, **settings: Any) -> RunConfig:
    """The run of embodiment `number` (1: the CP's own stack, 2: the AP proxy), its session labelled e1/e2;
    `settings` are further RunConfig fields (ports, campaign, timeout...)."""
    return RunConfig(session=f"e{number}", bearer="own-stack" if number == 1 else "ap-proxy", **settings)


def run_embodiment(number: int, options: ScenarioOptions) -> ScenarioResult:
    config = embodiment_config(
        number,
        port_a=options.port_a,
        port_b=options.port_b,
        **card_settings(options.card, options.ota_listen),
        **options.plane(),
    )
    run = run_processes(config, options.directory)
    check_ota_completed(run)
    check_steps(run, number)
    notes = (
        [] if card_state_known(run) else [f"card {options.card}: checked by its status words, not its state"]
    )
    return ScenarioResult(f"embodiment{number}", run, notes)


def card_settings(card: str, ota_listen: str | None = None) -> dict[str, Any]:
    """The RunConfig fields for the CP's `--card`: a card behind PC/SC reaches the OTA server where its own
    profile says, which for a card `bipsim card serve` exports with the built-in profile is that profile's
    ota_host:ota_port (docs/hil.md); the server listens there, or at `ota_listen` (HOST:PORT) for a card whose
    profile names another address."""
    if card == "sim":
        return {}
    if ota_listen is None:
        profile = load_profile()
        ota_listen = f"{profile.ota_host}:{profile.ota_port}"
    return {"card": card, "ota_listen": ota_listen}


def embodiment1(options: ScenarioOptions) -> ScenarioResult:
    """Embodiment 1: AT%GETNET -> %NETPAR, the CP's own TCP/IP stack connects (steps S401..S415)."""
    return run_embodiment(1, options)


def embodiment2(options: ScenarioOptions) -> ScenarioResult:
    """Embodiment 2: AT%WEBOPCH, the AP proxy on Wi-Fi relays over CMUX DLC 3 (steps S701..S718)."""
    return run_embodiment(2, options)
