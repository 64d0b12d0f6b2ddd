"""The one boundary between text and the terminal: nothing read from a file, a record, a catalog,
a CSV header or user code reaches it with control characters in it.

An escape sequence in a defense name or an error message could clear the screen, set the window
title or print a fake coloured verdict. Every console defcon prints through is a `SafeConsole`
(its text segments pass `printable` before rich adds its own styling), and every plain line
(`error:`, `warning:`) is printed by `say`, which does the same.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import TextIO

from rich.console import Console
from rich.segment import Segment

# C0 controls but tab and newline, DEL, C1 controls (CSI/OSC as single bytes), and the Unicode
# bidirectional overrides that reorder what is shown
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every control character shown escaped (ESC as the four characters `\\x1b`),
    so it prints as what it is instead of acting on the terminal."""
    return _UNPRINTABLE.sub(_shown, text)


class SafeConsole(Console):
    """A rich Console whose text passes `printable` after markup is parsed and before styles are
    rendered: defcon's own colours stay, escape sequences inside the text are shown escaped."""

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        safe = [
            segment if segment.control else Segment(printable(segment.text), segment.style)
            for segment in buffer
        ]
        return super()._render_buffer(safe)


def console(*, stderr: bool = False, min_width: int = 0) -> SafeConsole:
    """The console results (stdout) or progress (stderr) are printed on; at least `min_width`
    columns so tables stay readable when piped."""
    made = SafeConsole(stderr=stderr, highlight=False)
    if made.width < min_width:
        made = SafeConsole(stderr=stderr, highlight=False, width=min_width)
    return made


def say(line: str, file: TextIO | None = None) -> None:
    """Print one plain line (an `error:` or `warning:` line) with its control characters shown
    escaped; stderr by default."""
    print(printable(line), file=file or sys.stderr, flush=True)


def warn(message: str) -> None:
    """One `warning:` line on stderr."""
    say(f"warning: {message}")
