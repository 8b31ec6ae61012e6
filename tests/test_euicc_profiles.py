"""The eUICC's installed profiles (uicc/euicc/profile_store.py, GSMA SGP.22 sections 2.9, 3.2, 5.7.16-5.7.18),
the profile package format (uicc/euicc/upp.py), the built-in card profile `euicc`, and the card hook that makes
the enabled profile the card's subscription (EF_ICCID, EF_IMSI) across a restart. In-process: the card's APDUs
straight into SimCard, no CP, no sockets.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bipsim.cp.commands import decode_imsi
from bipsim.cp.modem import card_control_answer
from bipsim.errors import CliError
from bipsim.uicc.applets import REGISTRY, Applet
from bipsim.uicc.card import SimCard
from bipsim.uicc.euicc.profile_store import (
    PPR1,
    PPR2,
    DeleteResult,
    DisableResult,
    EnableResult,
    InstallReason,
    NicknameResult,
    ProfileClass,
    ProfileState,
    ProfileStore,
    StoreError,
    Subscription,
)
from bipsim.uicc.euicc.upp import (
    UppError,
    builtin_upps,
    decode_upp,
    encode_upp,
    iccid_bytes,
    iccid_digits,
)
from bipsim.uicc.profile import CardProfile, load_profile
from bipsim.uicc.sim_transport import SimulatedCard

OP1 = "8944476500001234567"
OP2 = "8944476500001234575"


def upp(iccid: str, imsi: str = "001010000000999") -> bytes:
    return encode_upp(f'iccid = "{iccid}"\nimsi = "{imsi}"\n')


# --- the profile package ---------------------------------------------------------------------------------------


def test_builtin_packages_are_card_profiles_with_their_own_identity() -> None:
    packages = builtin_upps()
    op1 = decode_upp(packages["op1"])
    default = load_profile()
    assert (op1.iccid, op1.imsi, op1.mnc_length) == (OP1, "001010000000123", 2)
    assert op1.imsi != default.imsi and op1.iccid != default.iccid
    assert decode_upp(packages["op2"]).imsi not in (op1.imsi, default.imsi)
    assert packages["op1"].decode("utf-8").startswith("# bipsim built-in operator profile op1")


def test_iccid_coding_is_ef_iccid_s() -> None:
    # TS 102 221 section 13.2: nibble-swapped BCD, F-padded; 89 44 47 65 ... 5 67 -> 98 44 74 56 ... 65 F7
    assert iccid_bytes(OP1) == bytes.fromhex("98447456000021436 5F7".replace(" ", ""))
    assert iccid_digits(iccid_bytes(OP1)) == OP1
    with pytest.raises(UppError):
        iccid_digits(b"\x98")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b'iccid = "8944476500001234567"\nimsi = ', "not TOML"),
        (b'iccid = "8944476500001234567"\n', "missing imsi"),
        (b'iccid = "89"\nimsi = "001010000000123"\n', "18 to 20 digits"),
        (b'iccid = "8944476500001234567"\nimsi = "00101x"\n', "6 to 15 digits"),
        (b'iccid = "8944476500001234567"\nimsi = "001010000000123"\napplets = ["isd-r"]\n', "applets"),
        (b'iccid = "8944476500001234567"\nimsi = "001010000000123"\nmnc_length = 4\n', "use 2 or 3"),
    ],
)
def test_bad_packages_say_why(data: bytes, why: str) -> None:
    with pytest.raises(UppError, match=why):
        decode_upp(data)


def test_a_comment_pads_a_package_to_an_exact_size() -> None:
    base = builtin_upps()["op1"]
    padded = encode_upp(base.decode() + "#" * (1023 - len(base)) + "\n")
    assert len(padded) == 1024 and decode_upp(padded).iccid == OP1


# --- the store -------------------------------------------------------------------------------------------------


def test_install_enable_disable_delete_with_sgp22_result_codes() -> None:
    store = ProfileStore()
    first = store.install(iccid=OP1, upp=upp(OP1), name="op1", provider="Operator One")
    second = store.install(iccid=OP2, upp=upp(OP2))
    assert first.aid == bytes.fromhex("A0000005591010FFFFFFFF8900001000")
    assert second.aid == bytes.fromhex("A0000005591010FFFFFFFF8900001100")
    assert store.enable(iccid="8944476500009999999") is EnableResult.ICCID_OR_AID_NOT_FOUND
    assert store.enable(aid=first.aid) is EnableResult.OK
    assert store.enable(iccid=OP1) is EnableResult.PROFILE_NOT_IN_DISABLED_STATE
    assert store.delete(iccid=OP1) is DeleteResult.PROFILE_NOT_IN_DISABLED_STATE
    assert store.enable(iccid=OP2) is EnableResult.OK  # the enabled one is disabled in its place
    assert [p.state for p in store.profiles] == [ProfileState.DISABLED, ProfileState.ENABLED]
    assert store.disable(iccid=OP1) is DisableResult.PROFILE_NOT_IN_ENABLED_STATE
    assert store.disable(iccid=OP2) is DisableResult.OK and store.enabled() is None
    assert store.delete(iccid=OP2) is DeleteResult.OK
    assert store.delete(iccid=OP2) is DeleteResult.ICCID_OR_AID_NOT_FOUND
    again = store.install(iccid=OP2, upp=upp(OP2))
    assert again.aid == bytes.fromhex("A0000005591010FFFFFFFF8900001200")  # AIDs are never reused
    assert store.set_nickname(OP1, "work") is NicknameResult.OK and store.profiles[0].nickname == "work"
    assert store.set_nickname("8944476500009999999", "x") is NicknameResult.ICCID_NOT_FOUND


def test_profile_policy_rules() -> None:
    store = ProfileStore()
    store.install(iccid=OP1, upp=upp(OP1), ppr_ids=(PPR1,))
    store.install(iccid=OP2, upp=upp(OP2), ppr_ids=(PPR2,))
    assert store.enable(iccid=OP1) is EnableResult.OK
    # PPR1: the profile may not be disabled, so nothing else may be enabled in its place either
    assert store.disable(iccid=OP1) is DisableResult.DISALLOWED_BY_POLICY
    assert store.enable(iccid=OP2) is EnableResult.DISALLOWED_BY_POLICY
    assert store.enabled() is not None and store.enabled().iccid == OP1  # type: ignore[union-attr]
    assert store.delete(iccid=OP2) is DeleteResult.DISALLOWED_BY_POLICY  # PPR2: it may not be deleted
    assert len(store.profiles) == 2


def test_after_a_test_profile_only_the_previous_one_comes_back() -> None:
    store = ProfileStore()
    store.install(iccid=OP1, upp=upp(OP1))
    store.install(iccid=OP2, upp=upp(OP2))
    store.install(
        iccid="8944476500001234583", upp=upp("8944476500001234583"), profile_class=ProfileClass.TEST
    )
    store.enable(iccid=OP1)
    assert store.enable(iccid="8944476500001234583") is EnableResult.OK
    assert store.enable(iccid=OP2) is EnableResult.WRONG_PROFILE_REENABLING
    assert store.enable(iccid=OP1) is EnableResult.OK
    assert store.enable(iccid=OP2) is EnableResult.OK


@pytest.mark.parametrize(
    ("iccid", "package", "kwargs", "reason"),
    [
        (OP1, upp(OP1), {"profile_class": 7}, InstallReason.UNSUPPORTED_PROFILE_CLASS),
        (OP1, upp(OP2), {}, InstallReason.DATA_MISMATCH),
        (OP1, b"not toml =", {}, InstallReason.PE_PROCESSING_ERROR),
        (OP2, upp(OP2), {}, InstallReason.ICCID_ALREADY_EXISTS),
    ],
)
def test_refused_installs_change_nothing(
    iccid: str, package: bytes, kwargs: dict[str, Any], reason: int
) -> None:
    store = ProfileStore()
    store.install(iccid=OP2, upp=upp(OP2))
    before = store.to_dict()
    with pytest.raises(StoreError) as caught:
        store.install(iccid=iccid, upp=package, **kwargs)
    assert caught.value.reason == reason and store.to_dict() == before


def test_no_room_is_insufficient_memory() -> None:
    store = ProfileStore()
    for n in range(8):
        store.install(iccid=f"89444765000012345{n:02d}", upp=upp(f"89444765000012345{n:02d}"))
    with pytest.raises(StoreError) as caught:
        store.install(iccid=OP1, upp=upp(OP1))
    assert caught.value.reason is InstallReason.INSUFFICIENT_MEMORY


def test_state_round_trip_and_damaged_entries() -> None:
    store = ProfileStore()
    store.install(iccid=OP1, upp=upp(OP1), ppr_ids=(PPR2,), metadata_der=b"\xbf\x25\x00")
    store.enable(iccid=OP1)
    store.spend_fault(5)
    saved = store.to_dict()
    restored = ProfileStore()
    restored.load_dict(saved)
    assert restored.to_dict() == saved and not restored.fault_armed(5) and restored.fault_armed(4)
    damaged = dict(saved)
    twin = dict(saved["profiles"][0], iccid=OP2, aid="A0000005591010FFFFFFFF8900001100", upp="")
    damaged["profiles"] = [saved["profiles"][0], {"iccid": "x"}, "junk", twin]
    restored.load_dict(damaged)
    # the broken entries are dropped, never a traceback; of two enabled profiles the first stays so
    assert [(p.iccid, p.state) for p in restored.profiles] == [
        (OP1, ProfileState.ENABLED),
        (OP2, ProfileState.DISABLED),
    ]
    assert restored.install(iccid="8944476500001234583", upp=upp("8944476500001234583")).aid[-2] == 0x12


# --- the card --------------------------------------------------------------------------------------------------


class FakeIsdR(Applet):
    """An applet holding a ProfileStore as the ISD-R does (the card looks for `profile_store`)."""

    name = "test-euicc"

    def __init__(self) -> None:
        super().__init__(bytes.fromhex("A0000005591010FFFFFFFF8900000100"))
        self.profile_store = ProfileStore()
        self.fault_at_segment: int | None = None

    @property
    def state_version(self) -> int:
        return self.profile_store.state_version

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.profile_store.to_dict()}

    def load_dict(self, state: dict[str, Any]) -> None:
        self.profile_store.load_dict(state["store"])


@pytest.fixture
def euicc_profile() -> CardProfile:
    REGISTRY.setdefault("test-euicc", lambda: [FakeIsdR()])
    return load_profile().with_overrides(applets=("test-euicc",))


def store_of(card: SimCard) -> ProfileStore:
    (applet,) = card.applets.applets
    assert isinstance(applet, FakeIsdR)
    return applet.profile_store


def read(card: SimCard, path: str) -> bytes:
    """SELECT by path from the MF and READ BINARY, as the CP reads EF_IMSI for AT+CIMI."""
    out = card.process(bytes.fromhex(f"00A4080C{len(path) // 2:02X}{path}"))
    assert out[-2:] == b"\x90\x00", out.hex()
    out = card.process(bytes.fromhex("00B00000"))
    assert out[-2:] == b"\x90\x00", out.hex()
    return out[:-2]


def test_enabled_profile_is_the_card_subscription_across_a_restart(
    euicc_profile: CardProfile, tmp_path: Path
) -> None:
    state = tmp_path / "card.json"
    card = SimCard(euicc_profile, state_path=state)
    assert decode_imsi(read(card, "7FF06F07")) == euicc_profile.imsi
    store = store_of(card)
    store.install(iccid=OP1, upp=builtin_upps()["op1"], provider="Operator One")
    assert decode_imsi(read(card, "7FF06F07")) == euicc_profile.imsi  # installed is not enabled
    assert store.enable(iccid=OP1) is EnableResult.OK
    assert decode_imsi(read(card, "7FF06F07")) == "001010000000123"
    assert read(card, "2FE2") == iccid_bytes(OP1)
    assert read(card, "7FF06F46") == b"\x00Operator One\xff\xff\xff\xff"
    card.save_state()  # what the card does after an APDU that changed an applet
    restarted = SimCard(euicc_profile, state_path=state)
    assert decode_imsi(read(restarted, "7FF06F07")) == "001010000000123"
    assert store_of(restarted).enabled() is not None
    assert store_of(restarted).disable(iccid=OP1) is DisableResult.OK
    assert decode_imsi(read(restarted, "7FF06F07")) == euicc_profile.imsi  # the card's own again
    assert read(restarted, "2FE2")[:2] == bytes.fromhex("9888")


def test_with_no_profile_enabled_the_card_files_stay_as_written(
    euicc_profile: CardProfile, tmp_path: Path
) -> None:
    state = tmp_path / "card.json"
    card = SimCard(euicc_profile, state_path=state)
    card.fs.usim.children[0x6F46].data[1:4] = b"OTA"  # as a remote file management session may write it
    card.save_state()
    assert read(SimCard(euicc_profile, state_path=state), "7FF06F46")[1:4] == b"OTA"


def test_subscription_listener_hears_changes_only() -> None:
    store = ProfileStore()
    heard: list[Subscription | None] = []
    store.bind(heard.append)
    store.install(iccid=OP1, upp=builtin_upps()["op1"])
    store.enable(iccid=OP1)
    store.set_nickname(OP1, "x")
    assert heard == [Subscription(OP1, "001010000000123", 2, "")]
    late: list[Subscription | None] = []
    store.bind(late.append)  # bound while a profile is enabled: hears it at once
    store.disable(iccid=OP1)
    assert late == [Subscription(OP1, "001010000000123", 2, ""), None]


def test_fault_set_on_a_running_card_through_card_control(euicc_profile: CardProfile) -> None:
    card = SimCard(euicc_profile)
    store = store_of(card)
    store.spend_fault(3)
    slot = SimpleNamespace(number=1, transport=SimulatedCard(card))
    assert card_control_answer("euicc-fault 1 3", [slot]) == "ok euicc-fault 1 3"  # type: ignore[list-item]
    applet = card.applets.applets[0]
    assert isinstance(applet, FakeIsdR) and applet.fault_at_segment == 3 and store.fault_armed(3)
    assert card_control_answer("euicc-fault 1 0", [slot]) == "ok euicc-fault 1 0"  # type: ignore[list-item]
    assert applet.fault_at_segment is None
    plain = SimpleNamespace(number=2, transport=SimulatedCard(SimCard(load_profile())))
    assert card_control_answer("euicc-fault 2 3", [plain]).startswith("error")  # type: ignore[list-item]


# --- the built-in card profile ---------------------------------------------------------------------------------


def test_builtin_euicc_card_profile(tmp_path: Path) -> None:
    profile = load_profile("euicc")
    assert profile.applets == ("isd-r",)
    assert profile.euicc_eid == "89049032123451234512345678901235"
    assert profile.euicc_keep_otpk is True and profile.euicc_fault_segment == 0
    assert profile.iccid == load_profile().iccid  # otherwise the default card
    bad = tmp_path / "bad.toml"
    bad.write_text('applets = ["isd-r"]\neuicc_fault_segment = -1\n')
    with pytest.raises(CliError, match="euicc_fault_segment"):
        load_profile(str(bad))
    bad.write_text('euicc_eid = "123"\n')
    with pytest.raises(CliError, match="euicc_eid"):
        load_profile(str(bad))
    custom = tmp_path / "nokey.toml"
    custom.write_text('applets = ["isd-r"]\neuicc_keep_otpk = false\neuicc_fault_segment = 4\n')
    assert (load_profile(str(custom)).euicc_keep_otpk, load_profile(str(custom)).euicc_fault_segment) == (
        False,
        4,
    )
