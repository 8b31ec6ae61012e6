"""The simulated UICC's APDU processor (ETSI TS 102 221 sections 10-11, ISO/IEC 7816-4), sans-IO.

`SimCard.process(apdu)` takes one command APDU and returns response data + SW1 SW2, with T=0 semantics: SELECT
answers 61 xx and the FCP comes with GET RESPONSE; a wrong Le gets 6C xx; while the CAT application (the Toolkit of
uicc/toolkit.py) has a proactive command waiting, a successful command answers 91 xx instead of 90 00. An applet
may ask for a proactive command too (the ISD-R's REFRESH after a profile switch, `take_proactive`): the card queues
it ahead of the toolkit's and announces it with 91 xx on the basic channel, where the terminal's own commands go.
Classes: 00 (ISO, also 01..03 logical channels), 80 (TS 102 221 proprietary: STATUS, TERMINAL PROFILE, FETCH,
TERMINAL RESPONSE, ENVELOPE), A0 (GSM SIM heritage, accepted for SELECT/READ/UPDATE/STATUS/GET RESPONSE).
Applets (uicc/applets/: the ARA-M, the OMAPI test applet) are selected by AID on a logical channel and answer that
channel's APDUs; MANAGE CHANNEL opens as many channels as the profile's `logical_channels` (docs/protocols.md,
"OMAPI and the ARA-M on the card").

Card state (file contents and attached components such as the GP registry) persists in one file, written
atomically by bipsim.uicc.card_state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from bipsim.uicc.applets import Applet, AppletHost, Command, build_host
from bipsim.uicc.applets.ara_m import parse_rule
from bipsim.uicc.applets.arf import install_arf
from bipsim.uicc.card_state import StateFile, load_state
from bipsim.uicc.cat import decode_proactive, decode_terminal_response
from bipsim.uicc.fs import ADM1, PIN1, PIN2, File, FileKind, FileSystem, Pins
from bipsim.uicc.mo_sms_control import MO_SMS_CONTROL_TAG
from bipsim.uicc.mo_sms_control import answer as mo_sms_control_answer
from bipsim.uicc.phonebook import load_phonebook
from bipsim.uicc.profile import CardProfile
from bipsim.uicc.toolkit import Toolkit, ToolkitError

ATR = bytes.fromhex("3B9F96801FC78031A073BE21136743200718000001A5")

SW_OK = 0x9000
SW_WRONG_LENGTH = 0x6700
SW_SECURITY_NOT_SATISFIED = 0x6982
SW_CONDITIONS_NOT_SATISFIED = 0x6985
SW_COMMAND_NOT_ALLOWED_NO_EF = 0x6986
SW_WRONG_DATA = 0x6A80
SW_FUNCTION_NOT_SUPPORTED = 0x6A81
SW_FILE_NOT_FOUND = 0x6A82
SW_RECORD_NOT_FOUND = 0x6A83
SW_INCORRECT_P1P2 = 0x6A86
SW_WRONG_P1P2 = 0x6B00
SW_INS_NOT_SUPPORTED = 0x6D00
SW_CLA_NOT_SUPPORTED = 0x6E00
SW_TECHNICAL_PROBLEM = 0x6F00
SW_LOGICAL_CHANNEL_NOT_SUPPORTED = 0x6881


MAX_LOGICAL_CHANNEL = (
    19  # TS 102 221 section 10.1.1: channels 0..3 in class 0X/8X, 4..19 in class 4X/6X/CX/EX
)


def logical_channel(cla: int) -> int:
    """The logical channel a class byte addresses (TS 102 221 section 10.1.1)."""
    return 4 + (cla & 0x0F) if cla & 0x40 else cla & 0x03


def on_channel(cla: int, channel: int) -> int:
    """`cla` recoded to address `channel`: b8 (proprietary) kept, secure-messaging bits kept where both codings
    have them, channels 4..19 in the further interindustry coding (b7 = 1, channel - 4 in b4..b1)."""
    if not 0 <= channel <= MAX_LOGICAL_CHANNEL:
        raise ValueError(f"logical channel {channel} is not 0..{MAX_LOGICAL_CHANNEL}")
    if channel <= 3:
        return (cla & 0x80) | (0 if cla & 0x40 else cla & 0x0C) | channel
    return (cla & 0x80) | 0x40 | (cla & 0x20 if cla & 0x40 else 0) | (channel - 4)


def sw_bytes(sw: int) -> bytes:
    return sw.to_bytes(2, "big")


class Persistent(Protocol):
    """A component whose state lives in the card's state file. One that also has an int `state_version`, moved on
    whenever its content changes (uicc/fs.py, uicc/gp_registry.py), is encoded only after a change."""

    def to_dict(self) -> dict[str, Any]: ...

    def load_dict(self, state: dict[str, Any]) -> None: ...


class ApduError(Exception):
    def __init__(self, sw: int) -> None:
        super().__init__(f"SW {sw:04X}")
        self.sw = sw


class _NoToolkit:
    """A card without a CAT application: TERMINAL PROFILE is accepted, nothing is ever pending."""

    def terminal_profile(self, profile: bytes) -> None:
        return None

    def pending_length(self) -> int:
        return 0

    def fetch(self) -> bytes:
        raise ToolkitError(0x6F00, "no proactive command pending")

    def terminal_response(self, data: bytes) -> None:
        raise ToolkitError(0x6F00, "no proactive command pending")

    def envelope(self, data: bytes) -> bytes:
        raise ToolkitError(0x6D00, "no CAT application")


class SimCard:
    """The APDU processor of one card. `toolkit` is its CAT application (the BIP engine)."""

    def __init__(
        self, profile: CardProfile, *, toolkit: Toolkit | None = None, state_path: str | Path | None = None
    ) -> None:
        self.profile = profile
        self.toolkit: Toolkit = toolkit if toolkit is not None else _NoToolkit()
        self.fs = FileSystem(profile.iccid, profile.imsi, profile.mnc_length, adn_records=profile.adn_records)
        # the profile's contacts and messages; a state file, loaded next, has the last word
        load_phonebook(self.fs, profile)
        self.state_path = Path(state_path) if state_path is not None else None
        self._state_file = StateFile(self.state_path) if self.state_path is not None else None
        self._components: dict[str, Persistent] = {"files": self.fs}
        # current DF/EF per logical channel (0 is the basic channel)
        self._current: dict[int, tuple[File, File | None]] = {0: (self.fs.mf, None)}
        self._response: bytes = b""
        self._internal = False  # an internal APDU (remote file management) is being processed: ADM rights
        self.faults: list[str] = []  # exceptions inside the card, each answered 6F 00
        # proactive commands applets asked for (take_proactive), and the one fetched that awaits its TR
        self._applet_commands: deque[bytes] = deque()
        self._applet_fetched: bytes | None = None
        # the toolkit's command fetched and not yet answered: one proactive session at a time (TS 102 223 6.4)
        self._toolkit_fetched = False
        self.terminal_profile_data = b""  # the terminal's last TERMINAL PROFILE (what applets may ask of it)
        if self.state_path is not None and self.state_path.exists():
            self._restore(load_state(self.state_path))
        # applets selected by AID on a logical channel (uicc/applets/): the ARA-M's rule generation persists
        self.applets: AppletHost = build_host(profile)
        self.attach_state("applets", self.applets)
        # an eUICC's enabled profile is the card's subscription (docs/protocols.md, "eUICC and the cloud backup")
        for applet in self.applets.applets:
            store = getattr(applet, "profile_store", None)
            if store is not None:
                store.bind(self.use_subscription)
        if profile.arf:  # the access rule files follow the profile, whatever the state file held
            install_arf(self.fs, [parse_rule(entry) for entry in profile.ara_m_rules])
        # PIN1, PIN2, ADM1 (TS 102 221 section 9.5) and the UNBLOCK PINs of PIN1 and PIN2 (PUK1, PUK2): their
        # attempts left, values and enabled state persist
        self.pins = Pins(
            {PIN1: profile.pin1, PIN2: profile.pin2, ADM1: profile.adm1},
            unblock={PIN1: profile.puk1, PIN2: profile.puk2},
            attempts={PIN1: profile.pin1_attempts, PIN2: profile.pin2_attempts},
            unblock_attempts={PIN1: profile.puk1_attempts, PIN2: profile.puk2_attempts},
            disabled=set() if profile.pin1_enabled else {PIN1},
        )
        self.attach_state("pins", self.pins)

    # --- state -----------------------------------------------------------------------------------------------

    def attach_state(self, name: str, component: Persistent) -> None:
        """Adds a component to the state file (restoring its saved part if the file has one).

        A component with a `bind_state_path(path)` method keeps bulk data in files next to the state file (see
        card_state.Journal); it is told the path first, `state_saved()` after each write of the state file, and
        `sync_state()` when its appends must be made durable.
        """
        self._components[name] = component
        bind = getattr(component, "bind_state_path", None)
        if bind is not None and self.state_path is not None:
            bind(self.state_path)
        if self.state_path is not None and self.state_path.exists():
            saved = load_state(self.state_path).get(name)
            if isinstance(saved, dict):
                component.load_dict(saved)

    def snapshot(self) -> dict[str, Any]:
        return {name: component.to_dict() for name, component in self._components.items()}

    def _restore(self, state: dict[str, Any]) -> None:
        for name, component in self._components.items():
            part = state.get(name)
            if isinstance(part, dict):
                component.load_dict(part)

    def save_state(self) -> None:
        """Writes the whole card state atomically when it changed (no-op for a card without a state file).

        Only parts whose component moved its `state_version` are encoded again (uicc/card_state.py save_parts):
        after an APDU that changed nothing this costs a version check per component, no encoding and no I/O.
        """
        if self._state_file is not None and self._state_file.save_parts(self._components):
            for component in self._components.values():
                saved = getattr(component, "state_saved", None)
                if saved is not None:
                    saved()

    def sync_state(self) -> None:
        """Makes data that components appended outside the state file durable (see card_state.Journal); called
        before the card's answers leave it."""
        for component in self._components.values():
            sync = getattr(component, "sync_state", None)
            if sync is not None:
                sync()

    # --- the eUICC's enabled profile ----------------------------------------------------------------------------

    def use_subscription(self, subscription: Any) -> None:
        """Writes the enabled eUICC profile's subscription (bipsim.uicc.euicc.profile_store.Subscription: ICCID,
        IMSI, MNC length, provider name) into EF_ICCID, EF_IMSI, EF_AD and EF_SPN; None (no profile enabled) puts
        back the card profile's own. A file already so is not written; the state file keeps the change with the
        eUICC's (the terminal reads the new IMSI at its next READ of EF_IMSI, SGP.22 3.2.1's REFRESH aside)."""
        from bipsim.uicc.fs import bcd_swapped, imsi_bytes

        if subscription is None:
            iccid, imsi, mnc, spn = self.profile.iccid, self.profile.imsi, self.profile.mnc_length, "bipsim"
        else:
            iccid, imsi, mnc, spn = (
                subscription.iccid,
                subscription.imsi,
                subscription.mnc_length,
                subscription.provider,
            )
        name = spn.encode("ascii", "replace")[:16]
        for ef, data in (
            (self.fs.mf.children[0x2FE2], bcd_swapped(iccid, 10)),
            (self.fs.usim.children[0x6F07], imsi_bytes(imsi)),
            (self.fs.usim.children[0x6FAD], bytes(self.fs.usim.children[0x6FAD].data[:3]) + bytes((mnc,))),
            (self.fs.usim.children[0x6F46], b"\x00" + name.ljust(16, b"\xff")),
        ):
            if bytes(ef.data) != data:
                ef.data[:] = data

    def set_euicc_fault(self, segment: int) -> bool:
        """Arms the eUICC's install fault at BPP segment `segment` (0: none) on this running card, to fire once
        (the CP's card-control line 'euicc-fault N K'); False when the card has no eUICC."""
        for applet in self.applets.applets:
            store = getattr(applet, "profile_store", None)
            if store is not None and hasattr(applet, "fault_at_segment"):
                applet.fault_at_segment = segment or None
                store.rearm_fault()
                self.save_state()
                return True
        return False

    # --- APDUs -------------------------------------------------------------------------------------------------

    def atr(self) -> bytes:
        return ATR

    def reset(self) -> bytes:
        self._current = {0: (self.fs.mf, None)}
        self._response = b""
        self.applets.reset()
        self.pins.reset()  # PINs are verified again after a reset (TS 102 221 section 9.5)
        self._applet_commands.clear()  # a reset ends the proactive session (TS 102 223 section 6.4.7)
        self._applet_fetched = None
        self._toolkit_fetched = False
        return ATR

    def process(self, apdu: bytes) -> bytes:
        """One command APDU in, response data + SW1 SW2 out. Never raises: a fault inside the card (a bug in an
        applet) is 6F 00, technical problem (TS 102 221 section 10.2.1.5), noted in `faults`."""
        try:
            data, sw = self._dispatch(apdu, toolkit=True)
        except ApduError as exc:
            data, sw = b"", exc.sw
        except ToolkitError as exc:
            data, sw = b"", exc.sw
        except Exception as exc:
            self.faults.append(f"{apdu[:4].hex().upper()}: {exc!r}")
            data, sw = b"", SW_TECHNICAL_PROBLEM
        if sw == SW_OK and self._applet_pending(apdu):
            sw = 0x9100 | min(len(self._applet_commands[0]), 0xFF)
        elif sw == SW_OK and self._applet_fetched is None:  # the applet's open command waits for its TR first
            try:
                pending = self.toolkit.pending_length()
            except Exception as exc:
                self.faults.append(f"pending_length: {exc!r}")
                pending = 0
            if pending:
                sw = 0x9100 | min(pending, 0xFF)
        return data + sw_bytes(sw)

    def _applet_pending(self, apdu: bytes) -> bool:
        """An applet's proactive command is next, announced on the basic channel only (a host's logical channel
        session keeps its 90 00), and only once the answer that asked for it has been read whole: the ISD-R's
        REFRESH after EnableProfile must not reset the card between its 61 xx and the LPA's GET RESPONSE (SGP.22
        3.2.1: the answer first, then the REFRESH)."""
        return (
            bool(self._applet_commands)
            and not self.proactive_session_open()
            and not self.applets.answering
            and logical_channel(apdu[0]) == 0
        )

    def proactive_session_open(self) -> bool:
        """Whether a proactive command was fetched and waits for its TERMINAL RESPONSE (the toolkit's or an
        applet's): no other is handed out until then (TS 102 221 section 14.6, TS 102 223 section 6.4)."""
        return self._toolkit_fetched or self._applet_fetched is not None

    def _proactive_busy(self) -> bool:
        """Whether an applet's new proactive command could not be the next one: a session is open or an applet's
        command is queued already (SGP.22 5.7.16-17 catBusy)."""
        return self.proactive_session_open() or bool(self._applet_commands)

    def _collect_applet_commands(self) -> None:
        for applet in self.applets.applets:
            take = getattr(applet, "take_proactive", None)
            if take is not None:
                self._applet_commands.extend(take(self.terminal_profile_data))

    def internal_apdu(self, apdu: bytes) -> bytes:
        """An APDU from inside the card (the OTA agent's remote APDUs): no toolkit side effects, no 91 xx."""
        self._internal = True
        try:
            data, sw = self._dispatch(apdu, toolkit=False)
        except ApduError as exc:
            data, sw = b"", exc.sw
        except ToolkitError as exc:
            data, sw = b"", exc.sw
        except Exception as exc:
            self.faults.append(f"{apdu[:4].hex().upper()}: {exc!r}")
            data, sw = b"", SW_TECHNICAL_PROBLEM
        finally:
            self._internal = False
        return data + sw_bytes(sw)

    def _dispatch(self, apdu: bytes, *, toolkit: bool) -> tuple[bytes, int]:
        if len(apdu) < 4:
            raise ApduError(SW_WRONG_LENGTH)
        cla, ins, p1, p2 = apdu[0], apdu[1], apdu[2], apdu[3]
        body = apdu[4:]
        lc_data = b""
        le: int | None = None
        if len(body) == 1:
            le = body[0] or 256
        elif len(body) > 1:
            lc = body[0]
            if len(body) == 1 + lc:
                lc_data = body[1:]
            elif len(body) == 2 + lc:
                lc_data, le = body[1:-1], body[-1] or 256
            else:
                raise ApduError(SW_WRONG_LENGTH)
        target_channel = logical_channel(cla)
        if (
            cla != 0xFF
            and cla & 0xE0 != 0x20  # ISO/IEC 7816-4 section 5.4.1: 2X and 3X are reserved, FF invalid
            and target_channel in self._current
            and not self._internal  # remote APDUs are for the file system (docs/protocols.md)
            and self.applets.routes(target_channel, cla, ins, p1)
        ):
            # the applet selected on this channel answers; the classes it takes (9X as the Android OMAPI tests send
            # it) are its own affair (docs/protocols.md, "OMAPI and the ARA-M on the card")
            for applet in self.applets.applets:
                if hasattr(applet, "proactive_busy"):
                    applet.proactive_busy = self._proactive_busy()
            answer = self.applets.process(Command(cla, ins, p1, p2, lc_data, le, target_channel))
            self._collect_applet_commands()
            # the ARA-M's rules were changed (STORE DATA): kept before the answer leaves the card
            if self.applets.changed:
                self.applets.changed = False
                self.save_state()
            return answer
        if cla & 0xF0 not in (0x00, 0x80, 0xA0) and cla & 0xC0 != 0x40:
            raise ApduError(SW_CLA_NOT_SUPPORTED)
        channel = logical_channel(cla)
        if channel not in self._current:
            raise ApduError(SW_LOGICAL_CHANNEL_NOT_SUPPORTED)
        proprietary = cla & 0x80 == 0x80 and cla & 0xF0 != 0xA0
        if cla & 0xF0 == 0xA0 and ins in (0x10, 0x12, 0x14, 0xC2):
            proprietary = True  # GSM 11.14 sends the CAT commands with class A0
        if proprietary:
            handler = {
                0xF2: self._status,
                0x10: self._terminal_profile,
                0x12: self._fetch,
                0x14: self._terminal_response,
                0xC2: self._envelope,
            }.get(ins)
            if handler is None:
                raise ApduError(SW_INS_NOT_SUPPORTED)
            if ins in (0x10, 0x12, 0x14, 0xC2) and not toolkit:
                raise ApduError(SW_CONDITIONS_NOT_SATISFIED)
        else:
            handler = {
                0xA4: self._select,
                0xB0: self._read_binary,
                0xD6: self._update_binary,
                0xB2: self._read_record,
                0xDC: self._update_record,
                0xC0: self._get_response,
                0x70: self._manage_channel,
                0xF2: self._status,
                0x20: self._verify_pin,
                0x24: self._change_pin,
                0x26: self._disable_pin,
                0x28: self._enable_pin,
                0x2C: self._unblock_pin,
            }.get(ins)
            if handler is None:
                raise ApduError(SW_INS_NOT_SUPPORTED)
        data, sw = handler(channel, p1, p2, lc_data, le)
        if ins == 0xA4 and p1 != 0x04 and not self._internal:
            self.applets.leave(channel)  # a file selected on the channel: its applet is no longer selected
        if (
            sw == SW_OK
            and le is not None
            and data
            and le != 256
            and le != len(data)
            and ins in (0xB0, 0xB2, 0xC0)
        ):
            return b"", 0x6C00 | (len(data) & 0xFF)
        return data, sw

    # --- file commands ---------------------------------------------------------------------------------------

    def _select(self, channel: int, p1: int, p2: int, data: bytes, le: int | None) -> tuple[bytes, int]:
        df, _ = self._current[channel]
        target: File | None
        if p1 == 0x04:  # by DF name (AID): an ADF of the file system or an applet
            chosen = self._select_aid(channel, p2, data, le)
            if isinstance(chosen, tuple):
                return chosen
            target = chosen
        elif p1 == 0x00 and not data:  # ISO/IEC 7816-4: no data selects the MF
            target = self.fs.mf
        elif p1 == 0x00 and len(data) == 2:
            fid = int.from_bytes(data, "big")
            target = self._by_fid(df, fid)
        elif p1 in (0x01, 0x02) and len(data) == 2:
            # ISO/IEC 7816-4 table 39: 01 a DF, 02 an EF, under the current DF (opensc asks for EF_DIR this way)
            child = df.children.get(int.from_bytes(data, "big"))
            target = child if child is not None and child.is_dir == (p1 == 0x01) else None
        elif p1 in (0x08, 0x09) and data and len(data) % 2 == 0:
            # 08: path from the MF (without 3F00); 09: path from the current DF
            node: File | None = self.fs.mf if p1 == 0x08 else df
            fids = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
            if p1 == 0x08 and fids[0] == 0x3F00:
                fids = fids[1:]
            for fid in fids:
                node = node.children.get(fid) if node is not None else None
            target = node
        elif p1 == 0x03:  # parent DF
            target = df.parent or df
        else:
            raise ApduError(SW_INCORRECT_P1P2)
        if target is None:
            raise ApduError(SW_FILE_NOT_FOUND)
        if target.is_dir:
            self._current[channel] = (target, None)
        else:
            assert target.parent is not None
            self._current[channel] = (target.parent, target)
        fcp = target.fcp(self._pin_status())
        if p2 & 0x0C == 0x0C:  # no data returned
            return b"", SW_OK
        self._response = fcp
        return b"", 0x6100 | len(fcp)

    def _select_aid(
        self, channel: int, p2: int, aid: bytes, le: int | None
    ) -> tuple[bytes, int] | File | None:
        """SELECT by DF name: the ADFs whose AID starts with `aid`, then the applets that do (partial AID selection),
        and P2 b2 b1 picks the first, last, next or previous one (ISO/IEC 7816-4 section 11.1.1, table 63; "next"
        after the channel's current selection). An ADF is returned for the file-system SELECT to finish; an
        applet's selection is answered here."""
        if not aid:
            return None
        candidates: list[File | Applet] = [
            node for _, node in self.fs.walk() if node.aid and node.aid.startswith(aid)
        ]
        if not self._internal:
            # a remote APDU of an OTA session runs on the card's basic channel: an applet selected there would
            # take the terminal's next APDUs on channel 0, so the remote context reaches the file system only
            candidates += self.applets.matching(aid)
        if not candidates:
            return None
        current = self.applets.current(channel) or self._current[channel][0]
        at = next((i for i, item in enumerate(candidates) if item is current), None)
        occurrence = p2 & 0x03
        if occurrence == 0x00:  # first or only
            pick = 0
        elif occurrence == 0x01:  # last
            pick = len(candidates) - 1
        elif occurrence == 0x02:  # next
            pick = 0 if at is None else at + 1
        else:  # previous
            pick = len(candidates) - 1 if at is None else at - 1
        if not 0 <= pick < len(candidates):
            raise ApduError(SW_FILE_NOT_FOUND)
        chosen = candidates[pick]
        if isinstance(chosen, File):
            if not self._internal:
                self.applets.leave(channel)
            return chosen
        answer = self.applets.select(channel, chosen, p2, aid, le)
        if self.applets.changed:  # a new ARA-M rule generation since the state file was written: keep it
            self.applets.changed = False
            self.save_state()
        return answer

    def _by_fid(self, df: File, fid: int) -> File | None:
        if fid == 0x3F00:
            return self.fs.mf
        if fid == 0x7FFF:  # the current ADF
            return self.fs.usim
        for candidate in (df, df.parent):
            if candidate is None:
                continue
            if candidate.fid == fid:
                return candidate
            if fid in candidate.children:
                return candidate.children[fid]
        return self.fs.mf.children.get(fid)

    def _ef(self, channel: int, p1: int, kind: FileKind, sfi_in_p1: bool) -> File:
        df, ef = self._current[channel]
        if sfi_in_p1:
            sfi = p1 & 0x1F
            found = next((f for f in df.children.values() if f.sfi == sfi), None)
            if found is None:
                raise ApduError(SW_FILE_NOT_FOUND)
            self._current[channel] = (df, found)
            ef = found
        if ef is None:
            raise ApduError(SW_COMMAND_NOT_ALLOWED_NO_EF)
        if ef.kind is not kind:
            raise ApduError(0x6981)  # command incompatible with file structure
        return ef

    def _read_binary(self, channel: int, p1: int, p2: int, data: bytes, le: int | None) -> tuple[bytes, int]:
        sfi = bool(p1 & 0x80)
        ef = self._ef(channel, p1, FileKind.TRANSPARENT, sfi)
        self._check_read(ef)
        offset = p2 if sfi else (p1 << 8) | p2
        if offset >= len(ef.data):  # TS 102 221 section 10.2.1.5: 6B00, offset outside the EF
            raise ApduError(SW_WRONG_P1P2)
        want = len(ef.data) - offset if le is None or le == 256 else le
        chunk = bytes(ef.data[offset : offset + want])
        if le is not None and le != 256 and len(chunk) < le:
            return chunk, 0x6282  # end of file reached before reading Le bytes
        return chunk, SW_OK

    def _update_binary(
        self, channel: int, p1: int, p2: int, data: bytes, le: int | None
    ) -> tuple[bytes, int]:
        sfi = bool(p1 & 0x80)
        ef = self._ef(channel, p1, FileKind.TRANSPARENT, sfi)
        self._check_update(ef)
        offset = p2 if sfi else (p1 << 8) | p2
        if offset + len(data) > len(ef.data):
            raise ApduError(SW_WRONG_P1P2)
        ef.data[offset : offset + len(data)] = data
        return b"", SW_OK

    def _record(self, channel: int, p1: int, p2: int) -> tuple[File, int]:
        sfi = p2 >> 3
        df, ef = self._current[channel]
        if sfi:
            found = next((f for f in df.children.values() if f.sfi == sfi), None)
            if found is None:
                raise ApduError(SW_FILE_NOT_FOUND)
            ef = found
            self._current[channel] = (df, ef)
        if ef is None:
            raise ApduError(SW_COMMAND_NOT_ALLOWED_NO_EF)
        if ef.kind is not FileKind.LINEAR_FIXED:
            raise ApduError(0x6981)
        if p2 & 0x07 != 0x04:  # only absolute record numbers
            raise ApduError(SW_INCORRECT_P1P2)
        if not 1 <= p1 <= ef.records:
            raise ApduError(SW_RECORD_NOT_FOUND)
        return ef, (p1 - 1) * ef.record_length

    def _read_record(self, channel: int, p1: int, p2: int, data: bytes, le: int | None) -> tuple[bytes, int]:
        ef, start = self._record(channel, p1, p2)
        self._check_read(ef)
        return bytes(ef.data[start : start + ef.record_length]), SW_OK

    def _update_record(
        self, channel: int, p1: int, p2: int, data: bytes, le: int | None
    ) -> tuple[bytes, int]:
        ef, start = self._record(channel, p1, p2)
        self._check_update(ef)
        if len(data) != ef.record_length:
            raise ApduError(SW_WRONG_LENGTH)
        ef.data[start : start + ef.record_length] = data
        self._terminal_write_done()
        return b"", SW_OK

    def _terminal_write_done(self) -> None:
        """A terminal's UPDATE RECORD (a phonebook entry, a stored message) is in the card's non-volatile memory
        once answered: saved now, or 65 81 memory problem (TS 102 221 10.2.1.3) when the state file cannot be
        written (the next save tries again). The OTA agent's internal writes are saved by the agent."""
        if not self._internal:
            try:
                self.save_state()
            except OSError:
                raise ApduError(0x6581) from None

    def _check_update(self, ef: File) -> None:
        """6982 when the file's access rule asks for ADM (EF_ICCID): the terminal has no ADM key, the card's own
        remote file management (internal APDUs of an authenticated OTA session) has."""
        if ef.update_needs_adm() and not self._internal and ADM1 not in self.pins.verified:
            raise ApduError(SW_SECURITY_NOT_SATISFIED)
        if ef.update_needs_pin2() and not self._internal and not self.pins.satisfied(PIN2):
            raise ApduError(SW_SECURITY_NOT_SATISFIED)  # EF_FDN (TS 31.102 4.2.24): UPDATE after PIN2
        if ef.update_needs_pin1() and not self._internal and not self.pins.satisfied(PIN1):
            raise ApduError(SW_SECURITY_NOT_SATISFIED)

    def _check_read(self, ef: File) -> None:
        """6982 when READ needs PIN1 (the subscriber's files) and PIN1 is enabled but not verified since the
        reset (TS 102 221 section 9.5.1); the card's own remote file management has ADM rights."""
        if ef.read_needs_pin1() and not self._internal and not self.pins.satisfied(PIN1):
            raise ApduError(SW_SECURITY_NOT_SATISFIED)

    def _pin_status(self) -> int:
        """The PS_DO of a DF's FCP (TS 102 221 section 9.5.2): b8 PIN1 enabled, b7 PIN2 enabled."""
        return (0x80 if PIN1 in self.pins.enabled else 0) | (0x40 if PIN2 in self.pins.enabled else 0)

    def _verify_pin(self, channel: int, p1: int, p2: int, data: bytes, le: int | None) -> tuple[bytes, int]:
        """VERIFY PIN (TS 102 221 section 11.1.9): P2 the key reference, 8 bytes of PIN, or none to ask for the
        attempts left. A wrong PIN's lost attempt is saved before the answer leaves the card."""
        if p1 != 0x00:
            raise ApduError(SW_WRONG_P1P2)
        if data and len(data) != 8:
            raise ApduError(SW_WRONG_LENGTH)
        return b"", self._pin_command(lambda: self.pins.verify(p2, data or None))

    def _pin_command(self, command: Callable[[], int]) -> int:
        """Runs one of the PIN commands; a counter, PIN value or enabled state it changed is saved before the
        answer leaves the card (a power cycle or kill -9 right after it must not give an attempt back)."""
        before = self.pins.state_version
        sw = command()
        if self.pins.state_version != before:
            self.save_state()
        return sw

    def _change_pin(self, channel: int, p1: int, p2: int, data: bytes, le: int | None) -> tuple[bytes, int]:
        """CHANGE PIN (TS 102 221 section 11.1.10): 16 bytes, the old PIN then the new one."""
        if p1 != 0x00:
            raise ApduError(SW_WRONG_P1P2)
        if len(data) != 16:
            raise ApduError(SW_WRONG_LENGTH)
        return b"", self._pin_command(lambda: self.pins.change(p2, data[:8], data[8:]))

    def _disable_pin(self, channel: int, p1: int, p2: int, data: bytes, le: int | None) -> tuple[bytes, int]:
        """DISABLE PIN (TS 102 221 section 11.1.11): P1 00 and the PIN; P1 80 (an alternative global key
        reference replaces it) is not offered, this card has no universal PIN."""
        if p1 != 0x00:
            raise ApduError(SW_WRONG_P1P2)
        if len(data) != 8:
            raise ApduError(SW_WRONG_LENGTH)
        return b"", self._pin_command(lambda: self.pins.disable(p2, data))

    def _enable_pin(self, channel: int, p1: int, p2: int, data: bytes, le: int | None) -> tuple[bytes, int]:
        """ENABLE PIN (TS 102 221 section 11.1.12): P1 00 and the PIN."""
        if p1 != 0x00:
            raise ApduError(SW_WRONG_P1P2)
        if len(data) != 8:
            raise ApduError(SW_WRONG_LENGTH)
        return b"", self._pin_command(lambda: self.pins.enable(p2, data))

    def _unblock_pin(self, channel: int, p1: int, p2: int, data: bytes, le: int | None) -> tuple[bytes, int]:
        """UNBLOCK PIN (TS 102 221 section 11.1.13): P2 the PIN's key reference, 16 bytes (the UNBLOCK PIN, then
        the new PIN), or none to ask for the UNBLOCK PIN's attempts left."""
        if p1 != 0x00:
            raise ApduError(SW_WRONG_P1P2)
        if data and len(data) != 16:
            raise ApduError(SW_WRONG_LENGTH)
        if not data:
            return b"", self._pin_command(lambda: self.pins.unblock(p2, None, None))
        return b"", self._pin_command(lambda: self.pins.unblock(p2, data[:8], data[8:]))

    def _get_response(self, channel: int, p1: int, p2: int, data: bytes, le: int | None) -> tuple[bytes, int]:
        if p1 or p2:  # TS 102 221 section 11.1.13: P1 P2 are 00 00
            raise ApduError(SW_WRONG_P1P2)
        if not self._response:
            raise ApduError(SW_CONDITIONS_NOT_SATISFIED)
        out = self._response
        if le is not None and le != 256 and le > len(out):
            # wrong Le: say the right one and keep the data for the repeated GET RESPONSE (TS 102 221 7.3.1.1.4)
            return b"", 0x6C00 | (len(out) & 0xFF)
        if le is not None and le != 256 and le < len(out):
            out, self._response = out[:le], out[le:]
            return out, 0x6100 | len(self._response)
        self._response = b""
        return out, SW_OK

    def _status(self, channel: int, p1: int, p2: int, data: bytes, le: int | None) -> tuple[bytes, int]:
        df, _ = self._current[channel]
        if p2 == 0x0C:  # no data returned
            return b"", SW_OK
        if p2 == 0x01:  # the DF name (AID) of the current application, TS 102 221 section 11.1.2
            aid = df.aid or self.fs.usim.aid
            return b"\x84" + bytes((len(aid),)) + aid, SW_OK
        if p2 != 0x00:
            raise ApduError(SW_INCORRECT_P1P2)
        return df.fcp(self._pin_status()), SW_OK

    def _manage_channel(
        self, channel: int, p1: int, p2: int, data: bytes, le: int | None
    ) -> tuple[bytes, int]:
        """MANAGE CHANNEL (TS 102 221 section 11.1.17, ISO/IEC 7816-4 section 11.1.2): open the first free channel
        (P2 = 00, its number answered) or channel P2, up to the profile's `logical_channels`, past them 6881;
        close channel P2 (P2 = 00: the channel of the class byte), which ends its applet's selection."""
        limit = min(self.profile.logical_channels, MAX_LOGICAL_CHANNEL)
        if p1 == 0x00:  # open
            if p2 == 0:
                free = next((n for n in range(1, limit + 1) if n not in self._current), None)
                if free is None:
                    raise ApduError(SW_LOGICAL_CHANNEL_NOT_SUPPORTED)
                self._current[free] = (self.fs.mf, None)
                return bytes((free,)), SW_OK
            if p2 > limit:
                raise ApduError(SW_LOGICAL_CHANNEL_NOT_SUPPORTED)
            if p2 in self._current:
                raise ApduError(SW_CONDITIONS_NOT_SATISFIED)  # already open
            self._current[p2] = (self.fs.mf, None)
            return b"", SW_OK
        if p1 == 0x80:  # close
            closing = p2 or channel
            if closing == 0 or closing not in self._current:
                raise ApduError(SW_INCORRECT_P1P2)
            del self._current[closing]
            self.applets.leave(closing)
            return b"", SW_OK
        raise ApduError(SW_INCORRECT_P1P2)

    # --- CAT commands (TS 102 221 section 10.1.2, class 80) ------------------------------------------------------

    def _terminal_profile(
        self, channel: int, p1: int, p2: int, data: bytes, le: int | None
    ) -> tuple[bytes, int]:
        self.terminal_profile_data = bytes(data)
        self.toolkit.terminal_profile(data)
        return b"", SW_OK

    def _fetch(self, channel: int, p1: int, p2: int, data: bytes, le: int | None) -> tuple[bytes, int]:
        if self.proactive_session_open():
            # one proactive session at a time: the fetched command is answered first (TS 102 223 section 6.4)
            raise ApduError(SW_CONDITIONS_NOT_SATISFIED)
        if self._applet_commands and not self.applets.answering:
            command = self._applet_commands[0]
            if le is not None and le != 256 and le != len(command):
                return b"", 0x6C00 | (len(command) & 0xFF)
            self._applet_fetched = self._applet_commands.popleft()
            return command, SW_OK
        pending = self.toolkit.pending_length()
        if not pending:
            raise ApduError(SW_CONDITIONS_NOT_SATISFIED)
        if le is not None and le != 256 and le != pending:
            return b"", 0x6C00 | (pending & 0xFF)
        command = self.toolkit.fetch()
        self._toolkit_fetched = True
        return command, SW_OK

    def _terminal_response(
        self, channel: int, p1: int, p2: int, data: bytes, le: int | None
    ) -> tuple[bytes, int]:
        if self._applet_fetched is not None and self._answers_applet(data):
            self._applet_fetched = None  # the applet's command is done (its outcome is the terminal's affair)
            return b"", SW_OK
        # raises (and the command stays open) on a response that is not its own
        self.toolkit.terminal_response(data)
        self._toolkit_fetched = False
        self.save_state()
        return b"", SW_OK

    def _answers_applet(self, data: bytes) -> bool:
        """Whether a TERMINAL RESPONSE names the applet's fetched command (its number and type)."""
        assert self._applet_fetched is not None
        try:
            response = decode_terminal_response(data)
            command = decode_proactive(self._applet_fetched)
        except ValueError:
            return False
        return (response.number, response.type) == (command.number, command.type)

    def _envelope(self, channel: int, p1: int, p2: int, data: bytes, le: int | None) -> tuple[bytes, int]:
        if data[:1] == bytes((MO_SMS_CONTROL_TAG,)):  # the USIM's own service 31 (TS 31.111 7.3.2)
            answer = mo_sms_control_answer(self.profile.mo_sms_control, data)
        else:
            answer = self.toolkit.envelope(data)
        if answer:
            self._response = answer
            return b"", 0x6100 | len(answer)
        return b"", SW_OK
