"""The AP's SIM toolkit: the host side of 3GPP TS 27.007 section 12 (USAT over AT), answering by policy.

The AP writes its TE profile (`AT+CUSATW=0,...`, uicc/terminal_profile.py's HOST_USAT_TE) and activates it with a
profile download (`AT+CUSATA=2`); each `+CUSATP: "<hex>"` the CP sends is a proactive command (ETSI TS 102 223
section 6) that `HostToolkit` (sans-IO) decodes with uicc/cat.py and answers with a TERMINAL RESPONSE
(`AT+CUSATT`), and after a SET UP MENU, when the policy says so, an ENVELOPE MENU SELECTION (`AT+CUSATE`, section
7.2). `ToolkitService` runs it over the AP's chat on DLC 1. Every answer is a `usat.toolkit` trace event.

Policies (`bipsim ap --toolkit POLICY`, docs/protocols.md "The AP's toolkit"):
- `accept`: every command the host offers is carried out: DISPLAY TEXT, PLAY TONE, SET UP IDLE MODE TEXT, LAUNCH
  BROWSER and SET UP MENU answered OK (nothing is shown or launched), GET INKEY with "y" ("1" when only digits
  are asked; yes for a yes/no question; never packed), GET INPUT with "bipsim" (digits "1234" when only digits
  are asked; cut or padded with "x" to the response length), SELECT ITEM with the default item or else the first;
- `select:N`: as accept, and after the card's SET UP MENU the user selects menu item N once;
- `refuse`: the user turns everything down: 0x10 (proactive session terminated by the user) for DISPLAY TEXT, GET
  INKEY, GET INPUT, SELECT ITEM and PLAY TONE, 0x22 (user did not accept) for LAUNCH BROWSER and SET UP CALL, 0x30
  (beyond the terminal's capabilities) for the rest;
- `script:FILE`: one answer per proactive command, in order, one a line: `ok`, `refuse`, `end` (0x10), `back`
  (0x11), `timeout` (0x12, no response from the user), `busy` (0x20 01, screen busy), `item N`, `text STRING`,
  `key C`, `menu N` (OK, then MENU SELECTION of item N), `result HH` (that general result); `#` starts a comment.
  Once the script is used up, the answers are accept's.
Commands the host does not offer (anything but the above) get 0x30.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import trio

from bipsim.link.at_chat import AtChat, AtTimeout
from bipsim.trace.events import Actor, Layer
from bipsim.trace.kinds import Kind
from bipsim.trace.recorder import NULL_TRACER, Tracer
from bipsim.uicc.cat import (
    CatObject,
    CommandType,
    DeviceId,
    Envelope,
    EnvelopeTag,
    GeneralResult,
    ProactiveCommand,
    Tag,
    TerminalProblem,
    TerminalResponse,
    alpha_decode,
    decode_proactive,
    obj,
    text_decode,
)
from bipsim.uicc.gsm_text import gsm7_encode, pack_7bit, ucs2_encode
from bipsim.uicc.terminal_profile import HOST_USAT_TE
from bipsim.uicc.tlv import TlvError

HOST_COMMANDS = frozenset(
    {
        CommandType.DISPLAY_TEXT,
        CommandType.GET_INKEY,
        CommandType.GET_INPUT,
        CommandType.SELECT_ITEM,
        CommandType.SET_UP_MENU,
        CommandType.SET_UP_IDLE_MODE_TEXT,
        CommandType.LAUNCH_BROWSER,
        CommandType.PLAY_TONE,
    }
)
USER_ENDS = frozenset(
    {
        CommandType.DISPLAY_TEXT,
        CommandType.GET_INKEY,
        CommandType.GET_INPUT,
        CommandType.SELECT_ITEM,
        CommandType.PLAY_TONE,
    }
)
INPUT_TEXT = "bipsim"
INPUT_DIGITS = "1234"
INKEY_KEY = "y"  # GET INKEY's key when any character may be typed
INKEY_DIGIT = "1"  # ... and when only digits may
SIM_BUSY = 14
ACTIVATE_ATTEMPTS = 50
ACTIVATE_RETRY = 0.2  # seconds between AT+CUSATA=2 attempts while the card is still starting (+CME ERROR: 14)


class PolicyError(ValueError):
    """A policy or script line that does not parse; the message names it."""


@dataclass(frozen=True)
class Answer:
    """One scripted answer: `general` result and what it carries (an item, a text, a key, a menu item)."""

    word: str
    general: int = GeneralResult.OK
    additional: bytes = b""
    item: int | None = None
    text: str | None = None
    menu: int | None = None


def parse_answer(line: str) -> Answer:
    word, _, rest = line.strip().partition(" ")
    rest = rest.strip()
    simple = {
        "ok": Answer("ok"),
        "refuse": Answer("refuse", -1),  # the refuse policy's answer for that command
        "end": Answer("end", GeneralResult.SESSION_TERMINATED_BY_USER),
        "back": Answer("back", GeneralResult.BACKWARD_MOVE),
        "timeout": Answer("timeout", GeneralResult.NO_RESPONSE_FROM_USER),
        "busy": Answer("busy", GeneralResult.TERMINAL_UNABLE, bytes((TerminalProblem.SCREEN_BUSY,))),
    }
    if word in simple and not rest:
        return simple[word]
    if word in ("item", "menu") and rest.isdigit() and 1 <= int(rest) <= 255:
        return Answer(word, item=int(rest)) if word == "item" else Answer(word, menu=int(rest))
    if word in ("text", "key") and rest and (word == "text" or len(rest) == 1):
        return Answer(word, text=rest)
    if word == "result" and len(rest) == 2:
        try:
            return Answer(word, int(rest, 16))
        except ValueError:
            pass
    raise PolicyError(
        f"{line.strip()!r}: use ok, refuse, end, back, timeout, busy, item N, menu N, text STRING, key C or result HH"
    )


@dataclass
class Policy:
    """How the toolkit answers: `name` (accept, select, refuse, script), the menu item to select, the script."""

    name: str
    menu: int | None = None
    script: deque[Answer] = field(default_factory=deque)

    @classmethod
    def parse(cls, text: str) -> Policy:
        if text in ("accept", "refuse"):
            return cls(text)
        if text.startswith("select:") and text[7:].isdigit() and 1 <= int(text[7:]) <= 255:
            return cls("select", menu=int(text[7:]))
        if text.startswith("script:") and text[7:]:
            path = Path(text[7:])
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise PolicyError(f"{path}: {exc.strerror or exc}") from None
            answers = deque[Answer]()
            for number, line in enumerate(lines, 1):
                line = line.split("#", 1)[0]
                if not line.strip():
                    continue
                try:
                    answers.append(parse_answer(line))
                except PolicyError as exc:
                    raise PolicyError(f"{path}:{number}: {exc}") from None
            return cls("script", script=answers)
        raise PolicyError(f"{text!r}: use accept, refuse, select:N or script:FILE")


@dataclass(frozen=True)
class Reply:
    """The toolkit's answer to one proactive command: its TR, maybe a MENU SELECTION after it, and what was
    decided (for the trace)."""

    command: ProactiveCommand
    response: TerminalResponse
    envelope: Envelope | None
    decision: dict[str, object]


def menu_selection(item: int) -> Envelope:
    """ENVELOPE MENU SELECTION (TS 102 223 section 7.2.2): keypad to UICC, the item identifier."""
    return Envelope(
        (
            obj(Tag.DEVICE_IDENTITIES, bytes((DeviceId.KEYPAD, DeviceId.UICC)), cr=True),
            obj(Tag.ITEM_IDENTIFIER, bytes((item,)), cr=True),
        ),
        EnvelopeTag.MENU_SELECTION,
    )


def _text_object(text: str, qualifier: int, *, packing: bool) -> CatObject:
    """A text string (section 8.15) coded as the command's qualifier asks: UCS2 (bit 2), else the SMS default
    alphabet, packed only where the command has a packing bit (GET INPUT's bit 4, section 8.6; GET INKEY's bit 4
    is "immediate digit response" and its answer is never packed, section 6.8.5)."""
    if qualifier & 0x02:
        return obj(Tag.TEXT_STRING, b"\x08" + ucs2_encode(text))
    septets = gsm7_encode(text)
    if packing and qualifier & 0x08:
        return obj(Tag.TEXT_STRING, b"\x00" + pack_7bit(septets))
    return obj(Tag.TEXT_STRING, b"\x04" + septets)


class HostToolkit:
    """Sans-IO: a proactive command's bytes in, a Reply out. Keeps the menu and the idle text it was given."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.menu: list[tuple[int, str]] = []
        self.menu_title = ""
        self.idle_text = ""
        self.shown: list[str] = []  # texts DISPLAY TEXT put on the screen
        self._menu_pending = policy.menu

    def on_proactive(self, data: bytes) -> Reply:
        """Raises ValueError (TlvError) when `data` is not a proactive command: it cannot be answered by number."""
        command = decode_proactive(data)
        answer = self.policy.script.popleft() if self.policy.script else None
        if self.policy.name == "refuse" and answer is None or answer is not None and answer.general == -1:
            return self._refuse(command)
        if command.type not in HOST_COMMANDS:
            return self._reply(command, GeneralResult.BEYOND_TERMINAL_CAPABILITIES, decision="not offered")
        if answer is not None and answer.word not in ("ok", "item", "text", "key", "menu"):
            return self._reply(command, answer.general, answer.additional, decision=answer.word)
        return self._accept(command, answer)

    def _reply(
        self,
        command: ProactiveCommand,
        general: int,
        additional: bytes = b"",
        objects: list[CatObject] | None = None,
        envelope: Envelope | None = None,
        **decision: object,
    ) -> Reply:
        response = TerminalResponse.build(command, general, additional, objects or [])
        fields = {"policy": self.policy.name, "result": int(general), **decision}
        return Reply(command, response, envelope, fields)

    def _refuse(self, command: ProactiveCommand) -> Reply:
        if command.type in USER_ENDS:
            general = GeneralResult.SESSION_TERMINATED_BY_USER
        elif command.type in (CommandType.LAUNCH_BROWSER, CommandType.SET_UP_CALL):
            general = GeneralResult.USER_DID_NOT_ACCEPT
        else:
            general = GeneralResult.BEYOND_TERMINAL_CAPABILITIES
        return self._reply(command, general, decision="refused")

    def _accept(self, command: ProactiveCommand, answer: Answer | None) -> Reply:
        kind = command.type
        text_item = command.get(Tag.TEXT_STRING)
        text = text_decode(text_item.value)[1] if text_item is not None else ""
        if kind == CommandType.DISPLAY_TEXT:
            self.shown.append(text)
            return self._reply(command, GeneralResult.OK, text=text)
        if kind == CommandType.GET_INKEY:
            if command.qualifier & 0x04:  # yes/no question: 01 yes (section 6.8.5)
                key = b"\x04\x01"
                return self._reply(command, GeneralResult.OK, objects=[obj(Tag.TEXT_STRING, key)], key="yes")
            # bit 1 clear: digits (0-9, *, #, +) only (section 8.6), so the default key is a digit
            default_key = INKEY_KEY if command.qualifier & 0x01 else INKEY_DIGIT
            chosen = answer.text if answer is not None and answer.text else default_key
            return self._reply(
                command,
                GeneralResult.OK,
                objects=[_text_object(chosen, command.qualifier, packing=False)],
                key=chosen,
            )
        if kind == CommandType.GET_INPUT:
            return self._input(command, answer)
        if kind == CommandType.SELECT_ITEM:
            items = [(i.value[0], alpha_decode(i.value[1:])) for i in command.all(Tag.ITEM) if i.value]
            default = command.get(Tag.ITEM_IDENTIFIER)
            if answer is not None and answer.item is not None:
                picked = answer.item
            elif default is not None and default.value:
                picked = default.value[0]
            elif items:
                picked = items[0][0]
            else:
                return self._reply(command, GeneralResult.REQUIRED_VALUES_MISSING, decision="no items")
            return self._reply(
                command, GeneralResult.OK, objects=[obj(Tag.ITEM_IDENTIFIER, bytes((picked,)))], item=picked
            )
        if kind == CommandType.SET_UP_MENU:
            self.menu = [(i.value[0], alpha_decode(i.value[1:])) for i in command.all(Tag.ITEM) if i.value]
            alpha = command.get(Tag.ALPHA_IDENTIFIER)
            self.menu_title = alpha_decode(alpha.value) if alpha is not None else ""
            item = answer.menu if answer is not None and answer.menu is not None else self._menu_pending
            self._menu_pending = None
            envelope = menu_selection(item) if item is not None and self.menu else None
            return self._reply(
                command,
                GeneralResult.OK,
                envelope=envelope,
                menu=[name for _, name in self.menu],
                menu_selection=item if envelope is not None else None,
            )
        if kind == CommandType.SET_UP_IDLE_MODE_TEXT:
            self.idle_text = text
            return self._reply(command, GeneralResult.OK, text=text)
        if kind == CommandType.LAUNCH_BROWSER:
            url = command.get(Tag.URL)
            return self._reply(command, GeneralResult.OK, url=url.value.decode("latin-1") if url else "")
        return self._reply(command, GeneralResult.OK)  # PLAY TONE: no sound here

    def _input(self, command: ProactiveCommand, answer: Answer | None) -> Reply:
        length = command.get(Tag.RESPONSE_LENGTH)
        low, high = (
            (length.value[0], length.value[1]) if length is not None and len(length.value) == 2 else (0, 255)
        )
        digits_only = not command.qualifier & 0x01  # bit 1: 0 digits only, 1 SMS alphabet (section 8.6)
        text = (
            answer.text if answer is not None and answer.text else INPUT_DIGITS if digits_only else INPUT_TEXT
        )
        text = text[:high].ljust(low, "1" if digits_only else "x")
        return self._reply(
            command,
            GeneralResult.OK,
            objects=[_text_object(text, command.qualifier, packing=True)],
            text=text,
        )


class ToolkitService:
    """Runs a HostToolkit over the AP's chat on DLC 1: profile, activation, then one answer per +CUSATP."""

    def __init__(self, chat: AtChat, toolkit: HostToolkit, *, tracer: Tracer = NULL_TRACER) -> None:
        self.chat = chat
        self.toolkit = toolkit
        self.tracer = tracer
        self.replies: list[Reply] = []
        self.sessions_ended = 0
        self.active = trio.Event()
        self._changed = trio.Event()  # set (and renewed) at each answer and each session end
        self._tx, self._rx = trio.open_memory_channel[str](64)
        chat.add_urc_handler("+CUSATP:", self._urc)
        chat.add_urc_handler("+CUSATEND", self._urc)

    def _urc(self, line: str) -> None:
        try:
            self._tx.send_nowait(line)
        except trio.WouldBlock:
            self._event(Kind.APP_ERROR, f"toolkit queue full, dropped {line[:40]}", None, where="toolkit")

    def _event(self, kind: Kind, summary: str, data: bytes | None, **fields: object) -> None:
        self.tracer.emit(Actor.AP, Actor.CP, Layer.APP, summary, data, kind=kind, fields=dict(fields))

    async def activate(self) -> bool:
        """AT+CUSATW=0 with the TE profile, then AT+CUSATA=2 (retried while the card is busy starting)."""
        written = await self.chat.command(f'AT+CUSATW=0,"{HOST_USAT_TE.hex().upper()}"')
        if not written.ok:
            self._event(Kind.APP_ERROR, f"TE profile refused: {written.final}", None, where="toolkit")
            return False
        for _ in range(ACTIVATE_ATTEMPTS):
            response = await self.chat.command("AT+CUSATA=2")
            if response.ok:
                self.active.set()
                return True
            if response.cme_error != SIM_BUSY:
                break
            await trio.sleep(ACTIVATE_RETRY)
        self._event(Kind.APP_ERROR, f"USAT activation refused: {response.final}", None, where="toolkit")
        return False

    async def run(self) -> None:
        try:
            if not await self.activate():
                return
        except AtTimeout:
            return
        async for line in self._rx:
            if line.startswith("+CUSATEND"):
                self.sessions_ended += 1
            else:
                await self._answer(line)
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, *, replies: int = 0, sessions_ended: int = 0) -> None:
        """Until the toolkit has answered `replies` commands and seen `sessions_ended` +CUSATENDs."""
        while len(self.replies) < replies or self.sessions_ended < sessions_ended:
            await self._changed.wait()

    async def _answer(self, line: str) -> None:
        text = line.partition(":")[2].strip().strip('"')
        try:
            reply = self.toolkit.on_proactive(bytes.fromhex(text))
        except (ValueError, TlvError) as exc:
            # no command number to answer with: the card's command stays unanswered, as a phone's would
            self._event(Kind.APP_ERROR, f"+CUSATP not a proactive command: {exc}", None, where="toolkit")
            return
        self.replies.append(reply)
        command = reply.command
        self._event(
            Kind.USAT_TOOLKIT,
            f"{command.type_name}: answered 0x{reply.decision['result']:02X} ({self.toolkit.policy.name})",
            reply.response.encode(),
            command=command.type_name,
            number=command.number,
            **{k: v for k, v in reply.decision.items() if v is not None},
        )
        await self.chat.command(f'AT+CUSATT="{reply.response.encode().hex().upper()}"')
        if reply.envelope is not None:
            await self.chat.command(f'AT+CUSATE="{reply.envelope.encode().hex().upper()}"')
