"""Fuzzing the trace reader (trace/events.py TraceEvent.from_json / from_dict, trace/reader.py parse_lines and
read_file): any line or file gives events and problems, never an exception, and every accepted event is one the
recorder could have written (finite `t`, string `step`, hex digits in `hex`) and writes back to itself."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import targets
from tests.fuzz._settings import bounded, fuzz_settings

GOOD: dict[str, Any] = {
    "t": 1.5,
    "src": "cp",
    "dst": "uicc",
    "layer": "apdu",
    "kind": "apdu.command",
    "summary": "FETCH",
    "hex": "80120000",
    "step": "S401",
    "session": "e1",
    "fields": {"channel": 1},
}

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(
            allow_nan=False, allow_infinity=False
        ),  # JSON numbers (NaN and 1e999 come in the lines below)
        st.text(max_size=10),
        st.sampled_from(["cp", "uicc", "apdu", "0A1b", "xyz", "0", "S401"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def event_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A good event with some keys dropped or given other JSON values."""
    obj = dict(GOOD)
    for key in draw(st.lists(st.sampled_from([*GOOD, "error", "extra"]), max_size=4)):
        if draw(st.booleans()):
            obj.pop(key, None)
        else:
            obj[key] = draw(json_values)
    return obj


@fuzz_settings(120)
@given(event_objects())
def test_trace_objects(obj: dict[str, Any]) -> None:
    with bounded(5):
        targets.trace_object(obj)


lines = st.one_of(
    event_objects().map(json.dumps),
    # numbers JSON cannot hold as a float: NaN, Infinity (Python's json writes them), 1e999 (read as inf)
    st.tuples(
        event_objects().map(json.dumps), st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
    ).map(lambda pair: pair[0].replace("1.5", pair[1], 1).replace("{}", '{"x": ' + pair[1] + "}", 1)),
    st.text(max_size=60),
    st.integers(0, 3000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(0, 3000).map(lambda depth: '{"t": ' + "[" * depth + "1" + "]" * depth + "}"),
)


@fuzz_settings(100)
@given(lines)
def test_trace_lines(line: str) -> None:
    with bounded(5):
        targets.trace_line(line)


@fuzz_settings(30)
@given(
    st.lists(
        st.one_of(lines.map(lambda s: s.encode("utf-8", "surrogatepass")), st.binary(max_size=40)), max_size=5
    )
)
def test_trace_files(parts: list[bytes]) -> None:
    with bounded(5):
        targets.trace_file(b"\n".join(parts))


@st.composite
def recorded(draw: st.DrawFn) -> dict[str, Any]:
    """An event as the AP, CP or card records it: the same few messages seen from both ends, at nearby times."""
    obj = dict(GOOD)
    obj["t"] = draw(st.sampled_from([0.0, 0.001, 1.0, 1.002, 7.5]))
    obj["src"], obj["dst"] = draw(
        st.sampled_from([("cp", "uicc"), ("uicc", "cp"), ("ap", "cp"), ("cp", "ap")])
    )
    obj["layer"] = draw(st.sampled_from(["apdu", "at", "cmux", "tcp"]))
    obj["hex"] = draw(st.sampled_from(["80120000", "0D0A4F4B0D0A", "41540D", None]))
    obj["fields"] = draw(
        st.one_of(
            st.none(),
            st.dictionaries(st.sampled_from(["t_src", "t_dst", "channel"]), json_values, max_size=2),
        )
    )
    return {k: v for k, v in obj.items() if v is not None}


@fuzz_settings(40)
@given(
    st.lists(
        st.lists(st.one_of(recorded().map(json.dumps), lines), max_size=6).map("\n".join),
        min_size=1,
        max_size=3,
    )
)
def test_trace_merge(files: list[str]) -> None:
    with bounded(5):
        targets.trace_merge([text.encode("utf-8", "surrogatepass") for text in files])
