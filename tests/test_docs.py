"""docs/ matches what the code emits (docs/protocols.md, "Traces"): every trace example in docs/ is read by the
trace reader, every kind the docs name is in the catalogue (bipsim.trace.kinds) and every kind of the catalogue, every
layer and every actor has its place in the docs."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.reader import parse_lines

DOCS = Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
KIND = re.compile(r"`([a-z][a-z0-9]*\.[a-z_]+)`")  # es9.* has a digit


def _traces_section() -> str:
    text = (DOCS / "protocols.md").read_text(encoding="utf-8")
    start = text.index("## Traces\n")
    return text[start : text.index("\n## ", start + 1)]


def trace_examples() -> list[tuple[Path, str]]:
    """(file, line) of every line in a json/jsonl block of docs/ that is a trace event (a JSON object with t and
    src)."""
    out = []
    for path in sorted(DOCS.glob("*.md")):
        for language, body in FENCE.findall(path.read_text(encoding="utf-8")):
            if language not in ("json", "jsonl", ""):
                continue
            for line in body.splitlines():
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict) and "t" in obj and "src" in obj:
                    out.append((path, line))
    return out


def test_every_trace_example_in_docs_is_read_by_the_reader() -> None:
    examples = trace_examples()
    assert len(examples) >= 3, "docs/protocols.md shows trace events"
    for path, line in examples:
        (event,) = parse_lines([line], str(path))  # raises TraceFormatError with the reason
        assert event.kind in set(Kind), f"{path.name}: kind {event.kind!r} is not in bipsim.trace.kinds"
        assert event.kind, f"{path.name}: an example without a kind"


def test_the_kinds_the_docs_name_are_the_catalogue() -> None:
    section = _traces_section()
    table = [row for row in section.splitlines() if row.startswith("| `") and "." in row.split("|")[1]]
    named = {kind for row in table for kind in KIND.findall(row.split("|")[1])}
    catalogue = {kind.value for kind in Kind}
    missing = sorted(catalogue - named)
    unknown = sorted(named - catalogue)
    assert not unknown, f"docs/protocols.md names kinds that nothing emits: {unknown}"
    assert not missing, f"add a row to docs/protocols.md (Traces) for the kinds {missing}"


def test_the_layers_and_actors_the_docs_list_are_the_events() -> None:
    rows = {
        row.split("|")[1].strip(): row.split("|")[2]
        for row in _traces_section().splitlines()
        if row.startswith("| `")
    }
    layers = set(re.findall(r"`(\w+)`", rows["`layer`"].split(";")[0]))
    assert layers == {layer.value for layer in Layer}
    actors = set(re.findall(r"`(\w+)`", rows["`src`, `dst`"]))
    assert actors == {actor.value for actor in Actor}
