"""bipsim: a dual-processor phone simulator (AP + CP over a serial line, a UICC running ETSI TS 102 223 BIP).

The import package holds the command line (this folder) and, as subpackages mapped from the repository's top-level
folders, the layers of docs/architecture.md: `bipsim.uicc`, `bipsim.link`, `bipsim.cp`, `bipsim.ap`, `bipsim.ota`,
`bipsim.trace`, `bipsim.scenarios`.

`__version__` is read from the installed distribution's metadata when first asked for: importlib.metadata costs
every process that imports a subpackage tens of milliseconds, and only `bipsim --version` needs it.
"""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    if name != "__version__":
        raise AttributeError(f"module 'bipsim' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("bipsim")
    except PackageNotFoundError:  # running from a source tree that was never installed
        found = "0.0.0+unknown"
    globals()["__version__"] = found
    return found
