"""The eight push-deployment scenarios (issue 22; scenarios/push.py), each run once with a real CP and AP against the
publish server. Every scenario asserts its own outcome (ScenarioFailed otherwise); these tests add what the
issue's points name: one prompt per notice, the registry's one entry, the result the user is told."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bipsim.ap.upgrade.registry import Registry
from bipsim.scenarios.base import ScenarioOptions, ScenarioResult
from bipsim.scenarios.push import PUSH_SCENARIOS
from bipsim.scenarios.registry import SCENARIOS, describe
from bipsim.trace.events import TraceEvent
from bipsim.trace.kinds import Kind
from bipsim.trace.pcap import export_pcap
from bipsim.trace.reader import read_trace

_RUNS: dict[str, ScenarioResult] = {}


def run_scenario(name: str, tmp_path: Path) -> ScenarioResult:
    """Runs scenario `name` once per module (a later test comparing with it reads the same run)."""
    if name not in _RUNS:
        _RUNS[name] = SCENARIOS[name](ScenarioOptions(tmp_path / name))
    result = _RUNS[name]
    assert result.name == name and result.run.cp_code == 0
    return result


@pytest.fixture(scope="module", autouse=True)
def _forget_runs() -> Iterator[None]:
    yield
    _RUNS.clear()


def _of(result: ScenarioResult, kind: Kind) -> list[TraceEvent]:
    return [e for e in result.run.events if e.kind == kind]


def _installed(result: ScenarioResult) -> Registry:
    registry = Registry(result.run.directory / "registry.json")
    assert list(registry.entries) == ["app"]  # one entry, overwritten or kept
    return registry


def _told(result: ScenarioResult) -> list[object]:
    return [e.field("result") for e in _of(result, Kind.UPGRADE_RESULT)]


def test_the_push_scenarios_are_registered() -> None:
    assert set(PUSH_SCENARIOS) <= set(SCENARIOS)
    assert all(describe(name).endswith(".") for name in PUSH_SCENARIOS)


@pytest.mark.parametrize("name", ["push-sms", "push-ip"])
def test_a_notice_installs_over_the_old_version(name: str, tmp_path: Path) -> None:
    result = run_scenario("push-sms", tmp_path) if name == "push-sms" else run_scenario("push-ip", tmp_path)
    assert len(_of(result, Kind.UPGRADE_PROMPT)) == 1
    assert _told(result) == [900] and _installed(result).version("app") == "1.1"


def _si_hrefs(pcap: Path) -> list[str]:
    """The href of each Service Indication tshark finds in `pcap` (its WBXML dissector's rendering: the href's
    known prefix token, then the inline string that follows it; WAP-167 table 8)."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-V"], capture_output=True, text=True, timeout=60, check=True
    )
    hrefs: list[str] = []
    prefix: str | None = None
    for line in out.stdout.splitlines():
        if (start := re.search(r"href='([^']*)'", line)) is not None:
            prefix = start.group(1)
        elif prefix is not None and (rest := re.search(r"STR_I .*\|\s+'([^']*)'", line)) is not None:
            hrefs.append(prefix + rest.group(1))
            prefix = None
    return hrefs


@pytest.mark.needs("tshark")
def test_push_wap(tmp_path: Path) -> None:
    result = run_scenario("push-wap", tmp_path)
    (notice,) = [e for e in _of(result, Kind.UPGRADE_NOTICE) if e.field("via") == "wap"]
    assert notice.step == "001:e2.1" and notice.field("location") == "/v1/packages/app/1.1"
    assert _told(result) == [900] and _installed(result).version("app") == "1.1"
    # the SI as it went over the air (the SMSC's smsc.mt, exported as trace/pcap.py does), decoded by tshark ...
    offered = [e for e in result.run.events if e.kind == Kind.SMSC_MT]
    assert offered and export_pcap(offered, tmp_path / "mt.pcap") == len(offered)
    (href,) = _si_hrefs(tmp_path / "mt.pcap")
    # ... is where the agent went: its connection (the AP's trace) and the server's GET of the package
    events, _ = read_trace([result.run.directory / "publish.jsonl"])
    gets = [
        str(e.field("target"))
        for e in events
        if e.kind == Kind.HTTP_REQUEST
        and e.field("method") == "GET"
        and "/packages/" in str(e.field("target"))
    ]
    (connect, *_) = [e for e in _of(result, Kind.TCP_CONNECT) if e.field("via") == "wap"]
    assert [href] == [f"http://{connect.field('host')}:{connect.field('port')}{target}" for target in gets]
    # the terminal's connections the server accepted on the advertised listener
    assert [e.field("listener") for e in events if e.kind == Kind.TCP_ACCEPT].count("http") == len(
        _of(result, Kind.TCP_CONNECT)
    )


@pytest.mark.parametrize("name", ["push-active", "push-lost-notice"])
def test_the_active_check_installs_without_a_prompt(name: str, tmp_path: Path) -> None:
    if name == "push-active":
        result = run_scenario("push-active", tmp_path)
    else:
        result = run_scenario("push-lost-notice", tmp_path)
    assert _of(result, Kind.UPGRADE_PROMPT) == []
    assert _told(result) == [900] and _installed(result).version("app") == "1.1"


def test_a_lost_notice_then_the_check_installs_what_the_notice_would(tmp_path: Path) -> None:
    lost = run_scenario("push-lost-notice", tmp_path)
    # the SMSC refused the notice (the ME got no SMS at all), then the check was served
    refused = [e for e in _of(lost, Kind.SMSC_CONTROL) if e.field("op") == "send-mt"]
    assert [e.field("ok") for e in refused] == [False] and _of(lost, Kind.SMSC_MT) == []
    events, _ = read_trace([lost.run.directory / "publish.jsonl"])
    kinds = [str(e.kind) for e in events]
    assert kinds.index("publish.notify") < kinds.index("publish.check")
    assert [e.field("status") for e in events if e.kind == Kind.PUBLISH_NOTIFY] == [502]
    # the same entry the notice path installs in push-sms: version, package and its hash
    notice = run_scenario("push-sms", tmp_path)
    by_check, by_notice = _installed(lost), _installed(notice)
    assert by_check.version("app") == by_notice.version("app") == "1.1"
    assert by_check.package("app") == by_notice.package("app") is not None
    check_entry, notice_entry = by_check.get("app"), by_notice.get("app")
    assert check_entry is not None and notice_entry is not None
    assert check_entry.sha256 == notice_entry.sha256


def test_push_applet(tmp_path: Path) -> None:
    result = run_scenario("push-applet", tmp_path)
    pors = [e.field("status") for e in result.run.events if e.kind == Kind.SMS_POR]
    assert pors == ["00"]  # the card took the OTA platform's push the applet release carried
    registry = Registry(result.run.directory / "registry.json")
    entry = registry.get("echo-applet")
    assert entry is not None and entry.kind == "applet" and registry.version("app") == "1.0"
    assert "a0000005590010ff01" in result.run.card_state["gp"]["applications"]


@pytest.mark.parametrize(
    ("name", "code"), [("push-declined", 902), ("push-auth-fails", 909), ("push-corrupt-package", 907)]
)
def test_a_refused_flow_keeps_the_old_version(name: str, code: int, tmp_path: Path) -> None:
    if name == "push-declined":
        result = run_scenario("push-declined", tmp_path)
    elif name == "push-auth-fails":
        result = run_scenario("push-auth-fails", tmp_path)
    else:
        result = run_scenario("push-corrupt-package", tmp_path)
    assert len(_of(result, Kind.UPGRADE_PROMPT)) == 1
    (told,) = _of(result, Kind.UPGRADE_RESULT)
    assert told.field("result") == code and told.error and told.field("reason")
    registry = _installed(result)
    assert registry.version("app") == "1.0" and registry.package("app") is not None
    # nothing installed half-way: a package that failed its checks was never written
    assert sorted(p.name for p in registry.directory.iterdir()) == ["app-1.0.pkg"]
