"""The AP's cellular APN database in Android's apns-conf.xml format (<apns><apn carrier mcc mnc apn user password
type .../></apns>), chosen by the MCC/MNC of the CP's +CIMI (a 3-digit MNC is tried before a 2-digit one)."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from bipsim.errors import CliError


@dataclass(frozen=True)
class ApnEntry:
    carrier: str
    mcc: str
    mnc: str
    apn: str
    user: str = ""
    password: str = ""
    types: tuple[str, ...] = ("default",)


class ApnDatabase:
    def __init__(self, entries: list[ApnEntry]) -> None:
        self.entries = entries

    @classmethod
    def parse(cls, text: str, where: str = "apns-conf.xml") -> ApnDatabase:
        try:
            root = ElementTree.fromstring(text)
        except ElementTree.ParseError as exc:
            raise CliError(f"{where}: not valid XML: {exc}") from exc
        entries = []
        for node in root.iter("apn"):
            mcc, mnc, apn = node.get("mcc"), node.get("mnc"), node.get("apn")
            if not mcc or not mnc or apn is None:
                continue
            types = tuple(t.strip() for t in (node.get("type") or "default").split(",") if t.strip())
            entries.append(
                ApnEntry(
                    node.get("carrier", ""),
                    mcc,
                    mnc,
                    apn,
                    node.get("user", ""),
                    node.get("password", ""),
                    types,
                )
            )
        return cls(entries)

    @classmethod
    def load(cls, path: str | Path | None = None) -> ApnDatabase:
        """The given file, or the database shipped with bipsim (ap/apns-conf.xml)."""
        if path is None:
            text = resources.files("bipsim.ap").joinpath("apns-conf.xml").read_text(encoding="utf-8")
            return cls.parse(text)
        try:
            return cls.parse(Path(path).read_text(encoding="utf-8"), str(path))
        except FileNotFoundError as exc:
            raise CliError(f"APN database {path} does not exist") from exc

    def for_imsi(self, imsi: str, wanted: str = "") -> ApnEntry | None:
        """The entry for the IMSI's home network: the card's APN if listed, else the default-type entry."""
        mcc = imsi[:3]
        for mnc_length in (3, 2):
            mnc = imsi[3 : 3 + mnc_length]
            candidates = [e for e in self.entries if e.mcc == mcc and e.mnc == mnc]
            if not candidates:
                continue
            if wanted:
                for entry in candidates:
                    if entry.apn.lower() == wanted.lower():
                        return entry
            for entry in candidates:
                if "default" in entry.types or "*" in entry.types:
                    return entry
            return candidates[0]
        return None
