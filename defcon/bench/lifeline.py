"""What keeps a bench's processes tied to its main process: signals stop the queue, workers die
with it. Kept free of heavy imports: a spawned worker unpickles `worker_start` first thing, so it
is tied to its parent before it spends seconds importing torch.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from defcon.errors import DefconError


class Stopped(BaseException):
    """SIGINT or SIGTERM reached the bench's main process: stop the queue. A BaseException, so
    no `except Exception` inside a combination takes it for that combination's failure."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Interrupted(DefconError):
    """The bench stopped on a signal; its finished records are kept. Exit code 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While measuring, SIGINT and SIGTERM raise `Stopped` in the main thread (in place of
    KeyboardInterrupt, or of dying at once and orphaning the workers), so the caller can cancel
    the queue and end its workers; the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Stopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def worker_start(parent: int) -> None:
    """In each worker: leave SIGINT to the main process (it stops the queue), and die with the
    main process even when it is killed outright (Linux PR_SET_PDEATHSIG), so no worker goes on
    writing records under PID 1."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the main process died before the line above took effect
        os._exit(1)
