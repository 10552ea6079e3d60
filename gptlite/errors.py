"""The errors gptlite's commands turn into one line, and the exit status each one gets.

Every command (``gptlite-generate``, ``gptlite-eval``, ``gptlite-train``, ``gptlite-convert``) follows the same rule:

* **2, usage**: what was asked cannot be done as asked; the fix is on the command line. Bad flags and values,
  a path or Hub id that cannot be found, a model kind gptlite cannot run, flags that contradict the model.
* **1, failure**: the inputs were found but one of them is broken, or something failed while running; the
  fix is in a file or the machine. A truncated weights file, a tensor of the wrong shape, a malformed data
  line, disk full.
* **130 / 143**: interrupted by Ctrl-C (SIGINT) / SIGTERM. Both unwind like Ctrl-C inside
  :func:`sigterm_unwinds`, so temporary folders are removed on the way out.

:func:`exit_status` is that rule in code; :func:`gptlite.cli_runner.run_command` applies it for every command.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "InputFileError",
    "Interrupted",
    "RunFailure",
    "UsageError",
    "exit_code",
    "exit_status",
    "one_line",
    "sigterm_unwinds",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """What was asked cannot be done as asked (exit status 2); the message names the flag, path or field."""


class InputFileError(ValueError):
    """A file that was found cannot be used (exit status 1); the message names the file and where in it."""


class RunFailure(ValueError):
    """Something failed while running (exit status 1): e.g. a training run that diverged; the message says where.

    A ValueError, like :class:`InputFileError`, so that every command's existing one-line handling catches it.
    """


class Interrupted(KeyboardInterrupt):
    """A signal (SIGTERM, or a second SIGINT in training) that stops a command at once, unwinding like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(signum: int) -> int:
    """The shell's code for a process ended by ``signum``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Interrupted` instead of killing the process on the spot.

    SIGTERM's default ends the process without running ``finally`` blocks, so a folder being written would
    leave its hidden temporary sibling behind; raised as an exception, it unwinds like Ctrl-C does.
    Only the main thread can own signal handlers: elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_status(err: BaseException) -> int:
    """The exit status of a command that stopped on `err` (see the module docstring)."""
    if isinstance(err, KeyboardInterrupt):
        # Interrupted, and training's TrainingStopped, carry the signal that stopped them; Ctrl-C does not.
        signum = getattr(err, "signum", None)
        return exit_code(signum) if isinstance(signum, int) else EXIT_INTERRUPTED
    if isinstance(err, (InputFileError, RunFailure)):
        return EXIT_FAILURE
    if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return EXIT_USAGE  # a path on the command line that is not there, or not what it must be
    if isinstance(err, OSError):
        return EXIT_FAILURE  # disk full, permissions, network: the machine, not the command line
    if isinstance(err, (ValueError, KeyError)):
        return EXIT_USAGE  # a setting that cannot be used
    return EXIT_FAILURE  # a bug, or a library's failure gptlite does not know: nothing to fix on the command line


def one_line(err: BaseException | str) -> str:
    """The message of `err` on one line (library errors sometimes span several)."""
    if isinstance(err, KeyboardInterrupt):
        signum = getattr(err, "signum", None)
        if isinstance(signum, int) and signum != signal.SIGINT:
            return f"interrupted by {signal.Signals(signum).name}"
        return "interrupted (Ctrl-C)"
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])  # str(KeyError) adds quotes
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())
