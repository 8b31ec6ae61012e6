"""The command line's promises: --version, --help, one-line errors."""

import subprocess
import sys

from bipsim import __version__


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bipsim", *args], capture_output=True, text=True, timeout=60)


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_help_lists_every_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for name in ("demo", "cp", "ap", "ota-server", "pty-pair", "decode", "scenario", "trace"):
        assert name in result.stdout


def test_unknown_command_is_one_line() -> None:
    result = run("no-such-command")
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
