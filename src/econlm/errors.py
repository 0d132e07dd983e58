"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (a wrong name, a missing file, a bad number). The CLI
prints its message as one line and exits with code 2, without a traceback. Everything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in what the user asked for; the message says what was wrong and what to do."""


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """Return " Did you mean 'x'?" for the closest valid name, or "" when nothing is close."""
    by_lower = {v.lower(): v for v in valid}  # case does not make a name "far": MiniLM is close to minilm
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.5)
    return f" Did you mean '{by_lower[close[0]]}'?" if close else ""


def unknown_name(kind: str, name: str, valid: Iterable[str], note: str = "") -> UserError:
    """The standard error for a name that is not in a registry: lists valid names, suggests the closest."""
    valid = sorted(valid)
    message = f"unknown {kind} '{name}'; valid: {', '.join(valid)}.{did_you_mean(name, valid)}"
    return UserError(f"{message} {note}" if note else message)
