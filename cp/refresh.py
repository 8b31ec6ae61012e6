"""The terminal's handling of a proactive REFRESH (ETSI TS 102 223 sections 6.4.7 and 8.6, 8.18; 3GPP TS 31.111
for a 3G terminal), sans-IO: what a REFRESH asks the modem to do, and the TERMINAL RESPONSE it gets.

The modem carries REFRESH out itself (the terminal profile's byte 3 bit 8 says so; a host's toolkit never sees it).
Modes (the command qualifier, section 8.6):
- 04 UICC Reset and 09 eUICC Profile State Change (GSMA SGP.22 3.2.1: the eUICC switched its enabled profile): the
  terminal resets the UICC and starts it again as after power-on (ATR, TERMINAL PROFILE, the NAA's files); the
  proactive session ends with the reset, so no TERMINAL RESPONSE is sent; open BIP channels end as on a reset;
- 00, 02, 03 (NAA Initialization variants), 05 NAA Application Reset, 06 NAA Session Reset: the NAA is initialised
  again (its files read again) and the TR "command performed successfully" follows;
- 01 File Change Notification: the terminal's copies of the listed files are dropped (read again at their next use)
  and the TR follows;
- 07, 08 (Steering of Roaming): beyond this terminal's capabilities (0x30).
A File List (section 8.18: the number of files, then each file's full path from 3F00) that does not parse is
"command data not understood by terminal" (0x32); a mode that needs one (01, 02) without it "error, required values
are missing" (0x36).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from bipsim.uicc.cat import GeneralResult, ProactiveCommand, Tag, TerminalResponse

MF = b"\x3f\x00"


class RefreshMode(IntEnum):
    """The REFRESH command qualifier (TS 102 223 section 8.6; 09 since Release 13)."""

    NAA_INIT_FULL_FCN = 0x00
    FILE_CHANGE_NOTIFICATION = 0x01
    NAA_INIT_FCN = 0x02
    NAA_INIT = 0x03
    UICC_RESET = 0x04
    NAA_APPLICATION_RESET = 0x05
    NAA_SESSION_RESET = 0x06
    STEERING_OF_ROAMING = 0x07
    STEERING_OF_ROAMING_WLAN = 0x08
    EUICC_PROFILE_STATE_CHANGE = 0x09


RESET_MODES = frozenset({RefreshMode.UICC_RESET, RefreshMode.EUICC_PROFILE_STATE_CHANGE})
NAA_INIT_MODES = frozenset(
    {
        RefreshMode.NAA_INIT_FULL_FCN,
        RefreshMode.NAA_INIT_FCN,
        RefreshMode.NAA_INIT,
        RefreshMode.NAA_APPLICATION_RESET,
        RefreshMode.NAA_SESSION_RESET,
    }
)
NEEDS_FILE_LIST = frozenset({RefreshMode.FILE_CHANGE_NOTIFICATION, RefreshMode.NAA_INIT_FCN})


class FileListError(ValueError):
    """A File List object (section 8.18) that does not parse."""


def parse_file_list(value: bytes) -> tuple[bytes, ...]:
    """The paths of a File List's value (section 8.18): byte 1 the number of files, then each file's full path,
    two-byte file identifiers from the MF (3F00). FileListError when the count, the length or a path is wrong."""
    if not value:
        raise FileListError("empty file list")
    count, body = value[0], value[1:]
    if len(body) % 2:
        raise FileListError("a file identifier is cut short")
    fids = [body[i : i + 2] for i in range(0, len(body), 2)]
    if fids and fids[0] != MF:
        raise FileListError("a path does not start at the MF (3F00)")
    paths: list[bytes] = []
    for fid in fids:
        if fid == MF:
            paths.append(b"")
        paths[-1] += fid
    if any(len(path) < 4 for path in paths):
        raise FileListError("a path names the MF alone")
    if len(paths) != count:
        raise FileListError(f"the list says {count} files and holds {len(paths)}")
    return tuple(paths)


@dataclass(frozen=True)
class RefreshPlan:
    """What a REFRESH asks of the terminal: `mode`; `files` the listed paths (empty: none listed); `reset` the UICC
    is reset and started again; `naa_init` the NAA's files are read again; `answer` a TR to send at once instead
    (the command refused), `error` why."""

    command: ProactiveCommand
    mode: int
    files: tuple[bytes, ...] = ()
    answer: TerminalResponse | None = None
    error: str = ""

    @property
    def reset(self) -> bool:
        return self.answer is None and self.mode in RESET_MODES

    @property
    def naa_init(self) -> bool:
        return self.answer is None and (self.mode in NAA_INIT_MODES or self.mode in RESET_MODES)

    @property
    def sends_response(self) -> bool:
        """Whether a TR follows the refresh (section 6.4.7: none after a UICC reset, the session ends with it)."""
        return self.answer is not None or self.mode not in RESET_MODES

    def response(self) -> TerminalResponse | None:
        """The TR once the refresh was done (None for the reset modes), or the refusal."""
        if self.answer is not None:
            return self.answer
        if self.mode in RESET_MODES:
            return None
        return TerminalResponse.build(self.command, GeneralResult.OK)


def plan_refresh(command: ProactiveCommand) -> RefreshPlan:
    """The RefreshPlan of a fetched REFRESH."""
    mode = command.qualifier
    item = command.get(Tag.FILE_LIST)
    files: tuple[bytes, ...] = ()
    if item is not None:
        try:
            files = parse_file_list(item.value)
        except FileListError as exc:
            refusal = TerminalResponse.build(command, GeneralResult.DATA_NOT_UNDERSTOOD)
            return RefreshPlan(command, mode, answer=refusal, error=f"file list: {exc}")
    try:
        known = RefreshMode(mode)
    except ValueError:
        known = None
    if known is None or known in (RefreshMode.STEERING_OF_ROAMING, RefreshMode.STEERING_OF_ROAMING_WLAN):
        refusal = TerminalResponse.build(command, GeneralResult.BEYOND_TERMINAL_CAPABILITIES)
        return RefreshPlan(command, mode, files, answer=refusal, error=f"mode {mode:02X} not supported")
    if known in NEEDS_FILE_LIST and item is None:
        refusal = TerminalResponse.build(command, GeneralResult.REQUIRED_VALUES_MISSING)
        return RefreshPlan(command, mode, answer=refusal, error="no file list")
    return RefreshPlan(command, mode, files)


def mode_name(mode: int) -> str:
    try:
        return RefreshMode(mode).name.lower()
    except ValueError:
        return f"0x{mode:02x}"
