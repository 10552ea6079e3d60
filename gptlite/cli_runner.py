"""How every gptlite command runs: one line on stderr when it stops early, and the exit status of
:func:`gptlite.errors.exit_status` (2 usage, 1 a broken input or a failing machine, 130 / 143 signals).

``gptlite-generate``, ``gptlite-convert``, ``gptlite-train`` and ``gptlite-eval`` each parse their flags, then
hand the rest to :func:`run_command`. A command that has more to say about an exception (what was left on disk,
how to resume) raises :class:`Reworded` with its own line; the status still comes from the exception itself.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from .console import quiet_transformers_bars
from .errors import exit_status, one_line, sigterm_unwinds

__all__ = ["Reworded", "describe", "run_command"]

# What a command's own code raises for a bad input or setting; anything else is a bug or an unknown failure.
_KNOWN = (KeyboardInterrupt, ValueError, KeyError, OSError)


class Reworded(Exception):
    """`cause`, said in the command's own words: ``PROG: LINE`` on stderr, nothing when `line` is None (another
    process of the same run says it). The exit status stays that of `cause`."""

    def __init__(self, cause: BaseException, line: str | None) -> None:
        super().__init__(line if line is not None else one_line(cause))
        self.cause, self.line = cause, line


def describe(err: BaseException) -> str:
    """The line :func:`run_command` prints for `err`, after ``PROG: ``: ``error: MESSAGE`` on one line."""
    if isinstance(err, _KNOWN):
        return f"error: {one_line(err)}"
    return f"error: unexpected {type(err).__name__}: {one_line(err)}; please report this"


def run_command(prog: str, body: Callable[[], object]) -> int:
    """Run a command's `body` and return its exit status: 0 when it returns, else that of what it raised.

    transformers' own progress bars are off, and SIGTERM unwinds like Ctrl-C (so temporary folders go away).
    An exception becomes one line on stderr, ``PROG: error: MESSAGE`` (or a :class:`Reworded` line), never a
    traceback. ``SystemExit`` (argparse's usage errors, ``--help``) passes through as it is.
    """
    quiet_transformers_bars()
    try:
        with sigterm_unwinds():
            body()
    except Reworded as err:
        return _stop(prog, err.line, err.cause)
    except (KeyboardInterrupt, Exception) as err:
        return _stop(prog, describe(err), err)
    return 0


def _stop(prog: str, line: str | None, cause: BaseException) -> int:
    if line is not None:
        print(f"{prog}: {line}", file=sys.stderr, flush=True)
    return exit_status(cause)
