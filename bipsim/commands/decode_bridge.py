"""One-line meanings of card bytes for trace tools (diff, replay), from the card codec when it is installed."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def describe_apdu_bytes(data: bytes) -> str:
    """A short decoded meaning of an APDU or CAT object, or "" when no decoder is available."""
    try:
        module = importlib.import_module("bipsim.uicc.cat_render")
    except ImportError:
        return ""
    describe: Callable[[bytes], str] | None = getattr(module, "describe_bytes", None)
    if describe is None:
        return ""
    try:
        return describe(data)
    except ValueError as exc:
        return f"(undecodable: {exc})"
