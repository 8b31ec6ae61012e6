"""The simulated network's USSD service (3GPP TS 22.090 / TS 24.090), the far end of 27.007 7.15's +CUSD.

Sans-IO: `request(text)` takes the ME's USSD string and gives the network's answer with the 27.007 <m> it carries:
- `*100#`: the balance, the dialogue ends (<m> 0, no further action);
- `*101*<text>#`: an echo dialogue: the network sends <text> back and waits (<m> 1, further user action
  required); every further string of the dialogue is echoed the same way until the ME sends `0` or cancels;
- anything else: <m> 4, operation not supported (27.007 7.15).
`cancel()` ends a dialogue (+CUSD=2). One dialogue at a time, as TS 24.090 allows per ME.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class UssdResult(IntEnum):
    """27.007 7.15 <m>."""

    DONE = 0  # no further user action required
    ACTION_REQUIRED = 1  # further user action required (the dialogue goes on)
    TERMINATED = 2  # the network ended the dialogue
    OTHER_CLIENT = 3
    NOT_SUPPORTED = 4
    TIMEOUT = 5


@dataclass(frozen=True)
class UssdAnswer:
    result: UssdResult
    text: str = ""


class UssdService:
    def __init__(self, balance: str = "Balance: 10.00 EUR, valid until 31/12") -> None:
        self.balance = balance
        self.in_dialogue = False

    def request(self, text: str) -> UssdAnswer:
        """The network's answer to the ME's USSD string `text`."""
        if self.in_dialogue:
            if text == "0":
                self.in_dialogue = False
                return UssdAnswer(UssdResult.TERMINATED, "Bye")
            return UssdAnswer(UssdResult.ACTION_REQUIRED, f"Echo: {text}. Reply, or 0 to end")
        if text == "*100#":
            return UssdAnswer(UssdResult.DONE, self.balance)
        if text.startswith("*101*") and text.endswith("#") and len(text) > 6:
            self.in_dialogue = True
            return UssdAnswer(UssdResult.ACTION_REQUIRED, f"Echo: {text[5:-1]}. Reply, or 0 to end")
        return UssdAnswer(UssdResult.NOT_SUPPORTED)

    def cancel(self) -> bool:
        """Ends the dialogue (+CUSD=2); returns whether there was one."""
        was, self.in_dialogue = self.in_dialogue, False
        return was
