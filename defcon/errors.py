"""User-facing errors: each one is a single line naming what is wrong and what is accepted."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DefconError(Exception):
    """An error caused by the user's input; the CLI prints its message on one line, exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def closest(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The candidates closest to `word`, for 'did you mean' hints."""
    return difflib.get_close_matches(word, sorted(candidates), n=n, cutoff=0.5)


def unknown(kind: str, word: str, accepted: Iterable[str]) -> DefconError:
    """An 'unknown X' error that suggests the closest accepted values and lists them all."""
    accepted = sorted(accepted)
    hint = closest(word, accepted)
    did_you_mean = f" Did you mean {', '.join(repr(h) for h in hint)}?" if hint else ""
    return DefconError(f"unknown {kind} '{word}'.{did_you_mean} Accepted: {', '.join(accepted)}.")
