"""The CP's simulated cellular network: registration, operator, signal, and packet data contexts.

A context activates only for an APN the network knows, with that APN's user and password; refusals carry the
3GPP TS 24.008 session management cause (section 10.5.6.6): #27 missing or unknown APN, #29 user authentication
failed, #26 insufficient resources when every address of the pool is in use (or every context identifier).

Addresses come from a pool (`NetworkConfig.pool`, TEST-NET-2 of RFC 5737: 198.51.100.2 .. 198.51.100.254 by
default, 198.51.100.1 being the packet gateway and the DNS server, docs/protocols.md "The packet data plane"): an
activation takes the lowest free one and a deactivation, a detach or an undefined context gives it back, so a modem
can activate and deactivate contexts for ever. Activating a context that is already active changes nothing (3GPP TS
27.007 section 10.1.10: a context already in the requested state is left as it is).

A deactivation, whoever asks for it (AT+CGACT=0, AT+CGDCONT=<cid>, a detach, or the network itself through
`network_deactivate`), is told to every `deactivation_listeners` callable with the context and the reason, so that
what was carried on the context (the CP's IP stack for it, its flows in the packet gateway) ends with it.

Mobile-terminated SMS: `sms_pp_download` classifies an SMS-DELIVER the network sends (3GPP TS 23.040 section
9.2.2.1) and, for a (U)SIM data download (PID 0x7F, DCS message class 2: TS 23.038 section 4; TS 31.111 section
7.1.1), gives the address of the service centre it came through, which the ME puts into the ENVELOPE (SMS-PP
DOWNLOAD) for the card.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from bipsim.net.smsc import Smsc
from bipsim.net.ussd import UssdService

MAX_CID = 16  # context identifiers 1..16 (the +CGDCONT range the CP offers)


class SmCause(IntEnum):
    INSUFFICIENT_RESOURCES = 26
    MISSING_OR_UNKNOWN_APN = 27
    USER_AUTHENTICATION_FAILED = 29
    ACTIVATION_REJECTED_BY_GGSN = 30
    ACTIVATION_REJECTED_UNSPECIFIED = 31


class RegStatus(IntEnum):
    """<stat> of +CREG/+CGREG/+CEREG (3GPP TS 27.007 section 7.2)."""

    NOT_REGISTERED = 0
    HOME = 1
    SEARCHING = 2
    DENIED = 3
    UNKNOWN = 4
    ROAMING = 5


PID_DATA_DOWNLOAD = 0x7F  # TS 23.040 9.2.3.9: (U)SIM data download


class SmsError(ValueError):
    """An SMS TPDU that is not a well-formed SMS-DELIVER for (U)SIM data download."""


def _dcs_class(dcs: int) -> int | None:
    if dcs & 0xC0 == 0x00 and dcs & 0x10:  # general data coding with a message class (TS 23.038 section 4)
        return dcs & 0x03
    if dcs & 0xF0 == 0xF0:  # data coding / message class group
        return dcs & 0x03
    return None


def check_data_download(tpdu: bytes) -> None:
    """Raises SmsError unless `tpdu` is an SMS-DELIVER with PID 0x7F and message class 2, which the ME hands to the
    card as an SMS-PP DOWNLOAD (TS 31.111 7.1.1) instead of storing it."""
    if len(tpdu) < 2 or tpdu[0] & 0x03 != 0x00:
        raise SmsError("not an SMS-DELIVER (TP-MTI)")
    offset = 2 + (tpdu[1] + 1) // 2 + 1  # TP-OA: digit count, type of address, BCD digits
    if len(tpdu) < offset + 2 + 7 + 1:
        raise SmsError("SMS-DELIVER too short")
    pid, dcs = tpdu[offset], tpdu[offset + 1]
    if pid != PID_DATA_DOWNLOAD:
        raise SmsError(f"TP-PID {pid:02X} is not (U)SIM data download (7F)")
    if _dcs_class(dcs) != 2:
        raise SmsError(f"TP-DCS {dcs:02X} is not message class 2")


def address_value(number: str) -> bytes:
    """An ADDRESS object's value (TS 102 223 8.1): TON/NPI 0x91 (international, E.164), then BCD digits."""
    digits = number.lstrip("+") + ("F" if len(number.lstrip("+")) % 2 else "")
    return b"\x91" + bytes(int(digits[i + 1] + digits[i], 16) for i in range(0, len(digits), 2))


class PdpError(Exception):
    def __init__(self, cause: SmCause, reason: str) -> None:
        super().__init__(f"SM cause #{cause.value}: {reason}")
        self.cause = cause


@dataclass
class PdpContext:
    cid: int
    apn: str
    address: str
    user: str = ""
    # the DNS servers the network gives the context (TS 24.008 protocol configuration options; TS 102 223 8.90)
    dns: tuple[str, ...] = ()
    # set when it ends: the network ended it (network_deactivate, a network detach), not the ME (27.007 10.1.19's
    # NW versus ME events)
    ended_by_network: bool = False


DeactivationListener = Callable[[PdpContext, str], None]
# told of a packet domain attach (True) or detach (False) and whether the network did it (27.007 10.1.9, 10.1.19)
AttachListener = Callable[[bool, bool], None]


@dataclass
class NetworkConfig:
    mcc: str = "001"
    mnc: str = "01"
    operator: str = "bipsim test network"
    rat: int = 7  # E-UTRAN (27.007 <AcT>)
    rssi: int = 20
    smsc: str = "441234567890"  # the service centre's number (international), for SMS-PP DOWNLOAD envelopes
    # the packet gateway's address pool: the usable hosts of this network, .1 being the gateway itself (RFC 5737
    # TEST-NET-2: documentation addresses that no real network routes)
    pool: str = "198.51.100.0/24"
    pool_first: int = 2  # host number of the first address handed out
    # the DNS servers a context is given: the gateway itself answers DNS
    dns: tuple[str, ...] = ("198.51.100.1",)
    # APN -> (user, password) the packet gateway accepts
    apns: dict[str, tuple[str, str]] = field(
        default_factory=lambda: {"internet": ("", ""), "ota.bipsim": ("ota", "secret")}
    )


class CellularNetwork:
    def __init__(self, config: NetworkConfig | None = None) -> None:
        self.config = config or NetworkConfig()
        # the network's SMS centre (net/smsc.py), at the service centre number the ME and the card are given
        self.smsc = Smsc("+" + self.config.smsc.lstrip("+"))
        self.status = RegStatus.HOME
        self.contexts: dict[int, PdpContext] = {}
        self.listeners: list[Callable[[RegStatus], None]] = []
        self.deactivation_listeners: list[DeactivationListener] = []
        self.attach_listeners: list[AttachListener] = []
        # NITZ (TS 24.008 9.2.15a): the network's local time zone in quarter hours from UTC and its daylight saving
        # adjustment in hours; `set_time_zone` tells `time_listeners` (+CTZV/+CTZE of 27.007 8.41-8.42)
        self.time_zone = 0
        self.dst = 0
        self.time_listeners: list[Callable[[int, int], None]] = []
        # the network's USSD service (net/ussd.py; 27.007 7.15)
        self.ussd = UssdService()
        # voice calls without audio (cp/voice_calls.py): told of a mobile-terminated call the network offers
        self.incoming_call_listeners: list[Callable[[str], None]] = []
        self.ps_attach = True  # the ME wants the packet domain (AT+CGATT); attached while registered too
        network = ipaddress.IPv4Network(self.config.pool)
        self._pool = [str(host) for host in network.hosts()][self.config.pool_first - 1 :]
        self._free = list(self._pool)  # lowest first

    @property
    def registered(self) -> bool:
        return self.status in (RegStatus.HOME, RegStatus.ROAMING)

    def set_status(self, status: RegStatus) -> None:
        if status != self.status:
            self.status = status
            if not self.registered:
                for cid in list(self.contexts):  # detached (+CFUN=0/4, +COPS=2): no PDP context survives
                    self.deactivate(cid, "detached")
            for listener in self.listeners:
                listener(status)

    def activate(
        self,
        apn: str,
        user: str = "",
        password: str = "",
        cid: int | None = None,
        *,
        chap: tuple[int, bytes, bytes] | None = None,
    ) -> PdpContext:
        """Activates a packet data context, or raises PdpError with the network's cause. `chap` is a host's CHAP-MD5
        (identifier, challenge, response) in place of the password: the network checks it against the APN's
        secret (RFC 1994 4.1, carried in the PCO of TS 24.008 10.5.6.3)."""
        if not self.registered:
            raise PdpError(SmCause.ACTIVATION_REJECTED_UNSPECIFIED, "not registered")
        self.attach()  # an activation attaches first (27.007 10.1.10)
        credentials = self.config.apns.get(apn.lower())
        if credentials is None:
            raise PdpError(SmCause.MISSING_OR_UNKNOWN_APN, f"unknown APN {apn!r}")
        if chap is not None:
            ident, challenge, response = chap
            expected = hashlib.md5(bytes((ident,)) + credentials[1].encode() + challenge).digest()
            matches = user == credentials[0] and hmac.compare_digest(expected, response)
        else:
            matches = (user, password) == credentials
        if not matches:
            raise PdpError(SmCause.USER_AUTHENTICATION_FAILED, f"wrong user or password for APN {apn!r}")
        if cid is not None and cid in self.contexts:
            active = self.contexts[cid]
            if (active.apn, active.user) == (apn, user):
                return active  # already active: nothing changes, no second address
            self.deactivate(cid, "redefined")  # the same cid for another APN: the old context goes first
        number = (
            cid
            if cid is not None
            else next((n for n in range(1, MAX_CID + 1) if n not in self.contexts), None)
        )
        if number is None:
            raise PdpError(SmCause.INSUFFICIENT_RESOURCES, "every context identifier is in use")
        if not self._free:
            raise PdpError(SmCause.INSUFFICIENT_RESOURCES, "no address left in the pool")
        context = PdpContext(number, apn, self._free.pop(0), user, tuple(self.config.dns))
        self.contexts[number] = context
        return context

    def set_time_zone(self, quarters: int, dst: int = 0) -> None:
        """The network sends a new time zone (NITZ, e.g. after a move): -48..+56 quarter hours, DST 0-2 hours."""
        if not -48 <= quarters <= 56 or not 0 <= dst <= 2:
            raise ValueError(f"time zone {quarters} quarter hours, DST {dst}: out of range")
        if (quarters, dst) != (self.time_zone, self.dst):
            self.time_zone, self.dst = quarters, dst
            for listener in list(self.time_listeners):
                listener(quarters, dst)

    def incoming_call(self, number: str) -> None:
        """The network offers a mobile-terminated voice call from `number` (a test, `bipsim call`)."""
        if not self.registered:
            raise ValueError("not registered: the network has no way to reach the ME")
        for listener in list(self.incoming_call_listeners):
            listener(number)

    @property
    def attached(self) -> bool:
        """Attached to the packet domain (27.007 10.1.9 <state>): registered, and not detached by +CGATT=0 or the
        network."""
        return self.ps_attach and self.registered

    def attach(self) -> None:
        """A packet domain attach (+CGATT=1, or implied by a context activation: 27.007 10.1.10)."""
        if not self.ps_attach:
            self.ps_attach = True
            for listener in list(self.attach_listeners):
                listener(True, False)

    def detach(self, *, by_network: bool = False) -> None:
        """A packet domain detach by the ME (+CGATT=0) or, with `by_network`, by the network (TS 24.301 5.5.2.3,
        for a scenario or a test): every context goes with it."""
        if not self.ps_attach:
            return
        self.ps_attach = False
        for cid in list(self.contexts):
            self.deactivate(
                cid, "detached by the network" if by_network else "detached", by_network=by_network
            )
        for listener in list(self.attach_listeners):
            listener(False, by_network)

    def deactivate(self, cid: int, reason: str = "deactivated", *, by_network: bool = False) -> None:
        """Deactivates context `cid` (nothing when it is not active), returns its address to the pool and tells
        every deactivation listener (each is called once; one that raises does not keep the others from it)."""
        context = self.contexts.pop(cid, None)
        if context is None:
            return
        context.ended_by_network = by_network
        if context.address in self._pool:
            self._free.append(context.address)
            self._free.sort(key=lambda address: ipaddress.IPv4Address(address))
        failures: list[Exception] = []
        for listener in list(self.deactivation_listeners):
            try:
                listener(context, reason)
            except Exception as exc:  # the context is gone all the same; the caller hears of the failure
                failures.append(exc)
        if failures:
            raise failures[0]

    def network_deactivate(self, cid: int, reason: str = "deactivated by the network") -> bool:
        """The network ends context `cid` on its own (TS 24.008 6.1.3.4, network-initiated deactivation): as
        deactivate, for a scenario or a test; returns whether the context was active."""
        if cid not in self.contexts:
            return False
        self.deactivate(cid, reason, by_network=True)
        return True

    @property
    def gateway(self) -> str:
        """The packet gateway's address: host 1 of the pool's network."""
        return str(next(ipaddress.IPv4Network(self.config.pool).hosts()))

    @property
    def free_addresses(self) -> int:
        return len(self._free)
