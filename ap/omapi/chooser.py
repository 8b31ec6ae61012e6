"""The dialog of the free choice of card (docs/protocols.md, "OMAPI on the AP", steps 004:403 and 004:404): it
lists the available readers and answers for the user by a policy: `first` (the first listed), a reader name
(`SIM1`, `SIM2`: that one when it is listed, else no choice), or `script:FILE` (one answer per dialog, a line each:
a reader name, a 1-based position in the list, or `cancel`; no lines left means cancel)."""

from __future__ import annotations

from pathlib import Path


class ChooserError(ValueError):
    """A policy that cannot be used (an unreadable script)."""


class Chooser:
    def __init__(self, policy: str = "first") -> None:
        self.policy = policy
        self._script: list[str] | None = None
        if policy.startswith("script:"):
            path = Path(policy[len("script:") :])
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ChooserError(f"chooser script {path}: {exc.strerror or exc}") from None
            self._script = [
                line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
            ]
        elif not policy:
            raise ChooserError("an empty chooser policy (first, a reader name, or script:FILE)")

    def choose(self, readers: list[str]) -> str | None:
        """The reader the user picks among `readers`, or None (cancelled, or the wanted one is not listed)."""
        if self._script is not None:
            if not self._script:
                return None
            answer = self._script.pop(0)
        else:
            answer = self.policy
        if answer == "first":
            return readers[0] if readers else None
        if answer.isdigit():
            index = int(answer) - 1
            return readers[index] if 0 <= index < len(readers) else None
        return answer if answer in readers else None
