"""Hypothesis settings of the fuzz tests, and the bound on one example's work.

Two profiles, chosen by the environment variable BIPSIM_FUZZ_PROFILE (docs/development.md, "Fuzzing"):

- `ci` (the default, what `make test` runs): derandomized, so every run tries the same inputs, with few examples
  per test so that all of tests/fuzz takes seconds; no example database, so a run leaves nothing behind.
- `long` (what `make fuzz` runs): random inputs, 20 times the examples, the database under .hypothesis/ so that a
  failure found once is tried first next time.

The profiles are not loaded globally (the rest of the suite keeps its own settings): each fuzz test takes
`fuzz_settings(n)`, whose parent is the chosen profile.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("BIPSIM_FUZZ_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    raise RuntimeError(f"BIPSIM_FUZZ_PROFILE must be ci or long, not {PROFILE!r}")

# The long profile's per-example deadline: it catches superlinear work, not a slow moment of a shared machine.
DEADLINE_MS = 2000
SCALE = 20 if PROFILE == "long" else 1

settings.register_profile(
    "bipsim-fuzz-ci",
    derandomize=True,
    database=None,
    # no per-example deadline in CI: hypothesis fails a test whose slow example runs fast when replayed (a loaded
    # machine, an fsync), and every fuzz test runs inside bounded(), which catches a hang for what it is
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "bipsim-fuzz-long",
    derandomize=False,
    deadline=5 * DEADLINE_MS,  # long runs share the machine with atheris or a build: fewer false alarms
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


def fuzz_settings(max_examples: int) -> settings:
    """Settings for one fuzz test: `max_examples` under the ci profile, SCALE times that under long."""
    return settings(settings.get_profile(f"bipsim-fuzz-{PROFILE}"), max_examples=max_examples * SCALE)


class Hang(Exception):
    """One input kept a parser busy past its bound: an endless or superlinear loop."""


@contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Interrupts the block with Hang after `seconds` of wall time (SIGALRM, main thread only: pytest's and the
    atheris runner's). A loop that never returns cannot reach hypothesis' deadline, which is checked after the
    example; this cuts it short and names it."""

    def _alarm(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"not done after {seconds} s")

    # pytest-timeout may have its own alarm running: it is put back, less the time spent here
    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _alarm)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 0.001))
