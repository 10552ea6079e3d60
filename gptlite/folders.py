"""Folders that appear whole or not at all, and the checks that keep gptlite from writing over the wrong one.

Every folder gptlite writes as a unit (a converted model, a run's final model) is first written into a
hidden sibling, ``.{name}.tmp-{pid}``, flushed to disk, and then swapped into place. On Linux the swap is
one ``renameat2(RENAME_EXCHANGE)``: at every instant the path holds either the complete old folder or the
complete new one. Elsewhere the old folder is renamed aside first (a crash between the two renames leaves
it beside the path, whole). Whatever fails before the swap (disk full, a bad tensor, Ctrl-C) removes the
temporary folder and leaves the previous one byte-identical.

A single file is written the same way (:func:`atomic_file`), and a temporary file or folder that a caller
names itself (a resumable download, a checkpoint written by several processes) is made visible by
:func:`move_into_place`: the one flush-then-rename step that every atomic write of gptlite goes through.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ._libc import libc

__all__ = [
    "FolderRefused",
    "FolderWriteError",
    "atomic_file",
    "atomic_folder",
    "check_output_folder",
    "fsync_tree",
    "is_disk_full",
    "move_into_place",
    "process_alive",
    "same_or_inside",
    "usual_file_mode",
    "usual_weight_modes",
    "write_failure",
]


class FolderRefused(ValueError):
    """A usage error: the output folder is the input, holds something else, or is not a folder."""


class FolderWriteError(OSError):
    """Writing a folder failed at run time (disk full, I/O error); the previous folder is intact."""


def process_alive(pid: int, host: str | None = None) -> bool:
    """Whether process ``pid`` runs on this machine (a ``host`` other than this one counts as alive)."""
    if host is not None and host != socket.gethostname():
        return True  # another machine's process: we cannot tell, so assume it is live
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def same_or_inside(path: Path, other: Path) -> bool:
    """Whether ``path`` is ``other`` or lies inside it (both resolved, symlinks followed)."""
    path, other = path.resolve(), other.resolve()
    return path == other or other in path.parents


def check_output_folder(
    out: str | os.PathLike[str],
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
    is_previous_output: Callable[[Path], bool] = lambda folder: False,
    overwrite: bool = False,
    describe: str = "a previous output of this command",
) -> Path:
    """Refuse an output folder that would destroy something; return it as a Path.

    Refused (``FolderRefused``, naming the folder): an output that is one of ``inputs`` or contains one
    (replacing it would delete the input), a path that exists and is not a folder, and a non-empty folder
    unless ``is_previous_output(folder)`` says it holds ``describe`` or ``overwrite`` is set.
    """
    out = Path(out)
    for source in inputs:
        source = Path(source)
        if source.exists() and same_or_inside(source, out):
            what = "is" if source.resolve() == out.resolve() else "contains"
            raise FolderRefused(f"the output folder {out} {what} the input {source}; write to another folder")
    if out.exists() and not out.is_dir():
        raise FolderRefused(f"the output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite and not is_previous_output(out):
        raise FolderRefused(
            f"the output folder {out} is not empty and does not hold {describe}; "
            "pass --overwrite to replace it, or choose another folder"
        )
    return out


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it was raised from) says the disk is full.

    torch's zip writer reports a failed write as ``[enforce fail at inline_container.cc] unexpected pos``
    and safetensors as an ``I/O error``; both keep the OS's words, or at least the failed position, so
    the text is checked as well as ``errno``.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(err)
        if "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text:
            return True
        err = err.__cause__ or err.__context__
    return False


def _write_failed(err: BaseException) -> bool:
    # torch.save's zip writer hides the OS error: a short write shows only as an unexpected file position.
    return is_disk_full(err) or "unexpected pos" in str(err) or isinstance(err, OSError) and err.errno == errno.EIO


def write_failure(err: BaseException, writing: Path, intact: str) -> FolderWriteError | None:
    """The one-line error for a failed write of ``writing`` (None if ``err`` is not a write failure).

    Reads ``No space left on device while writing WRITING; INTACT`` when the disk is full (checked while
    the half-written files still take their space). ``intact`` says what was kept, e.g. ``"PREVIOUS is
    intact"``.
    """
    if not (isinstance(err, Exception) and _write_failed(err)):
        return None
    full = is_disk_full(err) or _low_on_space(writing.parent)
    failure = FolderWriteError(f"{'No space left on device' if full else f'Write failed ({err})'} "
                               f"while writing {writing}; {intact}")
    failure.errno = errno.ENOSPC if full else errno.EIO
    return failure


def fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` and the folders themselves: a rename without it may expose empty files
    after a power cut."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file() and not path.is_symlink() or path.is_dir():
            _fsync(path)
    _fsync(folder)


def usual_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process's umask."""
    try:  # Linux states the umask; elsewhere it is read by setting it, for an instant
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return 0o666 & ~mask


def usual_weight_modes(folder: Path) -> None:
    """Give the ``.safetensors`` files under ``folder`` the mode of any new file: safetensors' ``save_file`` (through
    ``save_pretrained`` and Accelerate's ``save_state``) creates them 0o600, while every other file, and the weights
    gptlite-convert writes, get 0o644 under the usual umask."""
    mode = usual_file_mode()
    for path in folder.rglob("*.safetensors"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


def _fsync(path: Path) -> None:
    # A file or a folder: a folder's fsync makes the names in it (a rename) durable.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2  # from linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2``); False where the call is unavailable."""
    renameat2 = getattr(libc(), "renameat2", None)
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # old kernel or a filesystem without exchange
        return False
    raise OSError(code, os.strerror(code), str(b))


_TMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)$")


def _remove_stale_siblings(final: Path) -> None:
    # A process killed mid-write leaves its hidden sibling behind; remove those whose writer is gone.
    if not final.parent.is_dir():
        return
    for path in final.parent.iterdir():
        match = _TMP.match(path.name)
        if match and match["name"] == final.name and not process_alive(int(match["pid"])):
            _remove(path)


def _swap_into_place(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.rename(tmp, final)
    elif _exchange(tmp, final):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
    else:
        aside = final.parent / f".{final.name}.old-{os.getpid()}"
        os.rename(final, aside)
        os.rename(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)


def move_into_place(tmp: str | os.PathLike[str], final: str | os.PathLike[str], *, replace: bool = True) -> None:
    """Flush ``tmp`` (a file, or a folder and everything in it) to disk, then make it ``final`` in one rename.

    What was at ``final`` is replaced whole (a folder by :func:`atomic_folder`'s swap). With ``replace=False``
    a folder ``tmp`` is only renamed, which fails (``OSError``) when ``final`` is a folder that is not empty:
    whoever wrote it first wins. The caller removes ``tmp`` if this raises.
    """
    tmp, final = Path(tmp), Path(final)
    is_dir = tmp.is_dir()
    if is_dir:
        fsync_tree(tmp)
    else:
        _fsync(tmp)
    if not replace:
        os.rename(tmp, final)
    elif is_dir:
        _swap_into_place(tmp, final)
    else:
        os.replace(tmp, final)
    _fsync(final.parent)  # the rename itself, or a power cut may undo it


def _temp_sibling(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    _remove(tmp)
    return tmp


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_file(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield the path of a temporary sibling of ``final`` to write; when the block ends, it becomes ``final``.

    If the block raises (or the flush fails), the temporary file is removed and ``final`` is left as it was; the
    error propagates as it is (the caller knows what to call intact).
    """
    final = Path(final)
    tmp = _temp_sibling(final)
    try:
        yield tmp
        move_into_place(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``final``; when the block ends, swap it into place whole.

    If the block raises (or the flush fails), the temporary folder is removed and ``final`` is left as it
    was. A full disk becomes ``FolderWriteError("No space left on device while writing FINAL; ... is intact")``.
    """
    final = Path(final)
    tmp = _temp_sibling(final)
    existed = final.exists()
    tmp.mkdir()
    try:
        yield tmp
        move_into_place(tmp, final)
    except BaseException as err:
        # Judged before the half-written files are removed, while a full disk is still full.
        failure = write_failure(err, final, f"{final} is intact" if existed else f"nothing was left at {final}")
        shutil.rmtree(tmp, ignore_errors=True)
        if failure is not None:
            raise failure from err
        raise


def _low_on_space(folder: Path, margin: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False
