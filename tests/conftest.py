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


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers(name="needs"):
        for tool in marker.args:
            require_tool(tool)


@pytest.fixture
def need() -> Callable[[str], str]:
    """`need("socat")` returns socat's path, with the same skip/fail policy as the `needs` marker."""
    return require_tool
