"""Every file defcon writes goes through here: atomic, and never through a link.

A write goes to a temporary file in the same folder (created with O_EXCL, so never through a
link) and an atomic rename onto the path. A path that is a symbolic link is not followed: the
link itself is replaced by a regular file, with a warning naming it, and its target is left
untouched (in a folder shared between users, or under root, writing through a planted link would
overwrite any file). Folders defcon creates below a user's folder are made the same way
(`safe_folder`). A path that exists but is not a regular file or a link (a directory, a device
node such as /dev/full, a FIFO) is refused with a `DefconError`. New files get the mode the umask
allows (0o666 & ~umask), as `open()` would; a replaced regular file keeps its mode. Any OS error
while writing (a full disk, no permission) becomes one `DefconError` naming the path.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable
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
    """`path` itself, checked before anything runs: a write replaces it (a link included, never
    its target). Raises `DefconError` when `path` exists and is neither a regular file nor a
    link."""
    path = Path(path)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return path
    except OSError as error:
        raise DefconError(f"cannot write '{path}': {error.strerror or error}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise DefconError(
            f"cannot write '{path}': it is {_kind(mode)}, not a regular file; give a file path"
        )
    return path


def writable_folder(path: Path | str, option: str) -> Path:
    """Create `path` if needed and make sure we can write there, before any work is done."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".defcon-write-test.")  # O_EXCL: no link
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise DefconError(
            f"{option} '{path}' is not a writable folder ({error.strerror or error})"
        ) from None
    return path


def _say_replaced(path: Path, warn: Callable[[str], None] | None) -> None:
    from defcon.terminal import warn as warn_stderr

    (warn or warn_stderr)(
        f"'{path}' is a symbolic link; replacing the link with a regular file (its target "
        "is not written)"
    )


def safe_folder(
    folder: Path | str, root: Path | str, warn: Callable[[str], None] | None = None
) -> Path:
    """Create `folder` and the folders between `root` (the user's folder, itself taken as given)
    and it, replacing any of those in-between folders that is a symbolic link by a real folder
    (with a warning), so nothing defcon writes below `root` lands through a link."""
    folder, root = Path(folder), Path(root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        parts = folder.relative_to(root).parts
    except ValueError:
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink():
            _say_replaced(current, warn)
            current.unlink()
        current.mkdir(exist_ok=True)
    return folder


def atomic_write_bytes(
    path: Path | str, data: bytes, warn: Callable[[str], None] | None = None
) -> None:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename; a
    link at `path` is replaced (said through `warn`, default a stderr warning), never followed."""
    target = writable_target(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            info = target.lstat()
        except FileNotFoundError:
            mode = 0o666 & ~current_umask()
        else:
            if stat.S_ISLNK(info.st_mode):
                _say_replaced(target, warn)
                mode = 0o666 & ~current_umask()
            else:
                mode = stat.S_IMODE(info.st_mode)  # a replaced file keeps its mode
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, target)  # renaming onto a link replaces the link, not its target
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise DefconError(f"cannot write '{target}': {error.strerror or error}") from None


def read_regular_bytes(path: Path | str) -> bytes:
    """The bytes of `path`, refusing (OSError) to follow a link: what defcon reads back from its
    own folders (cache entries) is never another file a link points at."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def remove_link(path: Path | str, warn: Callable[[str], None] | None = None) -> Path:
    """`path`, with a symbolic link there removed first (said): for files another library opens
    by name with O_TRUNC/O_CREAT (lock files), which would otherwise follow it."""
    path = Path(path)
    if path.is_symlink():
        _say_replaced(path, warn)
        path.unlink(missing_ok=True)
    return path


def atomic_write_text(
    path: Path | str, text: str, warn: Callable[[str], None] | None = None
) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), warn)


def atomic_write_json(
    path: Path | str, obj: Any, warn: Callable[[str], None] | None = None
) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", warn)


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
