"""Issue 20 on the real processes: `bipsim ap --sync` with `bipsim cp` (two card slots, the card-control socket) and
the sync server (scenarios/sim_sync.py runs them through the harness). The five named scenarios run in
tests/test_scenarios.py; here are what their traces must also show: one read per trigger and none without, the
steps' labels, and the failed security check."""

from __future__ import annotations

from pathlib import Path

from bipsim.scenarios.base import ScenarioOptions
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
    assert len(lines(result, "AT+CPBR=")) == 1  # the one trigger's read; the watch itself asks only AT%SLOTS?
    assert run.local_records() == {A, B, C} == run.server_records()
    labelled = [e for e in result.events if e.step and e.step.startswith("002:")]
    wrong = [(e.step, e.kind, e.summary) for e in labelled if not STEPS[e.step].matches(e)]
    assert not wrong


def test_failed_security_check_means_no_read_and_no_write(tmp_path: Path) -> None:
    run = SyncRun("sync-security-fail", [A, B], seed=[C], ap_args=["--security", "fail"])
    result = run_sync(run, ScenarioOptions(tmp_path))
    assert [f["reason"] for f in app(result, "sync_aborted")] == ["security check failed"]
    assert not lines(result, "AT+CPBR") and not lines(result, "AT+CPBW") and not lines(result, "AT+CPBS")
    puts = [e for e in result.events if e.kind == Kind.HTTP_REQUEST and e.field("method") == "PUT"]
    assert not puts and not app(result, "sync_merged")
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
