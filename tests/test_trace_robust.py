"""`bipsim trace render|pcap|replay` on traces that are not traces (issue 13): one line on stderr naming the file,
the line and what is wrong, exit 2, no traceback; an empty trace is an error, never silence."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bipsim.trace.reader import MAX_LINE_BYTES, TraceFormatError, read_file

GOOD = {"t": 0.1, "src": "cp", "dst": "uicc", "layer": "apdu", "kind": "cat.fetch", "summary": "FETCH"}


def line(**changes: object) -> bytes:
    return json.dumps(GOOD | changes).encode() + b"\n"


# name -> (the file's bytes, a word the message must hold, the line number it must name)
BAD: dict[str, tuple[Callable[[], bytes], str, int]] = {
    "binary junk": (lambda: line() + bytes(range(255, -1, -1)) * 4, "UTF-8", 2),
    "invalid UTF-8": (lambda: line() + b'{"t": 0.2, "summary": "\xff\xfe"}\n', "UTF-8", 2),
    "deep nesting": (lambda: b"[" * 200_000 + b"]" * 200_000 + b"\n", "nested", 1),
    "numeric step": (lambda: line() + line(step=5), "step", 2),
    "NaN t": (lambda: line(t=0.0).replace(b"0.0", b"NaN"), "NaN", 1),
    "Infinity t": (lambda: line() + line(t=0.0).replace(b"0.0", b"Infinity"), "Infinity", 2),
    "overflowing t": (lambda: line(t=0.0).replace(b"0.0", b"1e999"), "finite", 1),
    "huge hex": (lambda: line() + line(hex="AB" * (MAX_LINE_BYTES // 2 + 1)), "longer than", 2),
    "odd hex": (lambda: line(hex="ABC"), "hex", 1),
    "unknown layer": (lambda: line(layer="cat"), "layer", 1),
    "not an object": (lambda: b"[1, 2]\n", "object", 1),
}


def bipsim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bipsim", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("name", sorted(BAD))
def test_reader_names_the_line_and_what_is_wrong(name: str, tmp_path: Path) -> None:
    content, word, number = BAD[name]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content())
    with pytest.raises(TraceFormatError) as caught:
        read_file(path)
    assert caught.value.problem.line == number and word in caught.value.problem.reason
    problems: list[object] = []
    read_file(path, problems)  # type: ignore[arg-type]
    assert problems, "a lenient read reports the line too"


@pytest.mark.parametrize(
    "name", ["binary junk", "invalid UTF-8", "deep nesting", "numeric step", "NaN t", "huge hex"]
)
@pytest.mark.parametrize("command", ["render", "pcap", "replay"])
def test_cli_exits_2_with_one_line(name: str, command: str, tmp_path: Path) -> None:
    content, word, number = BAD[name]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content())
    extra = {"render": [], "pcap": ["-o", str(tmp_path / "out.pcap")], "replay": ["--as", "card"]}[command]
    result = bipsim("trace", command, str(path), *extra)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{path}:{number}:" in lines[0] and word in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["render", "pcap", "replay"])
def test_an_empty_trace_is_an_error_not_silence(command: str, tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    extra = {"render": [], "pcap": ["-o", str(tmp_path / "out.pcap")], "replay": ["--as", "card"]}[command]
    result = bipsim("trace", command, str(path), *extra)
    assert result.returncode == 2
    assert str(path) in result.stderr and "empty" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.pcap").exists()


def test_skip_invalid_warns_per_line_and_renders_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(line() + b"\xff\n" + line(t=0.2, summary="FETCH again"))
    result = bipsim("trace", "render", "--skip-invalid", "--all", str(path))
    assert result.returncode == 0
    assert f"{path}:2:" in result.stderr and "FETCH again" in result.stdout


@pytest.mark.parametrize(("option", "word"), [("--session=e9", "sessions: e1"), ("--layers=tcp", "no event")])
def test_a_filter_that_leaves_nothing_says_so(option: str, word: str, tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(line(session="e1"))
    result = bipsim("trace", "render", option, str(path))
    assert result.returncode == 2 and word in result.stderr and result.stdout == ""
