"""The card's persistent state in one JSON file, written atomically: a card killed at any moment keeps either
the old or the new state, never a mix (write to a temporary file in the same directory, fsync it, rename it over
the old one, fsync the directory)."""

from __future__ import annotations

import glob
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def save_state(path: Path, state: dict[str, Any]) -> None:
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    # a writer killed between mkstemp and rename leaves its temporary file behind: one writer per state file,
    # so any such file is stale
    for stale in directory.glob(f".{glob.escape(path.name)}.*"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_state(path: Path) -> dict[str, Any]:
    """The saved state; a file that is not a JSON object is treated as no state (and reported by the caller)."""
    with path.open(encoding="utf-8") as handle:
        data = json.load(handle)
    return data if isinstance(data, dict) else {}
