"""gptlite.cli_runner: the one way the four commands turn an exception into a line on stderr and an exit status."""

from __future__ import annotations

import ast
import errno
import os
import signal
from pathlib import Path

import pytest

from gptlite.cli_runner import Reworded, run_command
from gptlite.downloads import DownloadError
from gptlite.errors import InputFileError, Interrupted, RunFailure, UsageError
from gptlite.folders import FolderRefused, FolderWriteError

GPTLITE = Path(__file__).resolve().parents[1] / "gptlite"


def raising(err: BaseException):
    def body() -> None:
        raise err

    return body


@pytest.mark.parametrize(("err", "status"), [
    (UsageError("--flag: bad"), 2),
    (ValueError("a setting"), 2),
    (KeyError("no_such_field"), 2),
    (FolderRefused("the output folder is the input"), 2),
    (FileNotFoundError("no such file"), 2),
    (NotADirectoryError("not a folder"), 2),
    (InputFileError("model.safetensors: truncated"), 1),
    (RunFailure("the loss diverged"), 1),
    (FolderWriteError("No space left on device while writing out; out is intact"), 1),
    (OSError(errno.ENOSPC, "No space left on device"), 1),
    (DownloadError("HF_HUB_OFFLINE is set"), 1),
    (RuntimeError("a bug"), 1),
    (KeyboardInterrupt(), 130),
    (Interrupted(signal.SIGTERM), 143),
], ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value))
def test_each_kind_of_error_gets_its_status_and_one_line(err, status, capsys):
    assert run_command("prog", raising(err)) == status
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert line.startswith("prog: error: ") and captured.out == ""
    if isinstance(err, RuntimeError):
        assert line == "prog: error: unexpected RuntimeError: a bug; please report this"


def test_a_message_on_several_lines_is_printed_on_one(capsys):
    assert run_command("prog", raising(OSError("Got: ConnectError\nAn error happened"))) == 1
    assert capsys.readouterr().err == "prog: error: Got: ConnectError An error happened\n"


def test_success_is_0_and_prints_nothing_of_its_own(capsys):
    assert run_command("prog", lambda: print("done")) == 0
    assert capsys.readouterr() == ("done\n", "")


def test_argparse_exits_pass_through():
    with pytest.raises(SystemExit) as exit_info:
        run_command("prog", raising(SystemExit(2)))
    assert exit_info.value.code == 2


def test_reworded_keeps_the_status_of_its_cause(capsys):
    assert run_command("prog", raising(Reworded(Interrupted(signal.SIGTERM), "interrupted; out as it was"))) == 143
    assert capsys.readouterr().err == "prog: interrupted; out as it was\n"
    assert run_command("prog", raising(Reworded(InputFileError("broken"), None))) == 1  # another process says it
    assert capsys.readouterr().err == ""


def test_sigterm_unwinds_like_ctrl_c(capsys):
    unwound, handler = [], signal.getsignal(signal.SIGTERM)

    def body() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            unwound.append(True)

    assert run_command("prog", body) == 143
    assert unwound == [True] and capsys.readouterr().err == "prog: error: interrupted by SIGTERM\n"
    assert signal.getsignal(signal.SIGTERM) is handler  # restored afterwards


def _imported_modules(path: Path) -> set[str]:
    package = ".".join(path.relative_to(GPTLITE.parent).with_suffix("").parts)
    if path.name == "__init__.py":
        package += ".__init__"
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level)[0]
                base = f"{parent}.{base}" if base else parent
            names.update([base, *(f"{base}.{alias.name}" for alias in node.names)])
    return names


def test_no_library_module_imports_a_command_line():
    commands = {"gptlite.cli_runner", "gptlite.conversion.cli", "gptlite.generation.cli", "gptlite.training.cli"}
    entry_points = {*commands, "gptlite.training.__main__"}
    for path in GPTLITE.rglob("*.py"):
        module = ".".join(path.relative_to(GPTLITE.parent).with_suffix("").parts)
        if module not in entry_points:
            assert not _imported_modules(path) & commands, f"{module} imports a command line"
