"""A SIM toolkit menu applet on the simulated card (ETSI TS 102 223 sections 6.4.1-6.4.9, 6.4.24, 7.2): the card
side of the `usat-menu` scenario and of the USAT tests (docs/protocols.md, "USAT through 27.007").

Once a TERMINAL PROFILE declares SET UP MENU (byte 4 bit 6), the applet issues SET UP MENU with its items. A MENU
SELECTION envelope (tag D3, item identifier) starts that item's dialogue: DISPLAY TEXT, SELECT ITEM (then a DISPLAY
TEXT naming the choice), GET INPUT (then a DISPLAY TEXT echoing it), GET INKEY, SET UP IDLE MODE TEXT, LAUNCH
BROWSER, PLAY TONE, or SEND SHORT MESSAGE (an SMS-SUBMIT to the network). The applet wraps the card's other toolkit
(the BIP engine): its commands wait while the other's command waits for its TERMINAL RESPONSE, and the other's
while its own does, so the card has one proactive command at a time; envelopes other than MENU SELECTION and the
first TERMINAL PROFILE go to the wrapped toolkit (a second profile download does not restart its BIP session).

Whose command is out is a state machine (`MenuState`, `TRANSITIONS`); a FETCH or TERMINAL RESPONSE out of turn is
6F 00. `answers` keeps each terminal response the applet got (type, general result, its objects) for tests and traces.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum, StrEnum

from bipsim.uicc.cat import (
    CommandType,
    DeviceId,
    EnvelopeTag,
    ProactiveCommand,
    Tag,
    TerminalResponse,
    decode_envelope,
    decode_terminal_response,
    obj,
    text_decode,
)
from bipsim.uicc.gsm_text import alpha_encode
from bipsim.uicc.tlv import TlvError
from bipsim.uicc.toolkit import Toolkit, ToolkitError

SET_UP_MENU_BYTE, SET_UP_MENU_BIT = 4, 6  # TS 102 223 section 5.2: byte 4 b6, SET UP MENU
MENU_TITLE = "bipsim"
ITEMS: tuple[tuple[int, str], ...] = (
    (1, "Show text"),
    (2, "Choose"),
    (3, "Enter text"),
    (4, "Press a key"),
    (5, "Idle text"),
    (6, "Browser"),
    (7, "Tone"),
    (8, "Send SMS"),
)
CHOICES: tuple[tuple[int, str], ...] = ((1, "Red"), (2, "Green"), (3, "Blue"))
HELLO = "Hello from the card"
URL = "http://127.0.0.1/bipsim"
# an SMS-SUBMIT (TS 23.040 9.2.2.2): MR 0, to +15550001, PID 0, DCS 0 (GSM 7-bit), "hi" packed
SMS_SUBMIT = bytes.fromhex("0100089151550010000002E834")


def _text(text: str) -> bytes:
    """A text string object's value (TS 102 223 section 8.15): 8-bit GSM default alphabet, DCS 04."""
    return b"\x04" + alpha_encode(text)


def _item(identifier: int, text: str) -> bytes:
    return bytes((identifier,)) + alpha_encode(text)


class MenuState(Enum):
    IDLE = "idle"  # no command of either toolkit waits for its TERMINAL RESPONSE
    OURS_FETCHED = "ours fetched"  # the applet's command was fetched
    INNER_FETCHED = "inner fetched"  # the wrapped toolkit's command was fetched


class MenuEvent(StrEnum):
    FETCH_OURS = "fetch of the applet's command"
    FETCH_INNER = "fetch of the wrapped toolkit's command"
    RESPONSE = "terminal response"


# one proactive command at a time on the card (TS 102 223 section 6.1): whose command is out decides who gets the TR
TRANSITIONS: dict[tuple[MenuState, MenuEvent], MenuState] = {
    (MenuState.IDLE, MenuEvent.FETCH_OURS): MenuState.OURS_FETCHED,
    (MenuState.IDLE, MenuEvent.FETCH_INNER): MenuState.INNER_FETCHED,
    (MenuState.OURS_FETCHED, MenuEvent.RESPONSE): MenuState.IDLE,
    (MenuState.INNER_FETCHED, MenuEvent.RESPONSE): MenuState.IDLE,
    # a terminal that FETCHes again before its TR: the wrapped toolkit answers that as it answers it alone
    (MenuState.INNER_FETCHED, MenuEvent.FETCH_INNER): MenuState.INNER_FETCHED,
}


@dataclass
class MenuToolkit:
    """The menu applet around `inner` (the card's BIP engine or SMS trigger toolkit)."""

    inner: Toolkit
    queue: deque[ProactiveCommand] = field(default_factory=deque)
    answers: list[tuple[int, int, tuple[tuple[int, bytes], ...]]] = field(default_factory=list)
    menu_set: bool = False
    _profiles: int = 0
    state: MenuState = MenuState.IDLE
    _awaiting: ProactiveCommand | None = None  # our command fetched, its TR not yet here
    _number: int = 0

    # --- building commands ---------------------------------------------------------------------------------------

    def _command(
        self, type_: CommandType, objects: list[tuple[Tag, bytes]], qualifier: int = 0
    ) -> ProactiveCommand:
        self._number = self._number % 0xFE + 1  # command numbers 01..FE (TS 102 223 section 8.6)
        destination = {
            CommandType.DISPLAY_TEXT: DeviceId.DISPLAY,
            CommandType.PLAY_TONE: DeviceId.EARPIECE,
        }.get(type_, DeviceId.TERMINAL)
        items = [obj(tag, value) for tag, value in objects]
        return ProactiveCommand.build(
            type_, items, number=self._number, qualifier=qualifier, destination=destination
        )

    def set_up_menu(self) -> ProactiveCommand:
        objects: list[tuple[Tag, bytes]] = [(Tag.ALPHA_IDENTIFIER, alpha_encode(MENU_TITLE))]
        objects += [(Tag.ITEM, _item(identifier, text)) for identifier, text in ITEMS]
        return self._command(CommandType.SET_UP_MENU, objects)

    def display_text(self, text: str) -> ProactiveCommand:
        # qualifier 0x81: high priority, wait for the user to clear the message (section 8.6)
        return self._command(CommandType.DISPLAY_TEXT, [(Tag.TEXT_STRING, _text(text))], qualifier=0x81)

    def _for_item(self, identifier: int) -> ProactiveCommand | None:
        if identifier == 1:
            return self.display_text(HELLO)
        if identifier == 2:
            objects: list[tuple[Tag, bytes]] = [(Tag.ALPHA_IDENTIFIER, alpha_encode("Pick a colour"))]
            objects += [(Tag.ITEM, _item(i, text)) for i, text in CHOICES]
            return self._command(CommandType.SELECT_ITEM, objects)
        if identifier == 3:
            return self._command(
                CommandType.GET_INPUT,
                [(Tag.TEXT_STRING, _text("Your name?")), (Tag.RESPONSE_LENGTH, bytes((1, 20)))],
                qualifier=0x01,  # digits and characters, SMS default alphabet, unpacked (section 8.6)
            )
        if identifier == 4:
            return self._command(
                CommandType.GET_INKEY, [(Tag.TEXT_STRING, _text("Press a key"))], qualifier=0x01
            )
        if identifier == 5:
            return self._command(
                CommandType.SET_UP_IDLE_MODE_TEXT, [(Tag.TEXT_STRING, _text("bipsim ready"))]
            )
        if identifier == 6:
            return self._command(CommandType.LAUNCH_BROWSER, [(Tag.URL, URL.encode("ascii"))])
        if identifier == 7:
            return self._command(
                CommandType.PLAY_TONE, [(Tag.TONE, b"\x10"), (Tag.DURATION, b"\x01\x01")]
            )  # general beep, 1 s
        if identifier == 8:
            return self._command(
                CommandType.SEND_SHORT_MESSAGE,
                [(Tag.ALPHA_IDENTIFIER, alpha_encode("Sending")), (Tag.SMS_TPDU, SMS_SUBMIT)],
            )
        return None

    # --- Toolkit ---------------------------------------------------------------------------------------------------

    def terminal_profile(self, profile: bytes) -> None:
        self._profiles += 1
        if self._profiles == 1:
            self.inner.terminal_profile(profile)
        has_menu = (
            len(profile) >= SET_UP_MENU_BYTE and profile[SET_UP_MENU_BYTE - 1] >> (SET_UP_MENU_BIT - 1) & 1
        )
        if has_menu and not self.menu_set:
            self.queue.append(self.set_up_menu())

    def move(self, event: MenuEvent) -> None:
        """The only way the applet's state changes (TRANSITIONS); ToolkitError 6F 00 for an event out of turn."""
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise ToolkitError(0x6F00, f"{event.value} while {self.state.value}")
        self.state = nxt

    def _ours_next(self) -> bool:
        return bool(self.queue) and self.state is MenuState.IDLE

    def pending_length(self) -> int:
        if self.state is MenuState.OURS_FETCHED:
            return 0  # our command waits for its TERMINAL RESPONSE
        if self._ours_next():
            return len(self.queue[0].encode())
        return self.inner.pending_length()

    def fetch(self) -> bytes:
        if self._ours_next():
            self.move(MenuEvent.FETCH_OURS)
            command = self.queue.popleft()
            self._awaiting = command
            return command.encode()
        if self.state is MenuState.OURS_FETCHED:
            raise ToolkitError(0x6F00, "no proactive command pending")
        data = self.inner.fetch()
        self.move(MenuEvent.FETCH_INNER)
        return data

    def terminal_response(self, data: bytes) -> None:
        command = self._awaiting
        if self.state is not MenuState.OURS_FETCHED or command is None:
            if self.state is MenuState.INNER_FETCHED:
                self.move(MenuEvent.RESPONSE)
            self.inner.terminal_response(data)  # the wrapped toolkit judges a TR it did not expect
            return
        try:
            response = decode_terminal_response(data)
        except TlvError as exc:
            raise ToolkitError(0x6F00, f"terminal response: {exc}") from exc
        if (response.number, response.type) != (command.number, command.type):
            raise ToolkitError(0x6F00, "terminal response for another command")
        self.move(MenuEvent.RESPONSE)
        self._awaiting = None
        general, _ = response.result
        self.answers.append((response.type, general, tuple((o.tag, o.value) for o in response.objects)))
        if response.type == CommandType.SET_UP_MENU:
            self.menu_set = general < 0x10
            return
        if general >= 0x10:
            return  # the user ended it, or the terminal could not: the dialogue stops here
        follow = self._follow_up(response)
        if follow is not None:
            self.queue.append(follow)

    def _follow_up(self, response: TerminalResponse) -> ProactiveCommand | None:
        if response.type == CommandType.SELECT_ITEM:
            item = response.get(Tag.ITEM_IDENTIFIER)
            names = dict(CHOICES)
            if item is not None and item.value and item.value[0] in names:
                return self.display_text(f"You chose {names[item.value[0]]}")
            return None
        if response.type == CommandType.GET_INPUT:
            text = response.get(Tag.TEXT_STRING)
            if text is not None:
                return self.display_text(f"Hello {text_decode(text.value)[1]}")
        return None

    def envelope(self, data: bytes) -> bytes:
        if data[:1] != bytes((EnvelopeTag.MENU_SELECTION,)):
            return self.inner.envelope(data)
        try:
            envelope = decode_envelope(data)
        except TlvError as exc:
            raise ToolkitError(0x6F00, f"menu selection: {exc}") from exc
        item = envelope.get(Tag.ITEM_IDENTIFIER)
        if not self.menu_set or item is None or len(item.value) != 1:
            raise ToolkitError(0x6F00, "menu selection without a menu or an item identifier")
        if self.queue or self.state is MenuState.OURS_FETCHED:
            raise ToolkitError(0x9300, "the toolkit is busy")  # a dialogue is running (TS 102 221 10.2.1.1)
        command = self._for_item(item.value[0])
        if command is None:
            raise ToolkitError(0x6A80, f"no menu item {item.value[0]}")
        self.queue.append(command)
        return b""
