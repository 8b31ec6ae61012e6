"""The LPA's user interface policy (docs/protocols.md, "The LPA on the AP"): how the
simulated user answers the cloud website's pages before a download, as the cloud-backup invention's first step asks
(logged in: no page; not logged in: the login page; never registered: the registration page; the page closed: one
preset message, and no download).

`--lpa-ui` of `bipsim ap` takes `logged-in`, `login:USER:PASS`, `register:USER:PASS` or `close`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

# the preset message of a closed login page, shown once (the document: without logging in the profile cannot be
# downloaded)
CLOSED_MESSAGE = "Without logging in to the cloud the eSIM profile cannot be downloaded."


class UiKind(Enum):
    LOGGED_IN = "logged-in"  # the terminal holds a session: the account in the cloud URL, no page shown
    LOGIN = "login"  # the login page is shown, the user logs in
    REGISTER = "register"  # the login page, the user is unknown: the registration page, then the login
    CLOSE = "close"  # the login page is shown and the user closes it


class UiPolicyError(ValueError):
    pass


@dataclass(frozen=True)
class UiPolicy:
    kind: UiKind
    user: str = ""
    password: str = ""

    @staticmethod
    def parse(text: str) -> UiPolicy:
        """`logged-in`, `login:USER:PASS`, `register:USER:PASS` or `close` (UiPolicyError otherwise)."""
        name, _, rest = text.partition(":")
        if name in (UiKind.LOGGED_IN.value, UiKind.CLOSE.value):
            if rest:
                raise UiPolicyError(f"{name} takes no user and password")
            return UiPolicy(UiKind(name))
        if name in (UiKind.LOGIN.value, UiKind.REGISTER.value):
            user, sep, password = rest.partition(":")
            if not sep or not user or not password:
                raise UiPolicyError(f"give {name}:USER:PASS")
            return UiPolicy(UiKind(name), user, password)
        raise UiPolicyError(f"{text!r}: give logged-in, login:USER:PASS, register:USER:PASS or close")

    @property
    def shows_login_page(self) -> bool:
        """Whether the user is not logged in, so the login page is shown (000 flow, before the download)."""
        return self.kind is not UiKind.LOGGED_IN
