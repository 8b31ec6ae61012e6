"""The packet data plane's command-line options (docs/protocols.md, "The packet data plane"), shared by `bipsim cp`,
`bipsim ap` (--wlan), `bipsim demo` and `bipsim scenario run`: the radio bearer's link model, the AP's Wi-Fi link
model, the packet gateway's mode and the seed of the links' loss and jitter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

LINK_GRAMMAR = (
    "PROFILE[,delay=MS][,jitter=MS][,loss=P][,rate=KBIT][,queue=BYTES]; profiles ideal (no impairment), gprs, "
    "edge, umts, lte (figures from public measurements, docs/protocols.md); loss a probability (0.05) or a "
    "percentage (5%)"
)


def check_link_spec(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A click callback: `value` must parse as a link model (net/radio.py), else a usage error naming the option."""
    if value is None:
        return None
    from bipsim.net.radio import parse_link_spec

    try:
        parse_link_spec(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return value


def radio_option(function: F) -> F:
    return click.option(
        "--radio",
        metavar="SPEC",
        default="ideal",
        show_default=True,
        callback=check_link_spec,
        help="The radio bearer of embodiment 1 (the CP's own stack to the packet gateway): "
        + LINK_GRAMMAR
        + ".",
    )(function)


def wlan_option(function: F) -> F:
    return click.option(
        "--wlan",
        metavar="SPEC",
        default=None,
        callback=check_link_spec,
        help="The AP's Wi-Fi link of embodiment 2 (the proxy's relay to the server), same grammar as --radio: "
        + LINK_GRAMMAR
        + ". Default: no link model (the relay as fast as the host).",
    )(function)


def network_option(function: F) -> F:
    return click.option(
        "--network",
        "network_mode",
        type=click.Choice(["nat", "tun", "host"]),
        default="nat",
        show_default=True,
        help="The packet gateway behind the radio bearer: nat terminates each of the CP's TCP/UDP flows and opens "
        "a host socket for it (no privileges); tun writes the CP's packets into a TUN interface in a network "
        "namespace the command makes (unshare -n: root or a user namespace), where the kernel's TCP answers; host "
        "has no packet plane at all: the CP connects from host sockets as it did before it had its own stack "
        "(for comparisons such as bench/bench_e1_stack.py; no --radio, no packets in the trace).",
    )(function)


def seed_option(function: F) -> F:
    return click.option(
        "--seed",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="Seed of the link models' loss and jitter (and the stack's initial sequence numbers): the same seed "
        "and the same traffic give the same run.",
    )(function)


def packet_plane_options(function: F) -> F:
    """--radio, --network and --seed."""
    return radio_option(network_option(seed_option(function)))


def cp_packet_args(radio: str, network_mode: str, seed: int) -> list[str]:
    """The `bipsim cp` arguments that carry these options to a CP the command starts (only what differs from the
    defaults, so a default run's command line is as it was)."""
    args: list[str] = []
    if radio != "ideal":
        args += ["--radio", radio]
    if network_mode != "nat":
        args += ["--network", network_mode]
    if seed:
        args += ["--seed", str(seed)]
    return args


def tun_relay_option(function: F) -> F:
    return click.option(
        "--tun-relay",
        "tun_relays",
        multiple=True,
        metavar="PORT[:HOST:HOSTPORT]",
        callback=check_tun_relays,
        help="With --network tun: the namespace's kernel listens at 203.0.113.10:PORT (the address a card's OPEN "
        "CHANNEL names in tun mode) and each connection it accepts is carried to HOST:HOSTPORT on the host "
        "(127.0.0.1:PORT by default), e.g. an OTA server there. Repeatable.",
    )(function)


def parse_tun_relay(text: str) -> tuple[int, str, int]:
    """`PORT[:HOST:HOSTPORT]` -> (port, host, host port); ValueError with a message for the command line."""
    parts = text.split(":")
    if len(parts) not in (1, 3) or not all(part.isdigit() for part in parts[:: 2 if len(parts) == 3 else 1]):
        raise ValueError(f"{text!r}: use PORT or PORT:HOST:HOSTPORT")
    port = int(parts[0])
    host, host_port = (parts[1], int(parts[2])) if len(parts) == 3 else ("127.0.0.1", port)
    if not (0 < port < 65536 and 0 < host_port < 65536) or not host:
        raise ValueError(f"{text!r}: ports are 1..65535")
    return port, host, host_port


def check_tun_relays(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[tuple[int, str, int], ...]:
    try:
        return tuple(parse_tun_relay(text) for text in value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
