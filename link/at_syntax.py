"""ITU-T V.250 command-line syntax with the 3GPP TS 27.007 extensions, sans-IO.

- Line assembly (V.250 section 5.2): characters up to S3 (CR), S5 (backspace) edits, "A/" repeats the last line,
  characters before the "AT" prefix are ignored (section 5.2.1).
- Parsing (sections 5.3-5.4): "AT" prefix, basic commands (E0, V1, Q0, Z, I, &F, S3=13, S3?), extended commands with
  a "+" or a vendor's "%" or "#" prefix (V.250 5.4.1 leaves other prefixes to manufacturers; Telit's are "#") in
  their four forms: action/execute "+X", read "+X?", test "+X=?", set "+X=<args>", concatenated with ";".
  Arguments are numbers, quoted strings with 27.007 "\\XX" escapes, or omitted.
- Result formatting (section 5.7): verbose ("<CR><LF>OK<CR><LF>") or numeric ("0<CR>"), quiet suppression.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

AtArg = str | int | None


class CommandKind(Enum):
    EXEC = "exec"
    READ = "read"
    TEST = "test"
    SET = "set"


@dataclass(frozen=True)
class AtRequest:
    """One command of a command line. `name` is upper case: "+CGMI", "%GETNET", "E", "&F", "S3"."""

    name: str
    kind: CommandKind
    args: tuple[AtArg, ...]
    raw: str


class AtSyntaxError(ValueError):
    pass


NUMERIC_RESULTS = {
    "OK": 0,
    "CONNECT": 1,
    "RING": 2,
    "NO CARRIER": 3,
    "ERROR": 4,
    "NO DIALTONE": 6,
    "BUSY": 7,
    "NO ANSWER": 8,
}
FINAL_RESULTS = ("OK", "ERROR", "NO CARRIER", "CONNECT", "BUSY", "NO ANSWER", "NO DIALTONE")
LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")  # basic command names (V.250 section 5.3.1)
DIGITS = frozenset("0123456789")  # V.250 digits are ASCII ("²".isdigit() is true, int("²") fails)
EXTENDED_NAME_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!%-./:_")


def quote(text: str) -> str:
    """A 27.007 string constant: double quotes, with '"', '\\' and control characters as \\XX escapes."""
    out = []
    for ch in text:
        if ch in '"\\' or ord(ch) < 0x20:
            out.append(f"\\{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def parse_args(text: str) -> tuple[AtArg, ...]:
    """Comma-separated values: numbers become int, quoted strings str (escapes decoded), empty None."""
    args: list[AtArg] = []
    i = 0
    n = len(text)
    while True:
        while i < n and text[i] == " ":
            i += 1
        if i < n and text[i] == '"':
            i += 1
            out = []
            while True:
                if i >= n:
                    raise AtSyntaxError("unterminated string")
                ch = text[i]
                if ch == '"':
                    i += 1
                    break
                if ch == "\\":
                    digits = text[i + 1 : i + 3]
                    try:
                        out.append(chr(int(digits, 16)))
                    except ValueError as exc:
                        raise AtSyntaxError(f"bad escape \\{digits}") from exc
                    i += 3
                    continue
                out.append(ch)
                i += 1
            args.append("".join(out))
        else:
            start = i
            while i < n and text[i] != ",":
                i += 1
            token = text[start:i].strip()
            if not token:
                args.append(None)
            else:
                try:
                    args.append(int(token, 10))
                except ValueError:
                    args.append(token)  # unquoted string constant (e.g. hex data of +CSIM)
        while i < n and text[i] == " ":
            i += 1
        if i >= n:
            break
        if text[i] != ",":
            raise AtSyntaxError(f"unexpected {text[i]!r} after an argument")
        i += 1
    if args == [None]:
        return ()
    return tuple(args)


def _split_extended(body: str, start: int) -> tuple[str, int]:
    """The extended command starting at `start` up to an unquoted ';' (or the end)."""
    i = start
    quoted = False
    while i < len(body):
        ch = body[i]
        if ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            return body[start:i], i + 1
        i += 1
    if quoted:
        raise AtSyntaxError("unterminated string")
    return body[start:], i


def parse_line(line: str) -> list[AtRequest]:
    """Parses one command line (with or without its "AT" prefix removed? with it). Raises AtSyntaxError."""
    text = line.strip()
    if text[:2].upper() != "AT":
        raise AtSyntaxError("a command line starts with AT")
    body = text[2:]
    out: list[AtRequest] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch in " ;":
            i += 1
            continue
        if ch in "+%#":
            segment, i = _split_extended(body, i)
            j = 1
            while j < len(segment) and segment[j].upper() in EXTENDED_NAME_CHARS and segment[j] not in "=?":
                j += 1
            name = segment[:j].upper()
            if len(name) < 2:
                raise AtSyntaxError(f"empty extended command name in {segment!r}")
            rest = segment[j:]
            if rest == "":
                out.append(AtRequest(name, CommandKind.EXEC, (), segment))
            elif rest == "?":
                out.append(AtRequest(name, CommandKind.READ, (), segment))
            elif rest == "=?":
                out.append(AtRequest(name, CommandKind.TEST, (), segment))
            elif rest.startswith("="):
                out.append(AtRequest(name, CommandKind.SET, parse_args(rest[1:]), segment))
            else:
                raise AtSyntaxError(f"unexpected {rest!r} after {name}")
            continue
        start = i
        upper = ch.upper()
        if upper == "D":
            # V.250 6.3.1: D takes the rest of the line as its dial string; a ";" ending it (27.007 6.2: a voice
            # call) stays in the argument, so the handler tells ATD<n>; from a data call
            out.append(AtRequest("D", CommandKind.SET, (body[i + 1 :].strip(),), body[start:]))
            break
        if upper == "S" and i + 1 < len(body) and body[i + 1] in DIGITS:
            i += 1
            while i < len(body) and body[i] in DIGITS:
                i += 1
            name = body[start:i].upper()
            if i < len(body) and body[i] == "?":
                i += 1
                out.append(AtRequest(name, CommandKind.READ, (), body[start:i]))
            elif i < len(body) and body[i] == "=":
                i += 1
                num_start = i
                while i < len(body) and body[i] in DIGITS:
                    i += 1
                value = int(body[num_start:i]) if i > num_start else None
                out.append(AtRequest(name, CommandKind.SET, (value,), body[start:i]))
            else:
                raise AtSyntaxError(f"S-register {name} needs ? or =")
            continue
        if upper == "&" and i + 1 < len(body):
            name = "&" + body[i + 1].upper()
            i += 2
        elif upper in LETTERS:
            name = upper
            i += 1
        else:
            raise AtSyntaxError(f"unexpected {ch!r}")
        num_start = i
        while i < len(body) and body[i] in DIGITS:
            i += 1
        if i > num_start:
            out.append(AtRequest(name, CommandKind.SET, (int(body[num_start:i]),), body[start:i]))
        elif i < len(body) and body[i] == "?" and name not in ("&F",):
            i += 1
            out.append(AtRequest(name, CommandKind.READ, (), body[start:i]))
        else:
            out.append(AtRequest(name, CommandKind.EXEC, (), body[start:i]))
    return out


def command_fields(line: str) -> dict[str, Any]:
    """Trace fields naming a command line: `command` ("+CMUX", "%GETNET", "E" for ATE0, "" for a bare AT) and,
    for the proxy dialect (docs/protocols.md), its `channel`."""
    try:
        requests = parse_line(line)
    except AtSyntaxError:
        return {"command": prefix_of(line)}
    if not requests:
        return {"command": ""}
    first = requests[0]
    out: dict[str, Any] = {"command": first.name}
    if first.name.startswith("%") and first.args and isinstance(first.args[0], int):
        out["channel"] = first.args[0]
    return out


def prefix_of(command: str) -> str:
    """The response prefix of a command (27.007 section 4.1): AT+CREG? -> +CREG."""
    body = command[2:] if command[:2].upper() == "AT" else command
    end = 0
    while end < len(body) and body[end] not in "=?;":
        end += 1
    return body[:end].upper()


# The longest line any reader of the project keeps, in characters, stated once here. V.250 section 5.2.1 asks a DCE
# for a command line buffer of at least 40 characters; we allow 4096 (a +CSIM/+CGLA of a long APDU in hex fits).
# Past it the AT server answers ERROR (AtServer), a chat drops the line (AtChatCore): each with an at.error event.
MAX_LINE = 4096


class OverlongLine(str):
    """A line cut off at MAX_LINE characters: its first MAX_LINE characters, and in `length` how long it was.
    The DCE answers ERROR instead of executing its start; a DTE drops it."""

    length: int = 0


_EOL = re.compile(rb"[\r\n]")


class ResponseSplitter:
    """Splits what a DCE sends into lines (V.250 section 5.7.1: text and result codes end with S3 S4, CR LF),
    bounded: a line keeps at most `max_line` characters, and a longer one comes out as an OverlongLine when it
    ends. Each byte is looked at once (`scanned` counts them), so a runaway line costs linear time and at most
    `max_line` bytes of memory however long it runs. Empty lines (the CR LF around verbose results) are skipped;
    lines come out stripped, decoded as latin-1."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buffer = bytearray()  # the start of the line being read, at most max_line bytes
        self._length = 0  # its length so far, counting what was not kept
        self.scanned = 0  # bytes examined in all

    @property
    def buffered(self) -> int:
        """Bytes held for the line not yet ended."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray) -> list[str]:
        out: list[str] = []
        pos, end = 0, len(data)
        while pos < end:
            match = _EOL.search(data, pos)
            cut = match.start() if match else end
            self.scanned += cut - pos + (1 if match else 0)
            room = self.max_line + 1 - len(self._buffer)  # one past the bound marks the line as too long
            if room > 0:
                self._buffer += data[pos : min(cut, pos + room)]
            self._length += cut - pos
            if match is None:
                break
            pos = cut + 1
            line = self._end_line()
            if line:
                out.append(line)
        return out

    def _end_line(self) -> str:
        raw, length = bytes(self._buffer), self._length
        self._buffer.clear()
        self._length = 0
        if length > self.max_line:
            line = OverlongLine(raw[: self.max_line].decode("latin-1"))
            line.length = length
            return line
        return raw.decode("latin-1").strip()


class LineAssembler:
    """Collects DTE characters into command lines (V.250 section 5.2.1). `feed` returns completed lines;
    echo bytes to send back are in `echo` after each feed. A line starts at its "AT"/"at" prefix: characters
    before it (a stray flag byte after a CMUX close-down, line noise) are echoed but not part of the line;
    "A/" before any prefix repeats the last line."""

    def __init__(self) -> None:
        self.s3 = 13
        self.s5 = 8
        self._buffer = bytearray()
        self._start: int | None = None  # where the "AT" prefix of the line being collected starts
        self._overflow = 0  # length so far of a line past MAX_LINE, 0 while within it
        self.last_line = ""
        self.echo = bytearray()

    def feed(self, data: bytes | bytearray) -> list[str]:
        lines: list[str] = []
        echo = bytearray()
        pos = 0
        while pos < len(data):
            line, pos = self.feed_line(data, pos)
            echo += self.echo
            if line is not None:
                lines.append(line)
        self.echo[:] = echo
        return lines

    def feed_line(self, data: bytes | bytearray, start: int = 0) -> tuple[str | None, int]:
        """Consumes `data` from `start` up to the end of the next command line: returns (the line, the index just
        past it), or (None, len(data)) when no line ended. `echo` holds the echo of the bytes consumed."""
        self.echo.clear()
        index = start
        while index < len(data):
            if self._overflow:  # a runaway line: skip to its S3 in one search, not byte by byte
                cut = data.find(self.s3, index)
                stop = len(data) if cut < 0 else cut
                kept = bytes(data[index:stop]).replace(b"\n", b"").replace(b"\0", b"")
                self.echo += kept
                self._overflow += len(kept)
                index = stop
                if cut < 0:
                    break
            line = self._byte(data[index])
            index += 1
            if line is not None:
                return line, index
        return None, len(data)

    def _byte(self, byte: int) -> str | None:
        if byte == self.s3:
            self.echo.append(byte)
            start, self._start = self._start, None
            text = self._buffer[start or 0 :].decode("latin-1")
            self._buffer.clear()
            if self._overflow:
                line = OverlongLine(text)
                line.length, self._overflow = self._overflow, 0
                return line
            if start is not None:
                self.last_line = text  # what "A/" repeats: a command line, not noise
            return text if text.strip() else None
        if byte == self.s5:
            if self._buffer:
                self._buffer.pop()
                if self._start is not None and len(self._buffer) < self._start + 2:
                    self._start = None
                self.echo += bytes((byte, 0x20, byte))
            return None
        if byte == 10 or byte == 0:  # LF after CR, NUL padding
            return None
        self.echo.append(byte)
        if self._overflow:  # a runaway line: count it, keep its start, answer it at S3
            self._overflow += 1
            return None
        self._buffer.append(byte)
        if self._start is None and len(self._buffer) >= 2:
            pair = bytes(self._buffer[-2:]).upper()
            if pair == b"AT":
                self._start = len(self._buffer) - 2
            elif pair == b"A/":
                self._buffer.clear()
                return self.last_line or None
        if len(self._buffer) > MAX_LINE:
            del self._buffer[MAX_LINE:]
            self._overflow = MAX_LINE + 1
        return None


@dataclass
class Formatter:
    """Result formatting for the current E/V/Q settings (V.250 section 5.7)."""

    verbose: bool = True
    quiet: bool = False
    s3: int = 13
    s4: int = 10

    def info(self, text: str) -> bytes:
        cr, lf = chr(self.s3), chr(self.s4)
        if self.verbose:
            return f"{cr}{lf}{text}{cr}{lf}".encode("latin-1", errors="replace")
        return f"{text}{cr}{lf}".encode("latin-1", errors="replace")

    def result(self, text: str) -> bytes:
        if self.quiet:
            return b""
        cr, lf = chr(self.s3), chr(self.s4)
        if self.verbose:
            return f"{cr}{lf}{text}{cr}{lf}".encode("latin-1", errors="replace")
        code = NUMERIC_RESULTS.get(text)
        return (f"{code}{cr}" if code is not None else f"{text}{cr}{lf}").encode("latin-1", errors="replace")
