"""OTA campaigns: which remote file management (RFM) and remote application management (RAM) commands each card
gets, as command scripts (ETSI TS 102 226; GlobalPlatform Card Specification section 11 for INSTALL/LOAD/DELETE/
GET STATUS/SET STATUS). A campaign file is TOML or JSON:

    [[card]]
    iccid = "8988211000000000001"        # or psk_identity = "..." ; "*" matches every card
    [[card.step]]
    kind = "rfm"                          # UPDATE BINARY of a transparent file
    path = "7FFF/6F46"                    # from the MF; 7FFF is the USIM ADF
    data = "0142495053494D2D4F5441FFFFFFFFFFFF"
    [[card.step]]
    kind = "ram-load"                     # INSTALL [for load] + LOAD blocks of a simulated load file
    load_file = "A0000005590010"
    module = "A0000005590010FF"
    size = 1500                           # bytes of load file data (split into LOAD blocks)
    [[card.step]]
    kind = "ram-install"                  # INSTALL [for install and make selectable]
    load_file = "A0000005590010"
    module = "A0000005590010FF"
    application = "A0000005590010FF01"
    [[card.step]]
    kind = "ram-status"                   # GET STATUS of applications
    # also: kind = "ram-delete" (aid), kind = "ram-lock"/"ram-unlock" (aid), kind = "apdu" (hex list)
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bipsim.errors import CliError
from bipsim.uicc.fs import USIM_AID
from bipsim.uicc.tlv import encode_length

LOAD_BLOCK = 200  # bytes of load file data per LOAD command (fits one short APDU)


def _lv(data: bytes) -> bytes:
    return bytes((len(data),)) + data


def _hex(step: dict[str, Any], key: str) -> bytes:
    try:
        return bytes.fromhex(str(step[key]))
    except KeyError as exc:
        raise CliError(f"campaign step {step.get('kind')!r} needs {key!r}") from exc
    except ValueError as exc:
        raise CliError(f"campaign step {step.get('kind')!r}: {key} is not hex") from exc


def select_path(path: str) -> list[bytes]:
    apdus = []
    for part in path.strip("/").split("/"):
        if part.upper() == "7FFF":
            apdus.append(b"\x00\xa4\x04\x0c" + _lv(USIM_AID))
        else:
            apdus.append(b"\x00\xa4\x00\x0c\x02" + bytes.fromhex(part))
    return apdus


def load_file_data(module: bytes, size: int) -> bytes:
    """Simulated CAP content: the module AID ('4F') padded to `size` bytes, in a 'C4' load file data block."""
    inner = b"\x4f" + _lv(module)
    inner += b"\x80" + encode_length(max(0, size - len(inner) - 4)) + bytes(max(0, size - len(inner) - 4))
    return b"\xc4" + encode_length(len(inner)) + inner


def step_apdus(step: dict[str, Any]) -> list[bytes]:
    kind = step.get("kind")
    if kind == "rfm":
        data = _hex(step, "data")
        offset = int(step.get("offset", 0))
        return [
            *select_path(str(step.get("path", ""))),
            bytes((0x00, 0xD6, offset >> 8, offset & 0xFF, len(data))) + data,
        ]
    if kind == "rfm-record":
        data = _hex(step, "data")
        return [
            *select_path(str(step.get("path", ""))),
            bytes((0x00, 0xDC, int(step.get("record", 1)), 0x04, len(data))) + data,
        ]
    if kind == "ram-load":
        load_file, module = _hex(step, "load_file"), _hex(step, "module")
        blob = load_file_data(module, int(step.get("size", 600)))
        apdus = [b"\x80\xe6\x02\x00" + _lv(_lv(load_file) + b"\x00\x00\x00\x00")]
        blocks = [blob[i : i + LOAD_BLOCK] for i in range(0, len(blob), LOAD_BLOCK)]
        for number, block in enumerate(blocks):
            last = 0x80 if number == len(blocks) - 1 else 0x00
            apdus.append(bytes((0x80, 0xE8, last, number & 0xFF, len(block))) + block)  # block numbers wrap
        return apdus
    if kind == "ram-install":
        load_file, module, app = _hex(step, "load_file"), _hex(step, "module"), _hex(step, "application")
        privileges = bytes.fromhex(str(step.get("privileges", "00")))
        params = b"\xc9\x00"
        body = _lv(load_file) + _lv(module) + _lv(app) + _lv(privileges) + _lv(params) + b"\x00"
        return [b"\x80\xe6\x0c\x00" + _lv(body)]
    if kind == "ram-delete":
        aid = _hex(step, "aid")
        return [b"\x80\xe4\x00\x80" + _lv(b"\x4f" + _lv(aid))]
    if kind == "ram-status":
        return [b"\x80\xf2\x40\x02\x02\x4f\x00"]
    if kind in ("ram-lock", "ram-unlock"):
        aid = _hex(step, "aid")
        return [bytes((0x80, 0xF0, 0x40, 0x83 if kind == "ram-lock" else 0x07)) + _lv(aid)]
    if kind == "apdu":
        try:
            return [bytes.fromhex(a) for a in step.get("apdus", [])]
        except ValueError as exc:
            raise CliError("campaign step 'apdu': apdus must be hex strings") from exc
    raise CliError(f"unknown campaign step kind {kind!r}")


@dataclass
class CardPlan:
    iccid: str | None
    psk_identity: str | None
    scripts: list[list[bytes]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)

    def matches(self, iccid: str | None, identity: str | None) -> bool:
        if self.iccid == "*" or self.psk_identity == "*":
            return True
        return (self.iccid is not None and self.iccid == iccid) or (
            self.psk_identity is not None and self.psk_identity == identity
        )


@dataclass
class Campaign:
    cards: list[CardPlan]

    def plan_for(self, iccid: str | None, identity: str | None) -> CardPlan | None:
        return next((c for c in self.cards if c.matches(iccid, identity)), None)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], where: str) -> Campaign:
        cards = []
        for entry in data.get("card", []):
            if not isinstance(entry, dict):
                raise CliError(f"{where}: each [[card]] must be a table")
            plan = CardPlan(entry.get("iccid"), entry.get("psk_identity"))
            if plan.iccid is None and plan.psk_identity is None:
                raise CliError(f"{where}: a [[card]] needs iccid or psk_identity")
            for step in entry.get("step", []):
                plan.scripts.append(step_apdus(step))
                plan.kinds.append(str(step.get("kind")))
            cards.append(plan)
        return cls(cards)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Campaign:
        if path is None:
            text = resources.files("bipsim.ota").joinpath("example_campaign.toml").read_text(encoding="utf-8")
            return cls.from_mapping(tomllib.loads(text), "example_campaign.toml")
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
            data = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
        except FileNotFoundError as exc:
            raise CliError(f"campaign file {file} does not exist") from exc
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise CliError(f"campaign file {file}: {exc}") from exc
        return cls.from_mapping(data, str(file))
