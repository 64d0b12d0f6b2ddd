"""Atomic file writes, so that an interrupted run never leaves a half-written result behind.

A write never replaces what a path points at: a symbolic link is written through (its target
is replaced atomically, the link stays), and a path that exists but is not a regular file (a
directory, a device node such as /dev/full, a FIFO) is refused with a `DefconError`. New files
get the mode the umask allows (0o666 & ~umask), as `open()` would; a replaced file keeps its mode.
Any OS error while writing (a full disk, no permission) becomes one `DefconError` naming the path.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from defcon.errors import DefconError


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return mask


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def writable_target(path: Path | str) -> Path:
    """The regular file a write to `path` should replace: symlinks resolved, nothing special.

    Raises `DefconError` when `path` (or what it links to) exists and is not a regular file.
    """
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return target
    except OSError as error:
        raise DefconError(f"cannot write '{path}': {error.strerror or error}") from None
    if not stat.S_ISREG(mode):
        shown = f"'{path}'" if target == path else f"'{path}' (a link to '{target}')"
        raise DefconError(
            f"cannot write {shown}: it is {_kind(mode)}, not a regular file; give a file path"
        )
    return target


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename."""
    shown = Path(path)
    target = writable_target(shown)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            mode = stat.S_IMODE(target.stat().st_mode)  # a replaced file keeps its mode
        except FileNotFoundError:
            mode = 0o666 & ~current_umask()
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise DefconError(f"cannot write '{shown}': {error.strerror or error}") from None


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_text(path: Path | str, what: str, expected: str = "a file") -> str:
    """The UTF-8 text of a user-given file, or one `DefconError` saying what is wrong with it.

    `what` names the file in the message ("catalog file", "record file"); `expected` says what
    was wanted where the path is missing or not a file.
    """
    path = Path(path)
    if path.is_dir():
        raise DefconError(f"{what} '{path}' is a directory (expected {expected})")
    if not path.exists():
        raise DefconError(f"{what} '{path}' does not exist (expected {expected})")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise DefconError(
            f"{what} '{path}' is not UTF-8 text (byte {error.start}: {error.reason})"
        ) from None
    except OSError as error:
        raise DefconError(f"cannot read {what} '{path}': {error.strerror or error}") from None
