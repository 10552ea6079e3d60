"""The errors gptlite's commands turn into one line, and the exit status each one gets.

Every command (``gptlite-generate``, ``gptlite-eval``, ``gptlite-train``, ``gptlite-convert``) follows the same rule:

* **2, usage**: what was asked cannot be done as asked; the fix is on the command line. Bad flags and values,
  a path or Hub id that cannot be found, a model kind gptlite cannot run, flags that contradict the model.
* **1, failure**: the inputs were found but one of them is broken, or something failed while running; the
  fix is in a file or the machine. A truncated weights file, a tensor of the wrong shape, a malformed data
  line, disk full.
* **130**: interrupted by Ctrl-C.
"""

from __future__ import annotations

import sys
from typing import NoReturn

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_USAGE", "InputFileError", "UsageError", "exit_status", "fail"]

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """What was asked cannot be done as asked (exit status 2); the message names the flag, path or field."""


class InputFileError(ValueError):
    """A file that was found cannot be used (exit status 1); the message names the file and where in it."""


def exit_status(err: BaseException) -> int:
    """The exit status of a command that stopped on `err` (see the module docstring)."""
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(err, InputFileError):
        return EXIT_FAILURE
    if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return EXIT_USAGE  # a path on the command line that is not there, or not what it must be
    if isinstance(err, OSError):
        return EXIT_FAILURE  # disk full, permissions, network: the machine, not the command line
    return EXIT_USAGE  # ValueError / KeyError: a setting that cannot be used


def one_line(err: BaseException | str) -> str:
    """The message of `err` on one line (library errors sometimes span several)."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])  # str(KeyError) adds quotes
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def fail(prog: str, err: BaseException | str, status: int | None = None) -> NoReturn:
    """Print ``PROG: error: MESSAGE`` on stderr and exit with `status` (default: :func:`exit_status`)."""
    if status is None:
        status = exit_status(err) if isinstance(err, BaseException) else EXIT_USAGE
    print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
    raise SystemExit(status)
