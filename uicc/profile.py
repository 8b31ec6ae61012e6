"""The card profile: identity, keys, OTA server and BIP settings of one simulated card, from a TOML or JSON file.

The built-in default is uicc/default_profile.toml (documented there, key by key). A profile file may override any
subset of its keys; unknown keys are an error so a typo never goes unnoticed.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from bipsim.errors import CliError


@dataclass(frozen=True)
class CardProfile:
    iccid: str = "8988211000000000001"
    imsi: str = "001010123456789"
    mnc_length: int = 2
    # OTA (GlobalPlatform Amd B) session
    ota_host: str = "127.0.0.1"
    ota_port: int = 4443
    ota_tls: bool = True
    psk_identity: str = "bipsim-card-1"
    psk_hex: str = "000102030405060708090A0B0C0D0E0F"
    admin_path: str = "/server/adminagent"
    # BIP channel the card opens (TS 102 223 OPEN CHANNEL)
    bearer_type: int = 3
    bearer_parameters_hex: str = ""
    buffer_size: int = 1400
    apn: str = ""
    login: str = ""
    password: str = ""
    link_mode: str = "background"  # on-demand | immediate | background
    trigger: str = "power-on"  # power-on | manual | sms
    # OTA key set for the SMS-PP trigger (TS 102 225 secured packets; uicc/ota_trigger.py)
    ota_kvn: int = 1
    ota_kic_hex: str = "101112131415161718191A1B1C1D1E1F"
    ota_kid_hex: str = "202122232425262728292A2B2C2D2E2F"
    ota_tar_hex: str = "000000"
    ota_require_cc: bool = True
    ota_require_cipher: bool = False
    ota_require_counter: bool = True
    # applets and logical channels (uicc/applets/, docs/protocols.md "OMAPI and the ARA-M on the card")
    logical_channels: int = 19  # channels besides the basic one that MANAGE CHANNEL opens (TS 102 221: 1..19)
    applets: tuple[str, ...] = ()  # applet names of bipsim.uicc.applets.REGISTRY, e.g. "cts-echo"
    ara_m: bool = False  # the ARA-M of GlobalPlatform SE Access Control is on the card
    # its rules, inline tables (aid, hash, apdu, nfc, package, perm)
    ara_m_rules: tuple[dict[str, Any], ...] = ()
    ara_m_malformed: bool = False  # it serves a broken Response-ALL-REF-AR-DO
    arf: bool = False  # the same rules as PKCS#15 access rule files (uicc/applets/arf.py)
    # the card's PINs (TS 102 221 section 9.5; VERIFY PIN key references 01, 81 and 0A), 4 to 8 digits each
    pin1: str = "1234"
    pin2: str = "5678"
    adm1: str = "12345678"
    # the UNBLOCK PINs of PIN1 and PIN2 (PUK1, PUK2; TS 102 221 section 11.1.13), 8 digits; the attempts of each
    # before it blocks; and whether PIN1 is enabled at issue (then the card boots into "SIM PIN", 27.007 8.3)
    puk1: str = "12345678"
    puk2: str = "87654321"
    pin1_attempts: int = 3
    pin2_attempts: int = 3
    puk1_attempts: int = 10
    puk2_attempts: int = 10
    pin1_enabled: bool = False
    # the SIM toolkit menu applet (uicc/usat_menu.py): SET UP MENU once a TERMINAL PROFILE declares it
    usat_menu: bool = False
    # the phonebook and messages (uicc/phonebook.py; docs/protocols.md "Phonebook"): EF_ADN's record count, its
    # contacts (written to DF_TELECOM's EF_ADN and the USIM phonebook's), EF_FDN, EF_SDN and EF_MSISDN entries, as
    # inline tables {name, number}; EF_SMS records as hex strings or tables {status, pdu}
    adn_records: int = 50
    contacts: tuple[dict[str, Any], ...] = ()
    fdn: tuple[dict[str, Any], ...] = ()
    sdn: tuple[dict[str, Any], ...] = ()
    msisdn: tuple[dict[str, Any], ...] = ()
    sms: tuple[Any, ...] = ()
    # the answer to MO SHORT MESSAGE CONTROL (uicc/mo_sms_control.py, TS 31.111 7.3.2): allow, refuse, or
    # modify:<sc>,<destination> (allowed with these addresses instead; either may be empty)
    mo_sms_control: str = "allow"
    # the SMS service centre number in EF_SMSP record 1 (TS 31.102 4.2.27; +CSCA? reads it): "+" and up to 20
    # digits, or "" for none
    smsp_sca: str = ""
    # the eUICC (applet "isd-r"; docs/protocols.md "eUICC and the cloud backup", GSMA SGP.22): its EID (32 digits,
    # "" for the test PKI's), the folder of its test PKI ("" for the per-user one), whether a failed install keeps
    # the download session and its one-time key otSK.EUICC.ECKA (also across a power cycle), the BPP segment
    # (from 1) at which an install aborts once with installFailedDueToInterruption (0: never), and the SM-DP+
    # address GetEUICCConfiguredAddresses answers ("" for none)
    euicc_eid: str = ""
    euicc_pki: str = ""
    euicc_keep_otpk: bool = True
    euicc_fault_segment: int = 0
    euicc_default_dp_address: str = ""

    @property
    def ota_keyset(self) -> tuple[int, bytes, bytes]:
        """(key version number, KIc, KID) of the profile's OTA key set."""
        return self.ota_kvn, bytes.fromhex(self.ota_kic_hex), bytes.fromhex(self.ota_kid_hex)

    @property
    def psk(self) -> bytes:
        return bytes.fromhex(self.psk_hex)

    def with_overrides(self, **changes: Any) -> CardProfile:
        return replace(self, **changes)


KNOWN = {f.name for f in fields(CardProfile)}
TRIGGERS = ("power-on", "sms", "manual")


def _from_mapping(data: dict[str, Any], where: str) -> CardProfile:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):  # TOML tables ([ota], [bip]) are just grouping
            flat.update(value)
        else:
            flat[key] = value
    unknown = sorted(set(flat) - KNOWN)
    if unknown:
        raise CliError(f"{where}: unknown profile keys: {', '.join(unknown)}")
    for key in ("applets", "ara_m_rules", *PHONEBOOK_KEYS):  # TOML arrays; the profile is frozen, so tuples
        if key in flat:
            if not isinstance(flat[key], list | tuple):
                raise CliError(f"{where}: {key} must be an array")
            flat[key] = tuple(flat[key])
    profile = CardProfile(**flat)
    if profile.trigger not in TRIGGERS:
        raise CliError(f"{where}: trigger = {profile.trigger!r}: use one of {', '.join(TRIGGERS)}")
    for key in ("pin1", "pin2", "adm1"):
        pin = getattr(profile, key)
        if not (isinstance(pin, str) and pin.isdigit() and 4 <= len(pin) <= 8):
            raise CliError(f"{where}: {key} = {pin!r}: use 4 to 8 digits")
    for key in ("puk1", "puk2"):
        puk = getattr(profile, key)
        if not (isinstance(puk, str) and puk.isdigit() and len(puk) == 8):
            raise CliError(f"{where}: {key} = {puk!r}: use 8 digits")
    for key in ("pin1_attempts", "pin2_attempts", "puk1_attempts", "puk2_attempts"):
        count = getattr(profile, key)
        if not (isinstance(count, int) and not isinstance(count, bool) and 1 <= count <= 15):
            raise CliError(f"{where}: {key} = {count!r}: use 1..15 (the X of 63CX)")
    _check_applets(profile, where)
    _check_euicc(profile, where)
    _check_phonebook(profile, where)
    from bipsim.uicc.mo_sms_control import check_setting

    sca = str(profile.smsp_sca)
    if sca and not (sca.removeprefix("+").isdigit() and sca.isascii() and len(sca.removeprefix("+")) <= 20):
        raise CliError(f"{where}: smsp_sca = {sca!r}: use + and up to 20 digits, or digits")
    try:
        check_setting(str(profile.mo_sms_control))
    except ValueError as exc:
        raise CliError(f"{where}: mo_sms_control = {profile.mo_sms_control!r}: {exc}") from None
    return profile


PHONEBOOK_KEYS = ("contacts", "fdn", "sdn", "msisdn", "sms")


def _check_phonebook(profile: CardProfile, where: str) -> None:
    from bipsim.uicc.phonebook import PhonebookError, profile_entries, sms_records

    if not isinstance(profile.adn_records, int) or not 1 <= profile.adn_records <= 254:
        raise CliError(f"{where}: adn_records = {profile.adn_records!r}: use 1..254")
    try:
        profile_entries(profile)
        sms_records(profile.sms)
    except PhonebookError as exc:
        raise CliError(f"{where}: {exc}") from exc


def _check_euicc(profile: CardProfile, where: str) -> None:
    eid = profile.euicc_eid
    if not isinstance(eid, str) or (eid and not (eid.isascii() and eid.isdigit() and len(eid) == 32)):
        raise CliError(f"{where}: euicc_eid = {eid!r}: use 32 digits (SGP.29), or an empty string")
    fault = profile.euicc_fault_segment
    if not isinstance(fault, int) or isinstance(fault, bool) or fault < 0:
        raise CliError(f"{where}: euicc_fault_segment = {fault!r}: use a segment from 1, or 0 for none")
    if not isinstance(profile.euicc_keep_otpk, bool):
        raise CliError(f"{where}: euicc_keep_otpk = {profile.euicc_keep_otpk!r}: use true or false")


def _check_applets(profile: CardProfile, where: str) -> None:
    from bipsim.uicc.applets import applet_names
    from bipsim.uicc.applets.ara_m import parse_rule

    if not isinstance(profile.logical_channels, int) or not 0 <= profile.logical_channels <= 19:
        raise CliError(f"{where}: logical_channels = {profile.logical_channels!r}: use 0..19")
    unknown = [name for name in profile.applets if name not in applet_names()]
    if unknown:
        raise CliError(f"{where}: unknown applets {unknown}: use some of {', '.join(applet_names())}")
    for number, entry in enumerate(profile.ara_m_rules, 1):
        if not isinstance(entry, dict):
            raise CliError(f"{where}: ara_m_rules #{number} is not a table")
        try:
            parse_rule(entry)
        except ValueError as exc:
            raise CliError(f"{where}: ara_m_rules #{number}: {exc}") from exc


def profile_names() -> list[str]:
    """The built-in profiles `--profile NAME` takes: `default` and the files of uicc/profiles/."""
    folder = resources.files("bipsim.uicc.profiles")
    names = [entry.name[: -len(".toml")] for entry in folder.iterdir() if entry.name.endswith(".toml")]
    return sorted({"default", *names})


def load_profile(path: str | Path | None = None) -> CardProfile:
    """The built-in default, overridden by the keys of `path` (TOML, or JSON when it ends in .json). `path` may
    also name a built-in profile (`profile_names()`) when no file of that name exists."""
    default_text = resources.files("bipsim.uicc").joinpath("default_profile.toml").read_text(encoding="utf-8")
    base = _from_mapping(tomllib.loads(default_text), "default_profile.toml")
    if path is None:
        return base
    file = Path(path)
    if not file.exists() and isinstance(path, str) and path in profile_names():
        if path == "default":
            return base
        text = resources.files("bipsim.uicc.profiles").joinpath(f"{path}.toml").read_text(encoding="utf-8")
        data = tomllib.loads(text)
        override = _from_mapping(data, f"built-in profile {path}")
        changed = {f.name: getattr(override, f.name) for f in fields(CardProfile) if f.name in _keys(data)}
        return replace(base, **changed)
    if not file.exists() and isinstance(path, str) and "/" not in path and not file.suffix:
        names = ", ".join(profile_names())
        raise CliError(f"card profile {path}: no such file nor built-in profile ({names})")
    try:
        text = file.read_text(encoding="utf-8")
        data = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except FileNotFoundError as exc:
        raise CliError(f"card profile {file} does not exist") from exc
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise CliError(f"card profile {file}: {exc}") from exc
    override = _from_mapping(data, str(file))
    changed = {f.name: getattr(override, f.name) for f in fields(CardProfile) if f.name in _keys(data)}
    return replace(base, **changed)


def _keys(data: dict[str, Any]) -> set[str]:
    keys: set[str] = set()
    for key, value in data.items():
        keys.update(value) if isinstance(value, dict) else keys.add(key)
    return keys


def dump_profile(profile: CardProfile) -> str:
    """A TOML text of the profile (for the demo to hand a tailored profile to the CP process)."""
    lines = []
    for f in fields(CardProfile):
        value = getattr(profile, f.name)
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        elif isinstance(value, tuple):  # applets, ara_m_rules: arrays of strings or of inline tables
            text = "[" + ", ".join(_toml_inline(item) for item in value) + "]"
        else:
            text = json.dumps(value)
        lines.append(f"{f.name} = {text}")
    return "\n".join(lines) + "\n"


def _toml_inline(value: Any) -> str:
    """A TOML inline value: a table as `{key = value, ...}`, a string quoted (JSON escaping is TOML's too)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {_toml_inline(item)}" for key, item in value.items()) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)
