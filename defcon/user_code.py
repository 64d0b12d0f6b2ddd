"""The one boundary between defcon and code it runs on the user's behalf.

A `--model` factory, a catalog's defense class (a user's or a bundled plug-in) and the modules
they come from are called only through `boundary` / `call`: any exception, and a `SystemExit`
(a module calling `sys.exit(0)` on import must not end defcon with exit 0 and no output),
becomes a `UserCodeError` naming who was called and which call, which the CLI prints as one
`error:` line (exit 2). The original exception is kept as the cause; `defcon --debug` prints
its traceback. A `DefconError` passes unchanged: it is already a complete one-line refusal.
`KeyboardInterrupt` is not caught, so Ctrl-C still stops everything.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from defcon.errors import DefconError

DEBUG_ENV = "DEFCON_DEBUG"  # set by `defcon --debug`; inherited by bench workers
T = TypeVar("T")


class UserCodeError(DefconError):
    """User code raised (or returned what its contract forbids); `__cause__` holds the error."""


def debugging() -> bool:
    """Whether tracebacks of user code are wanted (`defcon --debug`)."""
    return os.environ.get(DEBUG_ENV, "") not in {"", "0", "false", "no"}


def describe(error: BaseException) -> str:
    """An exception as one short phrase: its type and the first line of its message."""
    if isinstance(error, SystemExit):
        return f"SystemExit({error.code!r})"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


@contextlib.contextmanager
def boundary(who: str, call: str) -> Iterator[None]:
    """Run a call into user code: any exception or SystemExit becomes one `UserCodeError`
    '<who>: <call> raised <Type>: <message>' (e.g. who = "defense 'x'", call = "apply")."""
    try:
        yield
    except DefconError:
        raise
    except (Exception, SystemExit) as error:
        hint = "" if debugging() else " (defcon --debug shows the traceback)"
        raise UserCodeError(f"{who}: {call} raised {describe(error)}{hint}") from error


def call(
    who: str,
    what: str,
    function: Callable[..., T],
    *args: Any,
    returns: type | tuple[type, ...] | None = None,
    expected: str | None = None,
    **kwargs: Any,
) -> T:
    """`function(*args, **kwargs)` behind `boundary`; with `returns`, a result of another type
    is refused too ('<who>: <what> returned list, expected <expected>')."""
    with boundary(who, what):
        value = function(*args, **kwargs)
    if returns is not None and not isinstance(value, returns):
        names = returns if isinstance(returns, tuple) else (returns,)
        wanted = expected or " or ".join(t.__name__ for t in names)
        raise UserCodeError(f"{who}: {what} returned {type(value).__name__}, expected {wanted}")
    return value


def defense_call(defense: Any, what: str, *args: Any, **kwargs: Any) -> Any:
    """A defense's method `what` behind the boundary, named by the defense's catalog name."""
    return call(f"defense '{defense.name}'", what, getattr(defense, what), *args, **kwargs)
