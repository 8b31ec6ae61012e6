"""Every named scenario (docs/protocols.md) runs from pytest with real processes on a pty pair; both patent
embodiments also run over a socat-made pair. The merged trace of each embodiment holds every patent step with first
occurrences in the patent's order, and every APDU that carries a CAT message decodes with `bipsim decode`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from click.testing import CliRunner

from bipsim.cli import cli, main
from bipsim.ota.campaign import Campaign
from bipsim.scenarios.base import ScenarioOptions, ScenarioResult
from bipsim.scenarios.campaigns import (
    RAM_STATUS,
    SPN_UPDATE,
    applet_download,
    campaign,
    ram_install,
    ram_load,
)
from bipsim.scenarios.harness import EventQuery, Harness, RunConfig
from bipsim.scenarios.registry import SCENARIOS, describe
from bipsim.scenarios.sms_trigger import card_idle_after_the_push
from bipsim.trace.events import TraceEvent
from bipsim.trace.kinds import Kind
from bipsim.trace.render import render_html
from bipsim.trace.steps import check_step_order, embodiment_steps, mislabelled
from bipsim.uicc.cat_render import decode_as, kind_of
from tests.test_trace_html import check_in_chromium

# the kind of each CAT message (docs/protocols.md, "Traces") and what `bipsim decode` calls it; TRs and envelopes are
# C-APDUs with their instruction byte, proactive commands FETCH answers
CAT_KINDS = {
    Kind.CAT_TERMINAL_RESPONSE: ("terminal_response", 0x14),
    Kind.CAT_ENVELOPE: ("envelope", 0xC2),
    Kind.CAT_PROACTIVE: ("proactive_command", None),
}


@contextmanager
def socat_pair() -> Iterator[tuple[str, str]]:
    """`socat -d -d pty,raw,echo=0 pty,raw,echo=0`; the two pty paths come from its notices on stderr."""
    process = subprocess.Popen(
        ["socat", "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    paths: list[str] = []
    try:
        while len(paths) < 2:
            line = process.stderr.readline()
            if not line:
                pytest.fail(f"socat exited ({process.wait()}) before naming two ptys")
            match = re.search(r"PTY is (\S+)", line)
            if match:
                paths.append(match.group(1))
        yield paths[0], paths[1]
    finally:
        process.terminate()
        process.wait(timeout=5)
        process.stderr.close()


# the embodiments run once, over a socat-made pair when socat is here: the registry test, the trace checks and the
# socat test all read that one run (the built-in pair carries the embodiments in test_trace_replay, test_demo and
# every other scenario of this file)
OVER_SOCAT = ("embodiment1", "embodiment2")


@pytest.fixture(scope="module")
def scenario_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], ScenarioResult]:
    """Runs a scenario once per module (the trace checks reuse the registry test's run of each embodiment)."""
    done: dict[str, ScenarioResult] = {}

    def run(name: str) -> ScenarioResult:
        if name not in done:
            directory = tmp_path_factory.mktemp(name)
            if name in OVER_SOCAT and shutil.which("socat"):
                with socat_pair() as (port_a, port_b):
                    done[name] = SCENARIOS[name](ScenarioOptions(directory, port_a, port_b))
            else:
                done[name] = SCENARIOS[name](ScenarioOptions(directory))
        return done[name]

    return run


# scenarios whose dedicated test runs them with these same checks and stronger ones (tshark on the pcap, a shorter
# outage): each runs once in the suite, there, not here too -> the file that runs it
DEDICATED = {
    name: "test_packet_scenarios.py"
    for name in (
        "radio-lossy",
        "radio-gprs",
        "pdp-drop",
        "radio-outage",
        "bip-udp",
        "bip-server",
        "bip-dns",
    )
} | {
    name: "test_push_scenarios.py"
    for name in (
        "push-sms",
        "push-wap",
        "push-ip",
        "push-active",
        "push-declined",
        "push-auth-fails",
        "push-corrupt-package",
        "push-lost-notice",
        "push-applet",
    )
}
DEDICATED |= {
    name: "test_esim_scenarios.py"
    for name in (
        "esim-download",
        "esim-cloud-retry",
        "esim-not-logged-in",
        "esim-chunked",
        "esim-second-download-refused",
        "esim-no-key-kept",
    )
}


# run by the command-line test below, with the same checks (exit 0 is the scenario's own)
FROM_THE_COMMAND_LINE = ("server-refuses",)


@pytest.mark.parametrize(
    "name", [name for name in SCENARIOS if name not in DEDICATED and name not in FROM_THE_COMMAND_LINE]
)
def test_scenario_passes(name: str, scenario_run: Callable[[str], ScenarioResult]) -> None:
    result = scenario_run(name)  # each scenario asserts its own outcome and raises ScenarioFailed otherwise
    assert result.name == name
    assert result.run.cp_code == 0
    assert any(e.layer.value == "apdu" for e in result.run.events)
    assert (result.run.directory / "cp.jsonl").exists() and (result.run.directory / "ap.jsonl").exists()


def test_every_scenario_is_run_by_this_file_or_by_its_dedicated_test() -> None:
    """No scenario is left unrun: one left out here is registered and its dedicated file runs it by name."""
    assert set(DEDICATED) <= set(SCENARIOS) and set(FROM_THE_COMMAND_LINE) <= set(SCENARIOS)
    here = Path(__file__).read_text()
    for name in FROM_THE_COMMAND_LINE:
        assert f'"scenario", "run", "{name}"' in here, name
    for name, filename in DEDICATED.items():
        text = (Path(__file__).parent / filename).read_text()
        assert f'run_scenario("{name}", tmp_path' in text, (name, filename)


def first_steps(events: list[TraceEvent]) -> list[str]:
    seen: list[str] = []
    for event in sorted(events, key=lambda e: e.t):
        if event.step is not None and event.step not in seen:
            seen.append(event.step)
    return seen


@pytest.mark.parametrize("embodiment", [1, 2])
def test_embodiment_trace_has_every_step_in_the_patents_order(
    embodiment: int, scenario_run: Callable[[str], ScenarioResult]
) -> None:
    run = scenario_run(f"embodiment{embodiment}").run
    expected = [step.code for step in embodiment_steps(embodiment)]
    assert check_step_order(run.events, embodiment) == []
    # the same, independently: the first occurrences, sorted by time, are exactly the patent's sequence
    assert first_steps(run.events) == expected
    # the three processes wrote their own labels (CP, AP or server side), merged by the shared clock origin
    sources = {e.src.value for e in run.events if e.step is not None}
    assert {"uicc", "cp", "ota"} <= sources
    if embodiment == 2:
        assert "ap" in sources
    # and each step labels the kinds of message the patent's step is (bipsim.trace.steps)
    assert mislabelled(run.events, embodiment) == []


def cat_apdus(events: list[TraceEvent]) -> list[tuple[str, bytes, str]]:
    """(expected decoding, bytes to decode as an APDU, kind) of every event whose kind is a CAT message."""
    out = []
    for event in events:
        if event.kind not in CAT_KINDS:
            continue
        name, instruction = CAT_KINDS[Kind(event.kind)]
        if instruction is not None:
            assert event.src.value == "cp" and event.data[:2] == bytes((0x80, instruction)), event
            out.append((name, event.data, event.kind))
        else:
            # a FETCH answer (proactive command + status word) after the FETCH header, as `bipsim decode` takes it
            assert event.src.value == "uicc", event
            body = event.data
            out.append((name, bytes((0x80, 0x12, 0, 0, len(body) - 2)) + body, event.kind))
    return out


@pytest.mark.parametrize("embodiment", [1, 2])
def test_every_cat_apdu_decodes(embodiment: int, scenario_run: Callable[[str], ScenarioResult]) -> None:
    run = scenario_run(f"embodiment{embodiment}").run
    apdus = cat_apdus(run.events)
    kinds = {kind for kind, _, _ in apdus}
    assert kinds == {"terminal_response", "envelope", "proactive_command"}
    for kind, data, summary in apdus:
        message = decode_as(data, "apdu")
        assert kind_of(message) == kind, summary
    # and a few through the command line itself, one of each kind, with the JSON of `bipsim decode --json`
    runner = CliRunner()
    for kind in sorted(kinds):
        _, data, summary = next(a for a in apdus if a[0] == kind)
        outcome = runner.invoke(cli, ["decode", "--as", "apdu", "--json", data.hex()])
        assert outcome.exit_code == 0, outcome.output
        assert json.loads(outcome.output)["kind"] == kind, summary


@pytest.mark.needs("chromium")
@pytest.mark.parametrize("embodiment", [1, 2])
def test_html_ladder_of_a_real_embodiment_run(
    embodiment: int, scenario_run: Callable[[str], ScenarioResult], tmp_path: Path
) -> None:
    """The HTML ladder of the merged trace of the embodiment's three processes, in headless Chromium (the
    synthetic page and the browser check are tests/test_trace_html.py's)."""
    run = scenario_run(f"embodiment{embodiment}").run
    page = tmp_path / "ladder.html"
    page.write_text(render_html(run.events, title=f"embodiment {embodiment}"), encoding="utf-8")
    check_in_chromium(page, [s.code for s in embodiment_steps(embodiment)], tmp_path)


# --- over a socat-made pty pair ----------------------------------------------------------------------------------


@pytest.mark.needs("socat")
@pytest.mark.parametrize("name", OVER_SOCAT)
def test_embodiment_over_a_socat_pair(name: str, scenario_run: Callable[[str], ScenarioResult]) -> None:
    result = scenario_run(name)  # the module's run of the embodiment, made over socat's pair
    assert result.run.config.port_a and result.run.config.port_b
    assert result.run.config.port_a.startswith("/dev/pts/") and result.run.config.port_b.startswith(
        "/dev/pts/"
    )
    assert not (result.run.directory / "ap.tty").exists()  # no built-in pair was made
    embodiment = int(name[-1])
    assert first_steps(result.run.events) == [s.code for s in embodiment_steps(embodiment)]


# --- the command line, as a user runs it -------------------------------------------------------------------------


def _listed(output: str) -> dict[str, str]:
    """`scenario list` output -> name: description, its continuation lines (indented) joined back."""
    listed: dict[str, str] = {}
    for line in output.splitlines():
        if line.startswith(" "):
            last = next(reversed(listed))
            listed[last] += " " + line.strip()
        else:
            name, _, text = line.partition(" ")
            listed[name] = text.strip()
    return listed


def test_scenario_list_names_every_scenario() -> None:
    outcome = CliRunner().invoke(cli, ["scenario", "list"])
    assert outcome.exit_code == 0
    listed = _listed(outcome.output)
    assert list(listed) == list(SCENARIOS)
    assert "two-channels" in listed and "line-drop" in listed


@pytest.mark.parametrize("columns", [60, 100, 200])
def test_scenario_list_wraps_whole_sentences_under_the_terminal_width(columns: int) -> None:
    outcome = CliRunner().invoke(cli, ["scenario", "list"], env={"COLUMNS": str(columns)})
    assert outcome.exit_code == 0
    lines = outcome.output.splitlines()
    assert max(len(line) for line in lines) <= columns
    indent = max(len(name) for name in SCENARIOS) + 2
    assert all(
        line[:indent].strip() in ("", *SCENARIOS) for line in lines
    )  # continuations hang under the text
    listed = _listed(outcome.output)
    assert listed == {name: describe(name) for name in SCENARIOS}  # nothing cut
    if columns == 60:
        assert len(lines) > len(SCENARIOS)


def test_describe_is_the_first_sentence_joined_across_lines() -> None:
    # line_drop's first sentence wraps onto its docstring's second line; the old first-line cut ended at "once in"
    assert describe("line-drop") == (
        "The serial line goes away (the pty pair closes) and comes back, twice: once after the AP attached and once"
        " in the middle of the card's session."
    )
    assert describe("ap-no-network").endswith("(TS 102 223 8.12.2) and the session ends cleanly.")
    assert describe("embodiment1").endswith("(steps S401..S415).")  # ".." and "8.12.2" end no sentence


def test_describe_stops_at_a_sentence_not_at_an_abbreviation(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(options: ScenarioOptions) -> ScenarioResult:
        """Checks a thing, e.g. the card's TR
        and its data. Then a second sentence.

        A second paragraph."""
        raise AssertionError("not run")

    def short(options: ScenarioOptions) -> ScenarioResult:
        """One paragraph without a full stop

        then another."""
        raise AssertionError("not run")

    monkeypatch.setitem(SCENARIOS, "fake", fake)
    monkeypatch.setitem(SCENARIOS, "short", short)
    assert describe("fake") == "Checks a thing, e.g. the card's TR and its data."
    assert describe("short") == "One paragraph without a full stop"


def test_campaign_builders_make_the_steps_the_ota_server_runs() -> None:
    text = campaign(
        SPN_UPDATE, ram_load("A0000005590011", "A0000005590011FF", 1500), ram_install(), RAM_STATUS
    )
    data = tomllib.loads(text)
    assert data == {
        "card": [
            {
                "iccid": "*",
                "step": [
                    {"kind": "rfm", "path": "7FFF/6F46", "data": "0142495053494D2D4F5441FFFFFFFFFFFF"},
                    {
                        "kind": "ram-load",
                        "load_file": "A0000005590011",
                        "module": "A0000005590011FF",
                        "size": 1500,
                    },
                    {
                        "kind": "ram-install",
                        "load_file": "A0000005590010",
                        "module": "A0000005590010FF",
                        "application": "A0000005590010FF01",
                    },
                    {"kind": "ram-status"},
                ],
            }
        ]
    }
    plan = Campaign.from_mapping(data, "built").plan_for("8988211000000000001", None)
    assert plan is not None and plan.kinds == ["rfm", "ram-load", "ram-install", "ram-status"]
    # UPDATE BINARY of the 17 bytes of EF_SPN, after selecting the USIM ADF and 6F46
    assert plan.scripts[0][-1] == bytes.fromhex("00D6000011") + b"\x01BIPSIM-OTA" + b"\xff" * 6
    assert tomllib.loads(applet_download(12000))["card"][0]["step"][1]["size"] == 12000


def test_unknown_scenario_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    # through the console script's entry point in this process (the command-line test above starts a real one)
    with pytest.raises(SystemExit) as exit_:
        main(["scenario", "run", "no-such-scenario"])
    assert exit_.value.code not in (0, None)
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and "no scenario 'no-such-scenario'" in stderr


def test_sms_trigger_goes_to_the_card_as_sms_pp_download_and_its_por_comes_back(
    scenario_run: Callable[[str], ScenarioResult],
) -> None:
    """AT%SMSPP on DLC 1 -> ENVELOPE 'D1' (device identities network -> UICC) -> 61 xx -> GET RESPONSE class 00 ->
    the PoR in the %SMSPP answer, before the card's first OPEN CHANNEL."""
    events = scenario_run("sms-trigger").run.events
    apdus = [e for e in events if e.layer.value == "apdu"]
    index = next(i for i, e in enumerate(apdus) if e.kind == Kind.CAT_ENVELOPE)
    assert apdus[index].field("envelope") == "sms_pp_download"
    envelope = apdus[index].data
    assert envelope[5] == 0xD1 and bytes.fromhex("82028381") in envelope
    assert apdus[index + 1].data[:1] == b"\x61"
    assert apdus[index + 2].data[:2] == b"\x00\xc0"  # GET RESPONSE in class 00 (TS 102 221 10.1.1)
    assert apdus[index + 3].data[-2:-1] == b"\x91"  # the PoR, and the card has its OPEN CHANNEL ready
    first_open = next(i for i, e in enumerate(apdus) if e.field("command") == "OPEN CHANNEL")
    assert first_open > index


def test_scenario_run_from_the_command_line_into_a_kept_folder_of_an_earlier_run(tmp_path: Path) -> None:
    """`scenario run NAME --trace F --keep DIR`, as a user runs it, into a folder that already holds a run: the card
    starts from its profile, not from the saved card.json, and no stale server results or traces leak into the new
    run's result. This run is also server-refuses' run in the suite (FROM_THE_COMMAND_LINE): exit 0 is the
    scenario's own checks passed, and the registry test's checks are made on its files."""
    trace = tmp_path / "run.jsonl"
    keep = tmp_path / "kept"
    keep.mkdir()
    (keep / "card.json").write_text('{"stale": true}')
    (keep / "results.json").write_text('{"iccid:stale": {"completed": true, "all_ok": true}}')
    (keep / "ota.jsonl").write_text(
        '{"t": 0, "src": "ota", "dst": "cp", "layer": "tcp", "summary": "stale"}\n'
    )
    unrelated = keep / "notes.txt"
    unrelated.write_text("mine")
    process = subprocess.run(
        [sys.executable, "-m", "bipsim", "scenario", "run", "server-refuses", "--trace", str(trace)]
        + ["--keep", str(keep)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 0, process.stderr
    assert re.fullmatch(r"scenario server-refuses: passed in [\d.]+ s, \d+ trace events\n", process.stdout)
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert events and all({"t", "src", "dst", "layer", "summary"} <= set(e) for e in events)
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)  # merged by the shared clock
    assert any(e["layer"] == "apdu" for e in events)
    assert (keep / "cp.log").exists() and (keep / "cp.jsonl").exists() and (keep / "ap.jsonl").exists()
    state = json.loads((keep / "card.json").read_text())
    assert "stale" not in state and state  # saved afresh by this run's card
    assert not (keep / "results.json").exists()  # server-refuses runs no server: nothing may claim results
    assert not (keep / "ota.jsonl").exists()
    assert unrelated.read_text() == "mine"  # only the harness's own files are cleared


async def test_waiting_for_an_event_of_a_process_that_exited_ends_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A hook waiting on a process that crashed (a bad option, an import error) learns it at once instead of
    waiting out its timeout: the run fails fast with the process's log, not after a minute per wait."""
    harness = Harness(RunConfig(), tmp_path)
    async with trio.open_nursery() as nursery:
        await harness._start("ap", [sys.executable, "-c", "print('ap: crashed at start')"], nursery)
    start = trio.current_time()
    got = await harness.wait_for_event("ap", EventQuery(Kind.AT_COMMAND), timeout=3600)
    assert got is None
    assert trio.current_time() - start < 1  # virtual time: it did not wait out the hour
    assert "crashed at start" in (tmp_path / "ap.log").read_text()


def test_sms_trigger_bad_mac_stops_once_a_poll_after_the_push_finds_the_card_idle() -> None:
    """The bad-MAC run ends on the event that proves no session is coming (a STATUS poll answered plain 90 00 after
    the SMS-PP DOWNLOAD envelope), not after a delay; a 91 xx answer (a command pending) does not end it."""
    envelope = {"kind": Kind.CAT_ENVELOPE, "src": "cp", "fields": {"envelope": "sms_pp_download"}}
    poll = {"kind": Kind.APDU_COMMAND, "src": "cp", "hex": "80F2000C00"}
    idle = {"kind": Kind.APDU_RESPONSE, "src": "uicc", "hex": "9000", "fields": {"sw": "9000"}}
    pending = {"kind": Kind.APDU_RESPONSE, "src": "uicc", "hex": "910F", "fields": {"sw": "910F"}}
    between = {"kind": Kind.AT_COMMAND, "src": "ap", "hex": "41540D"}
    assert not card_idle_after_the_push([poll, idle])  # before the push: proves nothing
    assert not card_idle_after_the_push([envelope, idle])  # an answer to no poll
    assert not card_idle_after_the_push([envelope, poll, pending])
    assert card_idle_after_the_push([envelope, poll, between, idle])
    assert card_idle_after_the_push([envelope, poll, pending, poll, idle])
