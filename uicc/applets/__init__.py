"""Applets of the simulated card: SELECT by AID on a logical channel (ISO/IEC 7816-4 sections 5.4 and 11.1.1, ETSI
TS 102 221 section 11.1.1), sans-IO.

An applet is an application of the card that is not a file-system ADF (the ARA-M of GlobalPlatform SE Access
Control, the test applet of the Android OMAPI conformance tests). `SimCard` (uicc/card.py) keeps the file system;
an `AppletHost` keeps which applet each logical channel has selected and hands it the channel's APDUs, except
MANAGE CHANNEL, SELECT, the card-level CAT commands and the GET RESPONSE that fetches what the applet's 61 xx
announced (docs/protocols.md, "OMAPI and the ARA-M on the card").

An applet answers `select(p2, aid, channel)` and `process(command)` with (response data, status word); a refusal is
`AppletError(sw)`. What leaves the card is shaped by the host with T=0 semantics: response data to a command
without Le waits for GET RESPONSE behind 61 xx, and data longer than Le (or 256 bytes) comes in parts, each but the
last ending 61 xx (ISO/IEC 7816-4 section 5.3.4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

SW_OK = 0x9000
SW_WRONG_LENGTH = 0x6700
SW_CONDITIONS_NOT_SATISFIED = 0x6985
SW_INS_NOT_SUPPORTED = 0x6D00
SW_CLA_NOT_SUPPORTED = 0x6E00

# instructions the card itself answers on every channel (TS 102 221 section 10.1.2 CAT commands and STATUS, class
# 80 or the GSM class A0): an applet selected on the basic channel must not swallow the terminal's toolkit traffic
CARD_LEVEL_PROPRIETARY = frozenset({0x10, 0x12, 0x14, 0xC2, 0xF2})
INS_SELECT = 0xA4
INS_MANAGE_CHANNEL = 0x70
INS_GET_RESPONSE = 0xC0
SHORT_MAX = 256  # the most response data one short R-APDU carries (ISO/IEC 7816-4 section 5.1)


@dataclass(slots=True)
class Command:
    """One command APDU as an applet sees it: `le` is None when the APDU had no Le (256 for Le = 00)."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None
    channel: int = 0

    @property
    def header(self) -> bytes:
        return bytes((self.cla, self.ins, self.p1, self.p2))


class AppletError(Exception):
    """An applet's refusal: the status word it answers."""

    def __init__(self, sw: int, why: str = "") -> None:
        super().__init__(f"SW {sw:04X}{': ' + why if why else ''}")
        self.sw = sw


def success(sw: int) -> bool:
    """Whether `sw` completes a command (normal or warning processing, ISO/IEC 7816-4 section 5.1.3): a
    selection that ends with one of them holds."""
    return sw >> 8 in (0x90, 0x91, 0x61, 0x62, 0x63)


class Applet:
    """The base of every applet: selectable by `aid`, refusing every instruction until a subclass answers it."""

    name = "applet"

    def __init__(self, aid: bytes) -> None:
        self.aid = aid

    def select(self, p2: int, aid: bytes, channel: int) -> tuple[bytes, int]:
        """The answer to SELECT by DF name on `channel` (`aid` as the command gave it, maybe a partial one)."""
        return b"", SW_OK

    def deselect(self, channel: int) -> None:
        """The channel selected something else, was closed, or the card was reset."""

    def process(self, command: Command) -> tuple[bytes, int]:
        raise AppletError(SW_INS_NOT_SUPPORTED)

    def to_dict(self) -> dict[str, Any]:
        """What of the applet persists in the card's state file (nothing by default)."""
        return {}

    def load_dict(self, state: dict[str, Any]) -> None:
        """Restores `to_dict`'s output of an earlier run."""


class AppletHost:
    """The applets of one card and which one each logical channel has selected; a component of the card's state
    file (each applet's `to_dict` under its name)."""

    def __init__(self, applets: Iterable[Applet] = ()) -> None:
        self.applets: list[Applet] = list(applets)
        self.selected: dict[int, Applet] = {}
        self._pending: dict[int, bytes] = {}  # response data waiting for GET RESPONSE, per channel
        # the applets' persistent state moved since the state file was written (an ARA-M whose rules changed
        # between boots, or by STORE DATA): the card saves its state after the APDU, when every component of the
        # state file is attached
        self.changed = False
        self._restores = 0

    # --- selection ---------------------------------------------------------------------------------------------

    def matching(self, aid: bytes) -> list[Applet]:
        """The applets whose AID starts with `aid`, in registration order (partial AID selection)."""
        return [applet for applet in self.applets if aid and applet.aid.startswith(aid)]

    def current(self, channel: int) -> Applet | None:
        return self.selected.get(channel)

    @property
    def state_version(self) -> int:
        """Moves when what `to_dict` returns may have changed (uicc/card_state.py encodes a part again only then)."""
        return self._restores + sum(getattr(applet, "state_version", 0) for applet in self.applets)

    def owns(self, channel: int) -> bool:
        return channel in self.selected

    def select(self, channel: int, applet: Applet, p2: int, aid: bytes, le: int | None) -> tuple[bytes, int]:
        """Selects `applet` on `channel` when its answer is a success; a refused SELECT leaves the channel's
        selection as it was (ISO/IEC 7816-4 section 11.1.1)."""
        try:
            data, sw = applet.select(p2, aid, channel)
        except AppletError as exc:
            return b"", exc.sw
        if not success(sw):
            return b"", sw
        self.leave(channel)
        self.selected[channel] = applet
        if p2 & 0x0C == 0x0C:  # P2: no response data
            return b"", sw
        return self._shape(channel, data, sw, le)

    def leave(self, channel: int) -> None:
        """The channel no longer has an applet selected (another selection, MANAGE CHANNEL close)."""
        self._pending.pop(channel, None)
        applet = self.selected.pop(channel, None)
        if applet is not None:
            applet.deselect(channel)

    def reset(self) -> None:
        for channel in list(self.selected):
            self.leave(channel)
        self._pending.clear()

    @property
    def answering(self) -> bool:
        """Whether an applet's answer is still being read (61 xx, GET RESPONSE to come) on some channel."""
        return bool(self._pending)

    # --- commands ----------------------------------------------------------------------------------------------

    def routes(self, channel: int, cla: int, ins: int, p1: int) -> bool:
        """Whether the APDU goes to the applet selected on `channel`: not MANAGE CHANNEL, not SELECT (the card
        decides which selection it makes), not the card-level commands of class 80/A0."""
        if channel not in self.selected:
            return False
        if ins in (INS_MANAGE_CHANNEL, INS_SELECT):
            return False
        if cla & 0xF0 in (0x80, 0xA0) and ins in CARD_LEVEL_PROPRIETARY:
            return False
        return True

    def process(self, command: Command) -> tuple[bytes, int]:
        """One APDU for the applet selected on `command.channel` (or the GET RESPONSE of its pending data)."""
        channel = command.channel
        if command.ins == INS_GET_RESPONSE and channel in self._pending:
            return self._get_response(channel, command.le)
        self._pending.pop(channel, None)  # data not fetched at once is gone (ISO/IEC 7816-4 section 5.3.4)
        applet = self.selected[channel]
        version = getattr(applet, "state_version", None)  # only the applet that runs can change its state
        try:
            data, sw = applet.process(command)
        except AppletError as exc:
            return b"", exc.sw
        finally:
            if version is not None and applet.state_version != version:  # type: ignore[attr-defined]
                self.changed = True
        return self._shape(channel, data, sw, command.le)

    def _shape(self, channel: int, data: bytes, sw: int, le: int | None) -> tuple[bytes, int]:
        if not data:
            return b"", sw
        if le is None:
            if sw != SW_OK:
                return data, sw  # a warning with data: given at once rather than lost behind 61 xx
            self._pending[channel] = data
            return b"", 0x6100 | (len(data) & 0xFF if len(data) < SHORT_MAX else 0)
        limit = min(le, SHORT_MAX)
        if len(data) <= limit or sw != SW_OK:
            return data[:limit], sw
        self._pending[channel] = data[limit:]
        return data[:limit], self._more(channel)

    def _get_response(self, channel: int, le: int | None) -> tuple[bytes, int]:
        waiting = self._pending[channel]
        limit = SHORT_MAX if le is None else min(le, SHORT_MAX)
        if le is not None and le < SHORT_MAX and le > len(waiting):
            return b"", 0x6C00 | len(waiting)  # wrong Le: the right one, data kept (TS 102 221 7.3.1.1.4)
        out, rest = waiting[:limit], waiting[limit:]
        if rest:
            self._pending[channel] = rest
            return out, self._more(channel)
        del self._pending[channel]
        return out, SW_OK

    def _more(self, channel: int) -> int:
        left = len(self._pending[channel])
        return 0x6100 | (left if left < SHORT_MAX else 0)

    # --- state -------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {applet.name: state for applet in self.applets if (state := applet.to_dict())}

    def load_dict(self, state: dict[str, Any]) -> None:
        for applet in self.applets:
            part = state.get(applet.name)
            if isinstance(part, dict):
                applet.load_dict(part)
        self._restores += 1
        mine = {applet.name for applet in self.applets}
        self.changed = self.to_dict() != {name: part for name, part in state.items() if name in mine}


# The applets a profile may name in `applets = [...]` (docs/protocols.md): name -> the applet instances it installs.
REGISTRY: dict[str, Callable[[], list[Applet]]] = {}


def register(name: str) -> Callable[[Callable[[], list[Applet]]], Callable[[], list[Applet]]]:
    def add(factory: Callable[[], list[Applet]]) -> Callable[[], list[Applet]]:
        REGISTRY[name] = factory
        return factory

    return add


def applet_names() -> list[str]:
    _load_builtins()
    return sorted(REGISTRY)


def build_host(profile: Any) -> AppletHost:
    """The applets of a card profile (uicc/profile.py): the ARA-M when `ara_m` is set, then the `applets` named."""
    _load_builtins()
    from bipsim.uicc.applets.ara_m import AraM

    applets: list[Applet] = []
    if profile.ara_m:
        applets.append(AraM.of_profile(profile))
    for name in profile.applets:
        made = REGISTRY[name]()
        for applet in made:
            # an applet with options in the card profile (the ISD-R's eUICC keys) reads them here
            configure = getattr(applet, "configure", None)
            if configure is not None:
                configure(profile)
        applets.extend(made)
    return AppletHost(applets)


def _load_builtins() -> None:
    # the built-in applets register themselves on import
    from bipsim.uicc.applets import ara_m, echo

    del ara_m, echo
    # the ISD-R imports asn1tools and cryptography: only a card whose profile names it pays for them
    REGISTRY.setdefault("isd-r", _isd_r)


def _isd_r() -> list[Applet]:
    from bipsim.uicc.applets.isd_r import IsdR

    return [IsdR()]
