"""The profiles installed on the eUICC and their life cycle, as GSMA SGP.22 sections 2.9 (policy rules), 3.2
(local profile management) and 5.7.16-5.7.18 (EnableProfile, DisableProfile, DeleteProfile) describe it; sans-IO.

Each installed profile is an ISD-P (its own AID) holding an Unprotected Profile Package (uicc/euicc/upp.py) and
the metadata its StoreMetadataRequest gave: ICCID, service provider and profile names, profile class, the policy
rules (pprIds). A profile is Disabled or Enabled; the one transition table below is the only way between the two,
and at most one profile is enabled at a time. Enabling or disabling answers the result codes of SGP.22's
EnableProfileResponse, DisableProfileResponse and DeleteProfileResponse; the profile policy rules refuse with
disallowedByPolicy (PPR1: the profile may not be disabled, which also keeps another from being enabled in its
place; PPR2: it may not be deleted).

The card (bipsim.uicc.card) binds a listener with `bind`: it hears the enabled profile's subscription (ICCID,
IMSI, MNC length, provider name) at once and after every change, and writes it into its files
(docs/protocols.md, "eUICC and the cloud backup"). The store is part of the card's state file through the ISD-R
applet (`to_dict` / `load_dict`, `state_version`).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any

from bipsim.uicc.euicc.upp import MAX_UPP, UppError, check_iccid, upp_fields
from bipsim.uicc.transitions import TransitionTable

# ISD-P AIDs as deployed eUICCs give them: the RSP RID and PIX of the ISD-R with the instance in the 15th byte
# (A0000005591010FFFFFFFF8900001000, ...1100, ...)
ISDP_AID_PREFIX = bytes.fromhex("A0000005591010FFFFFFFF890000")
MAX_PROFILES = 8  # installed profiles the eUICC has room for
MEMORY = 4 * MAX_UPP  # bytes of profile packages it has room for


class ProfileState(Enum):
    """SGP.22 ProfileState: disabled (0), enabled (1)."""

    DISABLED = "disabled"
    ENABLED = "enabled"

    @property
    def code(self) -> int:
        return 1 if self is ProfileState.ENABLED else 0


class ProfileEvent(Enum):
    ENABLE = "enable"
    DISABLE = "disable"


PROFILE_TABLE: TransitionTable[ProfileState, ProfileEvent] = TransitionTable(
    "eUICC profile",
    {
        (ProfileState.DISABLED, ProfileEvent.ENABLE): ProfileState.ENABLED,
        (ProfileState.ENABLED, ProfileEvent.DISABLE): ProfileState.DISABLED,
    },
)


class ProfileClass(IntEnum):
    """SGP.22 ProfileClass."""

    TEST = 0
    PROVISIONING = 1
    OPERATIONAL = 2


# SGP.22 PprIds (a BIT STRING): pprUpdateControl (bit 0), ppr1 (bit 1), ppr2 (bit 2)
PPR_UPDATE_CONTROL = "pprUpdateControl"
PPR1 = "ppr1"  # disabling this profile is not allowed
PPR2 = "ppr2"  # deleting this profile is not allowed
PPR_NAMES = (PPR_UPDATE_CONTROL, PPR1, PPR2)


class EnableResult(IntEnum):
    """SGP.22 EnableProfileResponse enableResult."""

    OK = 0
    ICCID_OR_AID_NOT_FOUND = 1
    PROFILE_NOT_IN_DISABLED_STATE = 2
    DISALLOWED_BY_POLICY = 3
    WRONG_PROFILE_REENABLING = 4
    CAT_BUSY = 5
    UNDEFINED_ERROR = 127


class DisableResult(IntEnum):
    """SGP.22 DisableProfileResponse disableResult."""

    OK = 0
    ICCID_OR_AID_NOT_FOUND = 1
    PROFILE_NOT_IN_ENABLED_STATE = 2
    DISALLOWED_BY_POLICY = 3
    CAT_BUSY = 5
    UNDEFINED_ERROR = 127


class DeleteResult(IntEnum):
    """SGP.22 DeleteProfileResponse deleteResult."""

    OK = 0
    ICCID_OR_AID_NOT_FOUND = 1
    PROFILE_NOT_IN_DISABLED_STATE = 2
    DISALLOWED_BY_POLICY = 3
    UNDEFINED_ERROR = 127


class NicknameResult(IntEnum):
    """SGP.22 SetNicknameResponse setNicknameResult."""

    OK = 0
    ICCID_NOT_FOUND = 1
    UNDEFINED_ERROR = 127


class InstallReason(IntEnum):
    """The SGP.22 ErrorReason values of a ProfileInstallationResult the store itself decides."""

    UNSUPPORTED_PROFILE_CLASS = 6
    ICCID_ALREADY_EXISTS = 9
    INSUFFICIENT_MEMORY = 10
    PE_PROCESSING_ERROR = 12
    DATA_MISMATCH = 13


class StoreError(Exception):
    """An installation the store refuses; `reason` is the SGP.22 ErrorReason of the installation result."""

    def __init__(self, reason: InstallReason, why: str) -> None:
        super().__init__(f"{reason.name.lower()}: {why}")
        self.reason = reason
        self.why = why


@dataclass(frozen=True)
class Subscription:
    """What the enabled profile gives the card's files: EF_ICCID, EF_IMSI, EF_AD's MNC length, EF_SPN's name."""

    iccid: str
    imsi: str
    mnc_length: int
    provider: str


@dataclass
class InstalledProfile:
    """One ISD-P and the profile it holds."""

    iccid: str
    aid: bytes
    state: ProfileState = ProfileState.DISABLED
    name: str = ""
    provider: str = ""
    profile_class: ProfileClass = ProfileClass.OPERATIONAL
    ppr_ids: tuple[str, ...] = ()
    upp: bytes = b""
    nickname: str = ""
    # the StoreMetadataRequest (BF25) as the BPP carried it, for what the ES10 answers read of it besides the
    # fields above (notification configuration, profile owner, icon)
    metadata_der: bytes = b""
    # the SM-DP+ the profile came from (its notifications' address)
    smdp_address: str = ""

    def subscription(self) -> Subscription:
        fields = upp_fields(self.upp)
        return Subscription(self.iccid, str(fields["imsi"]), int(fields.get("mnc_length", 2)), self.provider)

    def to_dict(self) -> dict[str, Any]:
        return {
            "iccid": self.iccid,
            "aid": self.aid.hex().upper(),
            "state": self.state.value,
            "name": self.name,
            "provider": self.provider,
            "class": int(self.profile_class),
            "ppr_ids": list(self.ppr_ids),
            "upp": base64.b64encode(self.upp).decode("ascii"),
            "nickname": self.nickname,
            "metadata": self.metadata_der.hex().upper(),
            "smdp_address": self.smdp_address,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstalledProfile:
        """The profile `to_dict` saved; ValueError (or KeyError, TypeError) when the entry is not one."""
        return cls(
            iccid=check_iccid(data["iccid"]),
            aid=bytes.fromhex(data["aid"]),
            state=ProfileState(data["state"]),
            name=str(data.get("name", "")),
            provider=str(data.get("provider", "")),
            profile_class=ProfileClass(int(data.get("class", ProfileClass.OPERATIONAL))),
            ppr_ids=tuple(str(name) for name in data.get("ppr_ids", ()) if name in PPR_NAMES),
            upp=base64.b64decode(data.get("upp", ""), validate=True),
            nickname=str(data.get("nickname", "")),
            metadata_der=bytes.fromhex(data.get("metadata", "")),
            smdp_address=str(data.get("smdp_address", "")),
        )


Listener = Callable[[Subscription | None], None]


@dataclass
class ProfileStore:
    """The installed profiles of one eUICC (in installation order)."""

    profiles: list[InstalledProfile] = field(default_factory=list)
    next_instance: int = 0x10  # the 15th byte of the next ISD-P AID; AIDs are never reused
    # the profile enabled before a test profile took its place: the only one that may be enabled next
    # (SGP.22 sections 3.2.1 and 5.7.16, wrongProfileReenabling)
    fallback_iccid: str | None = None
    # the fault segment (the card profile's `euicc_fault_segment`) that already aborted an install: a fault fires
    # once per eUICC, so the install retried after the power cycle goes through (docs/protocols.md)
    fault_spent: int | None = None
    # the fault segment set on the running card (0: none), over the card profile's: kept in the card state, so
    # a power cycle does not bring back the profile's fault that was replaced or already fired
    fault_set: int | None = None
    # the card profile's fault segment (0: none) that `fault_set` replaced: a card profile that names another one
    # since is the newer word, and the setting is dropped at the next start (IsdR.load_dict); None in a state
    # file written before it was kept (the setting stands then, as it did)
    fault_over: int | None = None
    state_version: int = 0
    _listeners: list[Listener] = field(default_factory=list, repr=False)

    # --- reading ------------------------------------------------------------------------------------------------

    def find(self, *, iccid: str | None = None, aid: bytes | None = None) -> InstalledProfile | None:
        """The profile with this ICCID (digits) or ISD-P AID; None when there is none."""
        for profile in self.profiles:
            if (iccid is not None and profile.iccid == iccid) or (aid is not None and profile.aid == aid):
                return profile
        return None

    def enabled(self) -> InstalledProfile | None:
        return next((p for p in self.profiles if p.state is ProfileState.ENABLED), None)

    def subscription(self) -> Subscription | None:
        """The enabled profile's subscription; None when no profile is enabled (or its package is unreadable)."""
        profile = self.enabled()
        if profile is None:
            return None
        try:
            return profile.subscription()
        except UppError:
            return None

    def memory_used(self) -> int:
        return sum(len(p.upp) for p in self.profiles)

    # --- installation -------------------------------------------------------------------------------------------

    def check_install(self, iccid: str, profile_class: int = ProfileClass.OPERATIONAL) -> None:
        """Raises StoreError when a profile of this ICCID and class cannot be installed (before its package is
        loaded: what StoreMetadata already tells, SGP.22 section 5.5.3)."""
        if profile_class not in tuple(ProfileClass):
            raise StoreError(InstallReason.UNSUPPORTED_PROFILE_CLASS, f"profile class {profile_class}")
        if self.find(iccid=iccid) is not None:
            raise StoreError(InstallReason.ICCID_ALREADY_EXISTS, f"ICCID {iccid} is installed")
        if len(self.profiles) >= MAX_PROFILES:
            raise StoreError(InstallReason.INSUFFICIENT_MEMORY, f"{MAX_PROFILES} profiles are installed")

    def install(
        self,
        *,
        iccid: str,
        upp: bytes,
        name: str = "",
        provider: str = "",
        profile_class: int = ProfileClass.OPERATIONAL,
        ppr_ids: tuple[str, ...] = (),
        metadata_der: bytes = b"",
        smdp_address: str = "",
    ) -> InstalledProfile:
        """Adds a disabled profile in a new ISD-P, all or nothing; StoreError (nothing changed) when the store
        refuses it: ICCID installed, no room, a package that is not a UPP or whose ICCID is not the metadata's."""
        self.check_install(iccid, profile_class)
        if self.memory_used() + len(upp) > MEMORY:
            raise StoreError(InstallReason.INSUFFICIENT_MEMORY, f"{len(upp)} bytes do not fit")
        try:
            fields = upp_fields(upp)
        except UppError as exc:
            raise StoreError(InstallReason.PE_PROCESSING_ERROR, str(exc)) from None
        if fields["iccid"] != iccid:
            # SGP.22 section 5.5.3: the package's ICCID must be the metadata's
            raise StoreError(InstallReason.DATA_MISMATCH, f"package ICCID {fields['iccid']} is not {iccid}")
        if self.next_instance > 0xFF:
            raise StoreError(InstallReason.INSUFFICIENT_MEMORY, "no ISD-P AID left")
        profile = InstalledProfile(
            iccid=iccid,
            aid=ISDP_AID_PREFIX + bytes((self.next_instance, 0x00)),
            name=name,
            provider=provider,
            profile_class=ProfileClass(profile_class),
            ppr_ids=tuple(p for p in PPR_NAMES if p in ppr_ids),
            upp=upp,
            metadata_der=metadata_der,
            smdp_address=smdp_address,
        )
        self.next_instance += 1
        self.profiles.append(profile)
        self._changed()
        return profile

    # --- local profile management (SGP.22 section 3.2) ---------------------------------------------------------

    def enable(self, *, iccid: str | None = None, aid: bytes | None = None) -> EnableResult:
        """Enables the profile, disabling the one enabled before it (SGP.22 section 3.2.1)."""
        target = self.find(iccid=iccid, aid=aid)
        if target is None:
            return EnableResult.ICCID_OR_AID_NOT_FOUND
        if not PROFILE_TABLE.allows(target.state, ProfileEvent.ENABLE):
            return EnableResult.PROFILE_NOT_IN_DISABLED_STATE
        current = self.enabled()
        if current is not None and PPR1 in current.ppr_ids:
            return EnableResult.DISALLOWED_BY_POLICY  # enabling another one would disable it
        if (
            current is not None
            and current.profile_class is ProfileClass.TEST
            and self.fallback_iccid is not None
            and target.iccid != self.fallback_iccid
        ):
            return EnableResult.WRONG_PROFILE_REENABLING
        if target.profile_class is ProfileClass.TEST and current is not None:
            if current.profile_class is not ProfileClass.TEST:
                self.fallback_iccid = current.iccid
        elif target.profile_class is not ProfileClass.TEST:
            self.fallback_iccid = None
        if current is not None:
            current.state = PROFILE_TABLE.next(current.state, ProfileEvent.DISABLE)
        target.state = PROFILE_TABLE.next(target.state, ProfileEvent.ENABLE)
        self._changed(subscription=True)
        return EnableResult.OK

    def disable(self, *, iccid: str | None = None, aid: bytes | None = None) -> DisableResult:
        target = self.find(iccid=iccid, aid=aid)
        if target is None:
            return DisableResult.ICCID_OR_AID_NOT_FOUND
        if not PROFILE_TABLE.allows(target.state, ProfileEvent.DISABLE):
            return DisableResult.PROFILE_NOT_IN_ENABLED_STATE
        if PPR1 in target.ppr_ids:
            return DisableResult.DISALLOWED_BY_POLICY
        target.state = PROFILE_TABLE.next(target.state, ProfileEvent.DISABLE)
        self._changed(subscription=True)
        return DisableResult.OK

    def delete(self, *, iccid: str | None = None, aid: bytes | None = None) -> DeleteResult:
        target = self.find(iccid=iccid, aid=aid)
        if target is None:
            return DeleteResult.ICCID_OR_AID_NOT_FOUND
        if target.state is not ProfileState.DISABLED:
            return DeleteResult.PROFILE_NOT_IN_DISABLED_STATE
        if PPR2 in target.ppr_ids:
            return DeleteResult.DISALLOWED_BY_POLICY
        self.profiles.remove(target)
        if self.fallback_iccid == target.iccid:
            self.fallback_iccid = None
        self._changed()
        return DeleteResult.OK

    def set_nickname(self, iccid: str, nickname: str) -> NicknameResult:
        """SGP.22 section 5.7.21 SetNickname (at most 64 characters)."""
        target = self.find(iccid=iccid)
        if target is None:
            return NicknameResult.ICCID_NOT_FOUND
        if len(nickname) > 64:
            return NicknameResult.UNDEFINED_ERROR
        target.nickname = nickname
        self._changed()
        return NicknameResult.OK

    # --- the fault hook ---------------------------------------------------------------------------------------

    def fault_armed(self, segment: int) -> bool:
        """Whether the fault at `segment` has not fired on this eUICC yet."""
        return self.fault_spent != segment

    def spend_fault(self, segment: int) -> None:
        self.fault_spent = segment
        self._changed()

    def set_fault(self, segment: int | None, *, over: int = 0) -> None:
        """The fault segment set on the running card (None or 0: no fault), over the card profile's `over`."""
        self.fault_set = segment if segment and segment > 0 else 0
        self.fault_over = over
        self._changed()

    def drop_fault_setting(self) -> None:
        """The running card's setting gives way to the card profile's segment again."""
        if self.fault_set is not None or self.fault_over is not None:
            self.fault_set = self.fault_over = None
            self._changed()

    def rearm_fault(self) -> None:
        """A fault set again (the CP's card-control 'euicc-fault'): it fires once more."""
        if self.fault_spent is not None:
            self.fault_spent = None
            self._changed()

    # --- the card's files -------------------------------------------------------------------------------------

    def bind(self, listener: Listener) -> None:
        """`listener` hears the enabled subscription now when there is one (a card whose state file lost its
        files gets them back), and whenever it changes (the card writes its files). With no profile enabled the
        card's files are left as they are at binding: what the terminal or an OTA session wrote there stays."""
        self._listeners.append(listener)
        now = self.subscription()
        if now is not None:
            listener(now)

    def _changed(self, *, subscription: bool = False) -> None:
        self.state_version += 1
        if subscription:
            now = self.subscription()
            for listener in self._listeners:
                listener(now)

    # --- state ------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "profiles": [p.to_dict() for p in self.profiles],
            "next_instance": self.next_instance,
            "fallback_iccid": self.fallback_iccid,
            "fault_spent": self.fault_spent,
            "fault_set": self.fault_set,
            "fault_over": self.fault_over,
        }

    def load_dict(self, state: dict[str, Any]) -> None:
        """Restores `to_dict`'s output; an entry that is not a profile is dropped (never a traceback at boot),
        and of two entries enabled only the first stays so."""
        profiles: list[InstalledProfile] = []
        for entry in state.get("profiles", ()):
            try:
                profile = InstalledProfile.from_dict(entry)
            except (KeyError, TypeError, ValueError, UppError):
                continue
            if profile.state is ProfileState.ENABLED and any(
                p.state is ProfileState.ENABLED for p in profiles
            ):
                profile.state = PROFILE_TABLE.next(profile.state, ProfileEvent.DISABLE)
            if all(p.iccid != profile.iccid and p.aid != profile.aid for p in profiles):
                profiles.append(profile)
        self.profiles = profiles
        instance = state.get("next_instance", 0x10)
        used = max((p.aid[-2] + 1 for p in profiles if p.aid[:-2] == ISDP_AID_PREFIX), default=0x10)
        self.next_instance = max(instance if isinstance(instance, int) else 0x10, used)
        fallback = state.get("fallback_iccid")
        self.fallback_iccid = fallback if isinstance(fallback, str) and self.find(iccid=fallback) else None
        spent = state.get("fault_spent")
        self.fault_spent = spent if isinstance(spent, int) and not isinstance(spent, bool) else None
        running = state.get("fault_set")
        self.fault_set = running if isinstance(running, int) and not isinstance(running, bool) else None
        over = state.get("fault_over")
        self.fault_over = over if isinstance(over, int) and not isinstance(over, bool) else None
        self._changed(subscription=True)
