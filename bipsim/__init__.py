"""bipsim: a dual-processor phone simulator (AP + CP over a serial line, a UICC running ETSI TS 102 223 BIP).

The import package holds the command line (this folder) and, as subpackages mapped from the repository's top-level
folders, the layers of docs/architecture.md: `bipsim.uicc`, `bipsim.link`, `bipsim.cp`, `bipsim.ap`, `bipsim.ota`,
`bipsim.trace`, `bipsim.scenarios`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bipsim")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
