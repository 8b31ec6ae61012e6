"""The user's answer to the upgrade agent's prompt (docs/protocols.md, "The upgrade agent"; step 001:201 of the
push deployment): `accept`, `decline`, or `script:FILE`, one answer per prompt from FILE (`accept`/`yes`/`y` or
`decline`/`no`/`n` per line, `#` comments and blank lines skipped; once the script is used up every further prompt
is declined, as a user who walked away would)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

YES = {"accept", "yes", "y"}
NO = {"decline", "no", "n"}


class PolicyError(ValueError):
    """A policy that is not accept, decline or script:FILE, or a script line that is no answer."""


@dataclass
class Policy:
    """Answers prompts; `asked` counts them."""

    kind: str  # "accept", "decline", "script"
    answers: list[bool] = field(default_factory=list)
    asked: int = 0

    @classmethod
    def parse(cls, text: str) -> Policy:
        if text in ("accept", "decline"):
            return cls(text)
        if text.startswith("script:"):
            path = Path(text[len("script:") :])
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise PolicyError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
            answers = []
            for number, raw in enumerate(lines, 1):
                line = raw.split("#", 1)[0].strip().lower()
                if not line:
                    continue
                if line not in YES | NO:
                    raise PolicyError(f"{path}:{number}: {line[:40]!r} is neither accept nor decline")
                answers.append(line in YES)
            return cls("script", answers)
        raise PolicyError(f"{text[:60]!r}: the policy is accept, decline or script:FILE")

    def ask(self) -> bool:
        """The user's answer to one prompt."""
        self.asked += 1
        if self.kind == "script":
            return self.answers.pop(0) if self.answers else False
        return self.kind == "accept"
