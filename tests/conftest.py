"""Suite-wide test policy: tests that run an external program declare it with `@pytest.mark.needs("prog", ...)`
(or call the `need` fixture). Missing programs skip the test on a developer machine and fail it when CI=true,
so CI can never pass by skipping the real peers."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(message: str) -> NoReturn:
    """What the test needs is not on this machine (a program, root, a Python module): skips the calling test, or
    fails it under CI=true."""
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_tool(name: str) -> str:
    """The path of program `name`; skips the calling test when it is missing, or fails it under CI=true."""
    path = shutil.which(name)
    if path is None:
        missing(f"external tool {name!r} is not installed (make test installs it as root)")
    return path


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compiles the package's sources to bytecode once, before any test starts a `bipsim` process: with
    PYTHONDONTWRITEBYTECODE set (as CI shells may have it) no process writes its .pyc files, so each of the suite's
    hundreds of processes would compile every module it imports again (about 0.2 s of CPU a process). Files
    already compiled are only looked at; the .pyc files live in the ignored __pycache__ folders."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # the controller did it before starting the workers
    import compileall
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for folder in sorted(root.iterdir()):
        if (folder / "__init__.py").is_file():  # the package's folders (pyproject.toml's package-dir), tests/
            compileall.compile_dir(folder, quiet=2)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers(name="needs"):
        for tool in marker.args:
            require_tool(tool)


@pytest.fixture
def need() -> Callable[[str], str]:
    """`need("socat")` returns socat's path, with the same skip/fail policy as the `needs` marker."""
    return require_tool
