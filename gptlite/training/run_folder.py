"""The life of a run folder (``--output-dir``): who owns it, who may write in it, and how its model appears.

A run folder belongs to one run. The run is named by a run id, recorded once the run has set up (model,
data, resumed checkpoint) in ``OUTPUT_DIR/run.json`` with the resolved settings, and in every checkpoint's
``trainer_state.json``. ``gptlite-train --resume-from latest`` takes every setting from ``run.json``.

* **Owning.** A new run takes a folder only if it holds no other run's model or checkpoints (a folder
  with only ``run.json`` or ``logs/`` left by a run that never checkpointed holds nothing to lose). A
  folder that does is refused in one line that says what to do: ``--resume-from latest`` to continue
  that run, ``--overwrite`` to replace it, or another ``--output-dir``. With ``--overwrite`` the old
  run's checkpoints are deleted as the new run starts; its model stays loadable until the new run's
  final model replaces it. A folder holding files that are not a gptlite run is refused the same way.
* **Locking.** ``OUTPUT_DIR/run.lock`` is locked (``filelock``: ``flock`` on Unix) by the process training
  there and names its PID and host; a second process on the same folder is refused while the first
  holds it. The OS frees the lock when its process ends, however it ends (``kill -9`` included), so a
  lock left by a dead process is simply taken, with a notice. Under ``accelerate launch`` only the main
  process owns the lock and decides; it broadcasts the run id (and its verdict) to the other processes.
* **Pruning** only ever removes the current run's own checkpoints.
* **The final model** lives in ``OUTPUT_DIR`` itself, beside ``checkpoints/`` and ``logs/``, so it
  cannot be written into a temporary sibling and renamed over the folder file by file. Instead the new
  folder is built as a hidden sibling of ``OUTPUT_DIR``: the new model files (config, weights,
  tokenizer, remote code, history, plots, train_config) written and fsynced there, plus hard links of
  everything of the old folder that is not the old model (``checkpoints/``, ``logs/``, ``run.json``,
  files the user put there; old weight shards are dropped so they cannot mix with the new model). The
  two folders are then exchanged in one ``renameat2(RENAME_EXCHANGE)``
  (:func:`gptlite.folders.atomic_folder`). Hard links cost no space and no copying, so the swap needs
  room for the new model only, and anything that fails before it (disk full, Ctrl-C, a bad tensor)
  leaves the previous folder byte-identical. Where the folder cannot be swapped (it is a mount point,
  or its file system has no hard links), the new files are staged inside it, fsynced, and renamed into
  place one by one: each file then appears whole, but not the set at one instant (a notice says so).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from accelerate.utils import broadcast_object_list
from filelock import FileLock, Timeout

from gptlite.errors import InputFileError
from gptlite.folders import (
    FolderRefused,
    FolderWriteError,
    atomic_file,
    atomic_folder,
    fsync_tree,
    move_into_place,
    write_failure,
)
from gptlite.training.checkpointing import (
    check_intact,
    checkpoint_run_id,
    latest_checkpoint,
    list_checkpoints,
    newest_intact_checkpoint,
    prune_checkpoints,
    remove_partial_checkpoints,
    resolve_resume,
    save_checkpoint,
)

__all__ = [
    "LOCK_FILE", "RUN_FILE", "RunFolder", "check_writable", "claim_run_folder", "read_run_record", "run_settings"
]

RUN_FILE = "run.json"
LOCK_FILE = "run.lock"
# What a run folder holds besides the model: kept (hard-linked) when a new final model replaces the old.
_RUN_ENTRIES = {RUN_FILE, LOCK_FILE, "logs", "checkpoints"}
_HIDDEN_LEFTOVER = ".tmp-"
# Weight files of an older model that a new one may not overwrite (other shards): never carried over.
_STALE_WEIGHTS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")


def read_run_record(folder: Path) -> dict | None:
    """``run.json`` of a run folder (None if there is none or it cannot be read)."""
    try:
        record = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("run_id"), str) else None


def _holds_a_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() or any(folder.glob("*.safetensors"))


def _new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


# -- the lock ---------------------------------------------------------------------------------

# The locks this process holds, by folder: the OS frees a lock when its process ends, however it ends (kill -9).
_HELD: dict[str, FileLock] = {}


def _read_holder(lock: Path) -> dict | None:
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
        return {"pid": int(holder["pid"]), "host": str(holder["host"]), "since": str(holder.get("since", "?"))}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _in_use(folder: Path, lock: Path, holder: dict | None) -> FolderRefused:
    who = "another process" if holder is None else f"process {holder['pid']} on {holder['host']}"
    since = "" if holder is None else f"since {holder['since']}, "
    return FolderRefused(f"--output-dir {folder} is in use by {who} ({since}lock file {lock}); wait for it to finish "
                         "or choose another --output-dir")


def _acquire_lock(folder: Path, notices: list[str]) -> Path:
    lock = folder / LOCK_FILE
    before = _read_holder(lock)  # read first: older filelock versions empty the file as they try the lock
    held = FileLock(lock, timeout=0)
    try:
        held.acquire()
    except Timeout:
        raise _in_use(folder, lock, _read_holder(lock) or before) from None
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    if before is not None and (before["pid"], before["host"]) != (me["pid"], me["host"]):
        # A release removes the file: one that names another process was left by a process that died holding it.
        notices.append(f"Took over {lock} from process {before['pid']} on {before['host']}, which is no longer "
                       "running")
    _HELD[str(folder.resolve())] = held
    try:  # written in place, not renamed over: a new file would be another inode, which the lock does not cover
        lock.write_text(json.dumps(me), encoding="utf-8")
    except BaseException:
        _release_lock(folder)
        raise
    return lock


def _release_lock(folder: Path) -> None:
    held = _HELD.pop(str(folder.resolve()), None)
    if held is None:
        return
    # Removed while still held: a process that opens the file after this creates a new one and locks that.
    (folder / LOCK_FILE).unlink(missing_ok=True)
    held.release()


# -- owning -------------------------------------------------------------------------------------


@dataclass
class _Claim:
    run_id: str
    resume: str | None
    notices: list[str] = field(default_factory=list)
    created: bool = False  # the folder did not exist before this run


_WHAT_TO_DO = "pass --resume-from latest to continue it, --overwrite to replace it, or another --output-dir"


def _describe_run(folder: Path, record: dict | None) -> str:
    found = list_checkpoints(folder)
    parts = []
    if found:
        parts.append(f"{len(found)} checkpoint(s), the newest {found[-1].name}")
    if _holds_a_model(folder):
        parts.append("a trained model")
    run = f"run {record['run_id']}" if record else "another run"
    return f"{run} ({' and '.join(parts)})"


def _foreign_files(folder: Path) -> list[str]:
    """Entries that neither a run's model nor its bookkeeping explains."""
    names = []
    for path in folder.iterdir():
        if path.name in _RUN_ENTRIES or path.name.startswith("."):
            continue
        names.append(path.name)
    return sorted(names)


def _cannot_write(out: Path, folder: Path, err: OSError, why: str) -> FolderWriteError:
    failure = FolderWriteError(f"--output-dir {out}: cannot write in {folder} ({err.strerror or err}){why}; make it "
                               "writable or choose another --output-dir")
    failure.errno = err.errno
    return failure


def check_writable(out: Path) -> None:
    """Create ``out`` and check, before any work, that the run can write in it and in its parent.

    Checkpoints go into ``out``; the final model is built in a hidden sibling and swapped in, so the parent must be
    writable too (unless ``out`` is a mount point: then its files are replaced one by one). Without this check a
    read-only parent trained the whole run and failed at the final save.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # err.filename: the folder that could not be created, out or one above it
        raise _cannot_write(out, Path(err.filename or out).parent, err, "") from None
    folders = [(out, "")]
    if not os.path.ismount(out.resolve()):
        folders.append((out.resolve().parent, ", where the final model is built beside it and swapped in"))
    for folder, why in folders:
        probe = folder / f".write-probe.tmp-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError as err:
            raise _cannot_write(out, folder, err, why) from None


def _claim_on_main(out: Path, resume_from: str | None, overwrite: bool) -> _Claim:
    if out.exists() and not out.is_dir():
        raise FolderRefused(f"--output-dir {out} exists and is not a folder")
    explicit = resolve_resume(resume_from, out) if resume_from not in (None, "latest") else None
    if explicit is not None:
        check_intact(explicit)  # before anything is written: a damaged checkpoint is one line, not a traceback
    created = not out.exists()
    check_writable(out)
    notices: list[str] = []
    _acquire_lock(out, notices)
    try:
        claim = _decide(out, resume_from, explicit, overwrite, notices)
        remove_partial_checkpoints(out)
    except BaseException:
        _release_lock(out)
        if created:
            out.rmdir()  # refused before anything was written: leave no empty folder
        raise
    claim.created = created
    return claim


def _decide(out: Path, resume_from: str | None, explicit: Path | None, overwrite: bool, notices: list[str]) -> _Claim:
    record = read_run_record(out)
    holds_run = bool(list_checkpoints(out)) or _holds_a_model(out)
    if resume_from == "latest":
        if record is not None:
            run_id = record["run_id"]
            latest = newest_intact_checkpoint(out, run_id, notices)
        else:  # a folder from before gptlite recorded runs: its checkpoints are the folder's one run
            latest = newest_intact_checkpoint(out, None, notices)
            run_id = (checkpoint_run_id(latest) if latest else None) or _new_run_id()
        if latest is None and holds_run and not overwrite:
            raise FolderRefused(f"--resume-from latest: {out} holds {_describe_run(out, record)} but no checkpoint "
                                "of its run to continue; pass --overwrite to replace it, or another --output-dir")
        if latest is None:
            _clear_for_new_run(out, overwrite, record)
        return _Claim(run_id, None if latest is None else str(latest), notices)
    if explicit is not None:
        run_id = checkpoint_run_id(explicit) or _new_run_id()
        inside = out.resolve() in explicit.resolve().parents
        if record is not None and record["run_id"] != run_id and holds_run and not overwrite:
            raise FolderRefused(f"--output-dir {out} holds {_describe_run(out, record)}, not the run of "
                                f"--resume-from {explicit}; pass --overwrite to replace it, or another --output-dir")
        if record is None and holds_run and not inside and not overwrite:
            raise FolderRefused(f"--output-dir {out} holds {_describe_run(out, record)}; pass --overwrite to "
                                "replace it, or another --output-dir")
        _clear_for_new_run(out, overwrite, record, keep=explicit)
        return _Claim(run_id, str(explicit), notices)
    if holds_run and not overwrite:
        raise FolderRefused(f"--output-dir {out} holds {_describe_run(out, record)}; {_WHAT_TO_DO}")
    foreign = _foreign_files(out)
    if foreign and not holds_run and not overwrite:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise FolderRefused(f"--output-dir {out} is not empty ({shown}) and holds no gptlite run; pass --overwrite "
                            "to train there anyway (its other files are kept), or choose another --output-dir")
    _clear_for_new_run(out, overwrite, record)
    return _Claim(_new_run_id(), None, notices)


def _clear_for_new_run(out: Path, overwrite: bool, record: dict | None, keep: Path | None = None) -> None:
    # --overwrite: the old run's checkpoints go now (a resume or a prune must never mistake them for the new
    # run's); its final model stays until the new one replaces it whole.
    if not overwrite:
        return
    for path in list_checkpoints(out):
        if keep is None or path.resolve() != keep.resolve():
            shutil.rmtree(path, ignore_errors=True)


@dataclass
class RunFolder:
    """The folder of the run in progress (the same object on every process; only the main one writes)."""

    path: Path
    run_id: str
    resume: Path | None
    is_main: bool
    created: bool = False
    """This run made the folder: a start that fails before writing anything in it takes it away again."""

    def release(self) -> None:
        """Give up the lock (main process); remove the folder if this run made it and left nothing in it."""
        if self.is_main:
            _release_lock(self.path)
            if self.created:
                try:
                    self.path.rmdir()
                except OSError:  # not empty: the run recorded itself, or wrote a checkpoint or its model
                    pass

    def record_settings(self, settings: dict) -> None:
        """Main process: record the run and its ``settings`` in ``run.json``, once they are known to work (the
        model, the data and a resumed checkpoint set up), so that a start that fails records nothing. A resume
        that changed some (a longer --epochs) records them: the next resume by the folder alone takes them."""
        if not self.is_main:
            return
        record = read_run_record(self.path)
        if record is None or record["run_id"] != self.run_id:
            record = {"run_id": self.run_id, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "host": socket.gethostname()}
        elif record.get("settings") == settings:
            return
        with atomic_file(self.path / RUN_FILE) as tmp:
            tmp.write_text(json.dumps({**record, "settings": settings}, indent=1), encoding="utf-8")

    def latest_checkpoint(self) -> Path | None:
        """This run's newest complete checkpoint."""
        return latest_checkpoint(self.path, self.run_id)

    def save_checkpoint(self, accelerator, state, keep: int) -> Path:
        """Write ``state`` and Accelerate's state as this run's checkpoint, then prune this run's older ones."""
        state.run_id = self.run_id
        previous = self.latest_checkpoint() if self.is_main else None
        path = save_checkpoint(accelerator, self.path, state, previous)
        if self.is_main:
            prune_checkpoints(self.path, keep, self.run_id)
        return path

    def save_final(self, write: Callable[[Path], None], say: Callable[[str], None] = print) -> None:
        """Main process: make ``write(folder)``'s files the folder's model, whole or not at all (module doc)."""
        final = self.path.resolve()
        if os.path.ismount(final):
            say(f"{final} is a mount point and cannot be swapped whole; its model files are replaced one by one")
            self._save_file_by_file(final, write)
            return
        try:
            with atomic_folder(final) as tmp:
                write(tmp)
                self._link_kept(final, tmp)
        except _NoHardLinks:
            say(f"{final.parent} has no hard links; the model files in {final} are replaced one by one")
            self._save_file_by_file(final, write)

    def _link_kept(self, old: Path, new: Path) -> None:
        # Everything but the old model's files and hidden leftovers: checkpoints (pruning alone deletes
        # those), logs/, run.json, the lock, and files the user put there.
        for entry in old.iterdir():
            name = entry.name
            if (new / name).exists() or name.startswith(".") or any(fnmatch(name, p) for p in _STALE_WEIGHTS):
                continue
            _link_tree(entry, new / name)

    def _save_file_by_file(self, final: Path, write: Callable[[Path], None]) -> None:
        staged = final / f".final.tmp-{os.getpid()}"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir()
        try:
            write(staged)
            fsync_tree(staged)
        except BaseException as err:
            shutil.rmtree(staged, ignore_errors=True)
            failure = write_failure(err, final, f"the model files in {final} are intact")
            if failure is not None:
                raise failure from err
            raise
        names = sorted(p.name for p in staged.iterdir())
        for name in sorted(names, key=lambda n: n == "config.json"):  # the config last: it names the weights
            move_into_place(staged / name, final / name)
        shutil.rmtree(staged, ignore_errors=True)


class _NoHardLinks(OSError):
    pass


def _link_tree(source: Path, target: Path) -> None:
    if source.is_symlink():
        os.symlink(os.readlink(source), target)
    elif source.is_dir():
        target.mkdir()
        for child in source.iterdir():
            if not child.name.startswith(_HIDDEN_LEFTOVER):  # a save interrupted in checkpoints/
                _link_tree(child, target / child.name)
    else:
        try:
            os.link(source, target)
        except OSError as err:
            if err.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP):  # no hard links here
                raise _NoHardLinks(err.errno, f"cannot hard-link {source}") from err
            raise


def run_settings(config) -> dict:
    """What ``run.json`` records of a run's settings: all but --overwrite, which is this command's, not the run's."""
    return {k: v for k, v in config.to_dict().items() if k != "overwrite"}


def claim_run_folder(config, accelerator) -> RunFolder:
    """Take ``config.run.output_dir`` for this run (every process calls it; the main process decides).

    Raises ``FolderRefused`` (a usage error) on every process when the folder is another run's, is locked
    by a live process, or holds other files; ``FileNotFoundError`` when ``--resume-from`` names no checkpoint.
    """

    out = Path(config.run.output_dir)
    verdict: list = [None, None]
    if accelerator.is_main_process:
        try:
            verdict[0] = _claim_on_main(out, config.run.resume_from, config.run.overwrite)
        except Exception as err:  # noqa: BLE001 - re-raised here, and told to the others so that none waits
            verdict[1] = (type(err).__name__, str(err))
            if accelerator.num_processes == 1:
                raise
            broadcast_object_list(verdict)
            raise
    if accelerator.num_processes > 1:
        broadcast_object_list(verdict)
    if verdict[1] is not None:  # another process's refusal: the same error here, so every process stops
        kind, message = verdict[1]
        kinds = {"FileNotFoundError": FileNotFoundError, "InputFileError": InputFileError,
                 "FolderWriteError": FolderWriteError}
        raise kinds.get(kind, FolderRefused)(message)
    claim: _Claim = verdict[0]
    if accelerator.is_main_process:
        for notice in claim.notices:
            print(notice, file=sys.stderr)
    return RunFolder(out, claim.run_id, None if claim.resume is None else Path(claim.resume),
                     accelerator.is_main_process, claim.created)

