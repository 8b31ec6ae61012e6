"""The trace recorder's batching (trace/recorder.py, docs/protocols.md "Traces"): the same JSON lines as one
json.dumps per event written at once, queued events written by the emitting thread at BATCH_EVENTS, by the flusher
thread within FLUSH_INTERVAL, at close and at exit; a process killed with SIGKILL keeps every line it had time to
flush, whole.

Run as a script (`python tests/test_trace_recorder.py PATH COUNT HOW`) this file is the traced process of the exit
tests: it emits COUNT events to PATH, says "emitted", then ends as HOW says (exit, force, wait).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bipsim.trace import recorder
from bipsim.trace.events import TraceEvent
from bipsim.trace.recorder import BATCH_EVENTS, FLUSH_INTERVAL, Tracer, flush_all

DEADLINE = 20.0  # seconds a test waits for another thread or process before it fails


def emit_mix(tracer: Tracer, count: int) -> None:
    """A mix of what the CP records: APDUs with fields, text with non-ASCII and quotes, errors, steps."""
    fields = {"sw": "9000"}
    for i in range(count):
        if i % 4 == 0:
            tracer.emit("cp", "uicc", "apdu", "FETCH", bytes((0x80, 0x12, 0, 0, i & 0xFF)), kind="cat.fetch")
        elif i % 4 == 1:
            tracer.emit("uicc", "cp", "apdu", f"answer {i}", b"\x90\x00", kind="apdu.response", fields=fields)
            fields["sw"] = (
                f"91{i & 0xFF:02X}"  # the caller reuses its dict: the line keeps what it was at emit
            )
        elif i % 4 == 2:
            tracer.emit("ap", "cp", "at", 'AT%NETPAR "é\\\n"', b'"\xc3\xa9"\r', step="S403", kind="at.info")
        else:
            tracer.emit(
                "ota", "ap", "tcp", "refused", error=True, kind="tcp.error", fields={"n": [1, 2.5, None]}
            )


def old_line(event: TraceEvent) -> str:
    """A line as the recorder wrote it before batching: one json.dumps per event."""
    return json.dumps(event.to_dict(), separators=(", ", ": "), ensure_ascii=False)


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def wait_for_lines(path: Path, count: int) -> list[str]:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        lines = lines_of(path)
        if len(lines) >= count:
            return lines
        time.sleep(0.01)
    raise AssertionError(f"{path} has {len(lines_of(path))} lines, not {count}, after {DEADLINE} s")


def test_a_batched_file_holds_the_same_lines_as_one_write_per_event(tmp_path: Path) -> None:
    clock = iter(x / 1000 for x in range(10_000)).__next__
    path = tmp_path / "t.jsonl"
    batched = Tracer.to_file(path, session="e2", origin=0.0, clock=clock, keep=True)
    emit_mix(batched, 3 * BATCH_EVENTS + 7)
    batched.close()
    expected = [old_line(event) for event in batched.events]
    assert lines_of(path) == expected
    sink = io.StringIO()
    at_once = Tracer(sink, session="e2", origin=0.0, clock=iter(x / 1000 for x in range(10_000)).__next__)
    emit_mix(at_once, 3 * BATCH_EVENTS + 7)
    assert path.read_text(encoding="utf-8") == sink.getvalue()
    assert json.loads(expected[1])["fields"] == {"sw": "9000"}  # as the dict was when emitted
    assert all(TraceEvent.from_json(line).to_json() == line for line in expected)


def test_the_emitting_thread_writes_a_full_batch_and_close_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    tracer = Tracer.to_file(path, batch=10)
    recorder._Flusher.unregister(
        tracer
    )  # no flusher thread for this one: only the batch size and close write
    emit_mix(tracer, 9)
    assert lines_of(path) == []
    emit_mix(tracer, 1)
    assert len(lines_of(path)) == 10  # written before emit returned
    emit_mix(tracer, 3)
    assert len(lines_of(path)) == 10
    tracer.flush()
    assert len(lines_of(path)) == 13
    emit_mix(tracer, 2)
    tracer.close()
    assert len(lines_of(path)) == 15
    tracer.emit("cp", "uicc", "apdu", "after close")  # nowhere to write: ignored, as before
    assert len(lines_of(path)) == 15


def test_the_flusher_writes_a_quiet_tracer_s_queue(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    tracer = Tracer.to_file(path)
    emit_mix(tracer, 5)
    assert len(wait_for_lines(path, 5)) == 5  # the process goes on, nothing more is emitted: still written
    tracer.close()


def test_threads_emitting_at_once_leave_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    tracer = Tracer.to_file(path, batch=7)
    threads = [threading.Thread(target=emit_mix, args=(tracer, 500)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tracer.close()
    lines = lines_of(path)
    assert len(lines) == 2000 and all(TraceEvent.from_json(line) for line in lines)


def traced_process(path: Path, count: int, how: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, str(path), str(count), how],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_process_that_exits_without_closing_writes_its_queue(tmp_path: Path) -> None:
    for how in ("exit", "force"):
        path = tmp_path / f"{how}.jsonl"
        process = traced_process(path, 40, how)
        out, _ = process.communicate(timeout=DEADLINE)
        assert process.returncode == (0 if how == "exit" else 3) and "emitted" in out
        assert len(lines_of(path)) == 40, how


def test_sigkill_keeps_every_line_flushed_before_it(tmp_path: Path) -> None:
    path = tmp_path / "killed.jsonl"
    process = traced_process(path, 40, "wait")
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "emitted"
    lines = wait_for_lines(path, 40)  # the flusher thread wrote them while the process waits
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=DEADLINE)
    assert lines_of(path) == lines and all(TraceEvent.from_json(line) for line in lines)


def test_a_forked_child_does_not_write_its_parent_s_queue_again(tmp_path: Path) -> None:
    path = tmp_path / "forked.jsonl"
    tracer = Tracer.to_file(path, batch=1000)
    recorder._Flusher.unregister(tracer)  # the queue stays queued until the test says
    recorder._Flusher._tracers.add(tracer)  # ... but the fork hook sees it
    emit_mix(tracer, 5)
    pid = os.fork()
    if pid == 0:  # the child: a flush of its own writes only what it emitted itself
        try:
            tracer.emit("cp", "uicc", "apdu", "child", kind="app.event")
            tracer.flush()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    recorder._Flusher.unregister(tracer)
    tracer.close()
    summaries = [json.loads(line)["summary"] for line in lines_of(path)]
    assert len(summaries) == 6 and summaries.count("child") == 1


def main(path: str, count: int, how: str) -> None:
    if how != "wait":
        recorder.FLUSH_INTERVAL = 3600  # the flusher thread sleeps: only the exit hook or flush_all can write
    tracer = Tracer.to_file(path)
    emit_mix(tracer, count)
    print("emitted", flush=True)
    if how == "force":
        flush_all()  # what the SIGTERM watchdog does before its forced exit
        os._exit(3)
    if how == "wait":
        time.sleep(DEADLINE + FLUSH_INTERVAL)  # the test kills it long before this
    sys.exit(0)  # no close: the exit hook writes the queue


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
