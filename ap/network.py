"""The AP's network model: Wi-Fi (on/off, SSID), cellular data through the CP, and the destinations the proxy may
reach (an allowlist of host/CIDR and port ranges; anything else is refused with +CME ERROR: 3)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from bipsim.errors import CliError


@dataclass(frozen=True)
class AllowRule:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None  # None: a host name
    host: str
    low: int
    high: int

    @classmethod
    def parse(cls, text: str) -> AllowRule:
        """HOST[:PORT[-PORT]] where HOST is a name, an address or a CIDR; no port means any."""
        host, sep, ports = text.rpartition(":")
        if not sep or not re.fullmatch(r"\d+(-\d+)?", ports):
            host, ports = text, ""
        host = host.strip("[]")
        low, _, high = ports.partition("-")
        lo, hi = (int(low), int(high or low)) if ports else (1, 65535)
        if not 0 < lo <= hi <= 65535:
            raise CliError(f"--allow {text}: bad port range")
        try:
            network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = ipaddress.ip_network(
                host, strict=False
            )
        except ValueError:
            network = None
        return cls(network, host.lower(), lo, hi)

    def allows(self, host: str, port: int) -> bool:
        if not self.low <= port <= self.high:
            return False
        if self.network is None:
            return host.lower() == self.host
        try:
            return ipaddress.ip_address(host) in self.network
        except ValueError:
            return False


@dataclass
class ApNetwork:
    wifi: bool = True
    ssid: str = "bipsim-lab"
    cellular: bool = True
    allow: list[AllowRule] = field(default_factory=lambda: [AllowRule.parse("127.0.0.0/8")])

    def allowed(self, host: str, port: int) -> bool:
        return any(rule.allows(host, port) for rule in self.allow)
