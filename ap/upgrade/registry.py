"""The AP's package registry (docs/protocols.md, "Push deployment", "The upgrade agent"): installed name -> version,
package file and SHA-256, kept in one JSON file beside a directory of package files.

An install is staged so that any failure keeps the old version: the new package is written to a temporary file,
checked against its SHA-256 (FIPS 180-4) and renamed into place under a name of its own (`<name>-<version>.pkg`),
then the registry file is replaced in one rename (POSIX rename(2) is atomic), and only then is the old version's
file removed. A crash or a refused write at any point leaves the old registry naming the old, intact file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bipsim.ota.release_catalogue import VersionError, parse_version

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class RegistryError(Exception):
    """The registry file is unreadable, or an install could not be completed (the old version is kept); `cause`
    says why: "name", "version", "hash" (the bytes are not the release's) or "write" (the file system)."""

    def __init__(self, message: str, cause: str = "write") -> None:
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True)
class Installed:
    """One installed package."""

    name: str
    version: str
    file: str  # the package file's name in the registry's package directory
    sha256: str
    kind: str = "app"  # what the package is; "app" for every package the agent installs so far

    def as_json(self) -> dict[str, Any]:
        return {"version": self.version, "file": self.file, "sha256": self.sha256, "kind": self.kind}


class Registry:
    """The registry at `path` (JSON: {"packages": {name: {version, file, sha256, kind}}}); packages are stored in
    `<path stem>.d/` next to it. A missing file is an empty registry."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.directory = path.with_name(path.stem + ".d")
        self.entries: dict[str, Installed] = self._load()

    def _load(self) -> dict[str, Installed]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise RegistryError(f"{self.path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
            packages = data["packages"]
            out = {}
            for name, entry in packages.items():
                if not NAME.match(name):
                    raise ValueError(f"{name!r} is not a package name")
                parse_version(entry["version"])
                out[name] = Installed(
                    name,
                    entry["version"],
                    str(entry["file"]),
                    str(entry["sha256"]),
                    str(entry.get("kind", "app")),
                )
            return out
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError, VersionError) as exc:
            raise RegistryError(f"{self.path}: not a package registry: {exc}") from None

    def get(self, name: str) -> Installed | None:
        return self.entries.get(name)

    def version(self, name: str) -> str | None:
        entry = self.entries.get(name)
        return entry.version if entry is not None else None

    def package(self, name: str) -> bytes | None:
        """The installed package's bytes, None when `name` is not installed."""
        entry = self.entries.get(name)
        return None if entry is None else (self.directory / entry.file).read_bytes()

    def as_json(self) -> dict[str, Any]:
        return {"packages": {name: entry.as_json() for name, entry in sorted(self.entries.items())}}

    def install(self, name: str, version: str, data: bytes, sha256: str, *, kind: str = "app") -> Installed:
        """Installs `data` as `name` `version` over whatever is installed (RegistryError, the old version kept,
        when the bytes do not hash to `sha256` or a write fails)."""
        if not NAME.match(name):
            raise RegistryError(f"{name[:70]!r} is not a package name", "name")
        try:
            parse_version(version)
        except VersionError as exc:
            raise RegistryError(f"{name}: version {exc}", "version") from None
        if hashlib.sha256(data).hexdigest() != sha256.lower():
            raise RegistryError(f"{name} {version}: the package does not hash to {sha256}", "hash")
        file = f"{name}-{version}.pkg"
        staged = self.directory / (file + ".part")
        tmp = self.path.with_name(self.path.name + ".tmp")
        old = self.entries.get(name)
        placed = False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(staged, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(staged, self.directory / file)
            placed = True
            entry = Installed(name, version, file, sha256.lower(), kind)
            entries = {**self.entries, name: entry}
            text = json.dumps(
                {"packages": {n: e.as_json() for n, e in sorted(entries.items())}}, indent=1, sort_keys=True
            )
            with open(tmp, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
            _fsync_directory(self.directory)  # the renames themselves survive a crash (fsync(2), rename(2))
            _fsync_directory(self.path.parent)
        except OSError as exc:
            # nothing of the failed install stays: the old registry names the old, intact file
            _remove(staged)
            if placed and (old is None or old.file != file):
                _remove(self.directory / file)
            if tmp.is_file():
                _remove(tmp)
            raise RegistryError(f"{name} {version}: {exc.strerror or exc}") from None
        self.entries = entries
        if old is not None and old.file != file:
            (self.directory / old.file).unlink(missing_ok=True)
        return entry


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # a leftover, but the registry file still names the old version


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
