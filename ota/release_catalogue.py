"""The publish server's release catalogue (docs/protocols.md, "Push deployment"): `catalogue.toml` and the package
files beside it, each release with its size and SHA-256 (FIPS 180-4) and an ISO 8601 UTC timestamp, and the
numeric comparison of dotted versions that the version check (embodiment 3) needs.

Pure: files are read once at load; nothing here touches a socket or a clock.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
VERSION = re.compile(r"^[0-9]{1,9}(\.[0-9]{1,9}){0,7}$")
PACKAGES = "/v1/packages/"
KINDS = (
    "software",
    "applet",
)  # a terminal's software package, or a card applet that the OTA platform installs


class CatalogueError(ValueError):
    """catalogue.toml or a package file is not as docs/protocols.md describes it (reason in str())."""


class VersionError(ValueError):
    """A version that is not dotted integers ("1.2.10")."""


def parse_version(text: object) -> tuple[int, ...]:
    """ "1.2.10" -> (1, 2, 10); VersionError for anything else. "1.2" and "1.2.0" compare equal, as numbers do."""
    if not isinstance(text, str) or not VERSION.match(text):
        raise VersionError(f"{str(text)[:40]!r} is not a dotted-integer version")
    parts = [int(p) for p in text.split(".")]
    while len(parts) > 1 and parts[-1] == 0:  # trailing zeros do not make a version newer
        parts.pop()
    return tuple(parts)


def newer(candidate: str, installed: str) -> bool:
    """Whether `candidate` is a later version than `installed`, comparing each dotted part as an integer."""
    return parse_version(candidate) > parse_version(installed)


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z ("2026-11-30T12:00:00Z"); a naive time is taken to be UTC already."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _timestamp(value: object, where: str) -> str:
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, date) and not isinstance(value, datetime):
        return iso_utc(datetime.combine(value, time(), UTC))
    if isinstance(value, str):
        try:
            return iso_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            pass
    raise CatalogueError(f"{where}: timestamp {str(value)[:40]!r} is not an ISO 8601 date and time")


@dataclass(frozen=True)
class Release:
    """One published version of a package; `data` is the package's bytes; `kind` is "software" (installed by the
    terminal) or "applet" (a descriptor whose push the terminal hands to the card)."""

    name: str
    version: str
    timestamp: str
    data: bytes
    sha256: str
    kind: str = "software"

    @property
    def location(self) -> str:
        return f"{PACKAGES}{self.name}/{self.version}"

    @property
    def size(self) -> int:
        return len(self.data)

    def as_json(self, *, size: int | None = None) -> dict[str, Any]:
        """The release as the HTTP API and the notices carry it; `size` overrides the true size (a lying server)."""
        return {
            "name": self.name,
            "version": self.version,
            "location": self.location,
            "size": self.size if size is None else size,
            "sha256": self.sha256,
            "timestamp": self.timestamp,
            "kind": self.kind,
        }


def make_release(
    name: str, version: str, data: bytes, timestamp: datetime | str, kind: str = "software"
) -> Release:
    """A release from its parts (what the loader builds from a catalogue entry; tests build them directly)."""
    if kind not in KINDS:
        raise CatalogueError(f"{name[:70]}: kind {str(kind)[:40]!r} is not one of {', '.join(KINDS)}")
    if not NAME.match(name):
        raise CatalogueError(f"name {name[:70]!r}: letters, digits, '.', '_', '-' (up to 64)")
    try:
        parse_version(version)
    except VersionError as exc:
        raise CatalogueError(f"{name}: version {exc}") from None
    stamp = _timestamp(timestamp, f"{name} {version}")
    return Release(name, version, stamp, bytes(data), hashlib.sha256(data).hexdigest(), kind)


class Catalogue:
    """Every release by (name, version); `latest(name)` is the highest version by numeric comparison."""

    def __init__(self, releases: list[Release]) -> None:
        self.releases: dict[tuple[str, str], Release] = {}
        for release in releases:
            key = (release.name, release.version)
            if key in self.releases:
                raise CatalogueError(f"{release.name} {release.version} is listed twice")
            self.releases[key] = release

    def latest(self, name: str) -> Release | None:
        found = [r for (n, _), r in self.releases.items() if n == name]
        return max(found, key=lambda r: parse_version(r.version)) if found else None

    def get(self, name: str, version: str) -> Release | None:
        return self.releases.get((name, version))

    def find(self, location: str) -> Release | None:
        """The release served at `location` ("/v1/packages/<name>/<version>"), None when none is."""
        if not location.startswith(PACKAGES):
            return None
        name, sep, version = location[len(PACKAGES) :].partition("/")
        return self.get(name, version) if sep else None

    def __len__(self) -> int:
        return len(self.releases)


def load_catalogue(directory: Path) -> Catalogue:
    """`directory/catalogue.toml` (`[[release]] name, version, file, timestamp`, optional `kind`, "software" by
    default or "applet"; `file` relative to the directory and inside it) with every package file read and hashed; CatalogueError naming the entry otherwise."""
    path = directory / "catalogue.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogueError(f"{path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CatalogueError(f"{path}: not TOML: {exc}") from None
    entries = data.get("release", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CatalogueError(f"{path}: release is an array of tables ([[release]])")
    root = directory.resolve()
    releases = []
    for number, entry in enumerate(entries, 1):
        where = f"{path} release {number}"
        missing = [k for k in ("name", "version", "file", "timestamp") if k not in entry]
        if missing:
            raise CatalogueError(f"{where}: missing {', '.join(missing)}")
        name, version, file = entry["name"], entry["version"], entry["file"]
        kind = entry.get("kind", "software")
        if not all(isinstance(v, str) for v in (name, version, file, kind)):
            raise CatalogueError(f"{where}: name, version, file and kind are strings")
        package = (root / file).resolve()
        if not package.is_relative_to(root):
            raise CatalogueError(f"{where}: file {file!r} is outside {directory}")
        try:
            content = package.read_bytes()
        except OSError as exc:
            raise CatalogueError(f"{where}: {file}: {exc.strerror or exc}") from None
        try:
            releases.append(make_release(name, version, content, entry["timestamp"], kind))
        except CatalogueError as exc:
            raise CatalogueError(f"{where}: {exc}") from None
    return Catalogue(releases)
