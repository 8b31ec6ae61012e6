"""Issue 20 on the real processes: `bipsim ap --sync` with `bipsim cp` (two card slots, the card-control socket) and
the sync server (scenarios/sim_sync.py runs them through the harness). The five named scenarios run in
tests/test_scenarios.py; here are what their traces must also show: one read per trigger and none without, the
steps' labels, and the failed security check."""

from __future__ import annotations

from pathlib import Path

import pytest

from bipsim.scenarios.base import ScenarioFailed, ScenarioOptions
from bipsim.scenarios.harness import RunResult
from bipsim.scenarios.sim_sync import A, B, C, SyncRun, run_sync
from bipsim.trace.kinds import Kind
from bipsim.trace.steps import STEPS


def lines(result: RunResult, prefix: str) -> list[str]:
    return [e.summary for e in result.events if e.kind == Kind.AT_COMMAND and e.summary.startswith(prefix)]


def app(result: RunResult, event: str) -> list[dict[str, object]]:
    return [e.fields or {} for e in result.events if e.kind == Kind.APP_EVENT and e.field("event") == event]


def test_one_read_per_trigger_and_every_label_is_its_step(tmp_path: Path) -> None:
    run = SyncRun("sync-reads", [A, B], seed=[C])
    result = run_sync(run, ScenarioOptions(tmp_path))
    assert len(app(result, "sync_trigger")) == 1
    # the one trigger's read; the watch asks AT%SLOTS? once, then hears URCs
    assert len(lines(result, "AT+CPBR=")) == 1
    assert run.local_records() == {A, B, C} == run.server_records()
    labelled = [e for e in result.events if e.step and e.step.startswith("002:")]
    wrong = [(e.step, e.kind, e.summary) for e in labelled if not STEPS[e.step].matches(e)]
    assert not wrong


def test_failed_security_check_means_no_read_and_no_write(tmp_path: Path) -> None:
    run = SyncRun("sync-security-fail", [A, B], seed=[C], ap_args=["--security", "fail"])
    result = run_sync(run, ScenarioOptions(tmp_path))
    assert [f["reason"] for f in app(result, "sync_aborted")] == ["security check failed"]
    assert not lines(result, "AT+CPBR") and not lines(result, "AT+CPBW") and not lines(result, "AT+CPBS")
    # no request to the server either, not even the watch's version GET (issue 20: no read anywhere)
    assert not [e for e in result.events if e.kind == Kind.HTTP_REQUEST]
    assert not app(result, "sync_merged")
    assert run.local_records() == {C} == run.server_records()


def test_ap_sync_options_explain_themselves_and_refuse_a_bad_url() -> None:
    import subprocess
    import sys

    run = [sys.executable, "-m", "bipsim", "ap"]
    helped = subprocess.run([*run, "--help"], capture_output=True, text=True, check=True)
    for option in ("--sync ", "--sync-token", "--sync-store", "--virtual-sims", "--security"):
        assert option in helped.stdout
    bad = subprocess.run(
        [*run, "--port", "/nonexistent", "--sync", "ftp://x"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "--sync" in bad.stderr and "Traceback" not in bad.stderr
    url = "http://127.0.0.1:9/sync/v1/001010123456789/records"
    tokenless = subprocess.run(
        [*run, "--port", "/nonexistent", "--sync", url], capture_output=True, text=True
    )
    assert tokenless.returncode == 2, tokenless.stderr
    assert tokenless.stderr.strip().count("\n") == 0 and "--sync-token" in tokenless.stderr


class _Trace:
    """A finished AP trace standing in for the harness: what `_cycle_end` reads of it."""

    def __init__(self, events: list[str]) -> None:
        self.events = [
            {"kind": Kind.APP_EVENT, "fields": {"event": e, "conflicts": int(e == "conflict")}}
            for e in events
        ]
        for obj in self.events:
            if obj["fields"]["event"] == "conflict":
                obj["fields"]["event"] = "sync_merged"

    def events_so_far(self, name: str) -> list[dict[str, object]]:
        return self.events

    async def wait_for_event(self, name: str, query: object, *, count: int = 1, timeout: float = 0) -> object:
        matched = [obj for obj in self.events if query.matches_dict(obj)]  # type: ignore[attr-defined]
        return matched[count - 1] if len(matched) >= count else None


CONFLICT = ["sync_merged", "sync_done", "conflict"]


@pytest.mark.parametrize(
    ("events", "failure"),
    [
        (
            CONFLICT + ["sync_done", "sync_merged", "sync_done"],
            None,
        ),  # a second trigger of the same edits after
        (CONFLICT + ["sync_aborted"], "did not finish"),
        (CONFLICT, "never ended"),  # the conflict's cycle has not ended: no earlier cycle's end stands for it
        (["sync_merged", "sync_done"], "not in the AP's trace"),
    ],
)
async def test_the_conflict_scenario_waits_for_the_end_of_the_cycle_that_merged(
    events: list[str], failure: str | None, autojump_clock: object
) -> None:
    from bipsim.scenarios.harness import EventQuery
    from bipsim.scenarios.sim_sync import _cycle_end

    conflict = EventQuery(
        Kind.APP_EVENT, lambda f: f.get("event") == "sync_merged" and f.get("conflicts", 0) > 0
    )
    if failure is None:
        end = await _cycle_end(_Trace(events), conflict)  # type: ignore[arg-type]
        assert end is not None and end["fields"]["event"] == "sync_done"
    else:
        with pytest.raises(ScenarioFailed, match=failure):
            await _cycle_end(_Trace(events), conflict)  # type: ignore[arg-type]


def test_each_sync_scenario_says_what_it_does_in_its_first_line() -> None:
    """`bipsim scenario list` shows a scenario's first docstring line: it is a whole sentence."""
    from bipsim.scenarios import sim_sync

    names = [name for name in dir(sim_sync) if name.startswith("sim_sync_")]
    assert len(names) == 5
    for name in names:
        first = (getattr(sim_sync, name).__doc__ or "").splitlines()[0]
        assert first[:1].isupper() and first.endswith("."), (name, first)
