"""Training checkpoints: Accelerate's ``save_state`` written atomically, the last few kept, ``latest`` found.

A checkpoint is the folder ``OUTPUT_DIR/checkpoints/checkpoint-{step}`` (``step`` = optimizer steps
done) holding what ``Accelerator.save_state`` writes (model, optimizer, scheduler, every process's RNG
states) plus ``trainer_state.json`` (where in the run it was taken, and the history so far).

Atomicity: everything is first written into ``checkpoints/.tmp-checkpoint-{step}``, flushed to disk,
and the folder is then renamed into place. A process killed while saving leaves only a ``.tmp-`` folder,
which :func:`list_checkpoints` ignores (and :func:`remove_partial_checkpoints` deletes), so the previous
checkpoint still resumes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "TRAINER_STATE_NAME",
    "TrainerState",
    "checkpoints_dir",
    "latest_checkpoint",
    "list_checkpoints",
    "load_trainer_state",
    "prune_checkpoints",
    "remove_partial_checkpoints",
    "resolve_resume",
    "save_checkpoint",
]

TRAINER_STATE_NAME = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")
_TMP_PREFIX = ".tmp-"


@dataclass
class TrainerState:
    """Where a run stands, saved next to Accelerate's state so that a resumed run continues exactly."""

    global_step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    """Epoch in progress (0-based)."""
    step_in_epoch: int = 0
    """Optimizer steps done in that epoch; ``steps_per_epoch`` means the epoch is complete."""
    steps_per_epoch: int = 0
    """Optimizer steps in one epoch (0 for a stream, whose length is unknown)."""
    total_steps: int = 0
    """Optimizer steps of the whole run (the learning-rate schedule's length)."""
    tokens_seen: int = 0
    """Input tokens trained on, summed over all processes."""
    num_processes: int = 1
    """Processes that wrote the checkpoint; a resume keeps processes × --grad-accum (the data order depends on it)."""
    history: dict[str, list] = field(default_factory=dict)
    """The run's :class:`~gptlite.training.monitoring.History` so far."""
    config: dict[str, Any] = field(default_factory=dict)
    """The run's settings (:meth:`TrainConfig.to_dict`)."""


def checkpoints_dir(output_dir: str | os.PathLike[str]) -> Path:
    """``OUTPUT_DIR/checkpoints``."""
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints in ``OUTPUT_DIR/checkpoints``, oldest (fewest steps) first."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and (path / TRAINER_STATE_NAME).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def resolve_resume(resume_from: str | None, output_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint ``--resume-from`` names: ``latest`` (None if the run has none yet) or a folder.

    Raises:
        FileNotFoundError: naming the value, when a given folder is not a complete checkpoint.
    """
    if resume_from is None:
        return None
    if resume_from == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume_from)
    if not (path / TRAINER_STATE_NAME).is_file():
        what = "does not exist" if not path.exists() else f"has no {TRAINER_STATE_NAME} (not a complete checkpoint)"
        raise FileNotFoundError(f"--resume-from {resume_from} {what}")
    return path


def load_trainer_state(checkpoint: str | os.PathLike[str]) -> TrainerState:
    """Read a checkpoint's ``trainer_state.json``."""
    with open(Path(checkpoint) / TRAINER_STATE_NAME, encoding="utf-8") as f:
        return TrainerState(**json.load(f))


def remove_partial_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete the ``.tmp-`` folders that saves interrupted by a crash left behind; return them."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    partial = [p for p in root.iterdir() if p.name.startswith(_TMP_PREFIX)]
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def prune_checkpoints(output_dir: str | os.PathLike[str], keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest complete checkpoints; return the deleted folders."""
    found = list_checkpoints(output_dir)
    doomed = found[: max(len(found) - keep, 0)]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def _fsync_tree(folder: Path) -> None:
    # A rename is atomic, but without a flush the renamed folder could hold unwritten files after a power cut.
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(accelerator, output_dir: str | os.PathLike[str], state: TrainerState, keep: int) -> Path:
    """Save Accelerate's state and ``state`` as ``checkpoints/checkpoint-{global_step}``, atomically.

    Every process must call this (each writes its own RNG states). The main process then renames the
    finished folder into place and deletes checkpoints beyond the ``keep`` newest.
    """
    root = checkpoints_dir(output_dir)
    final = root / f"checkpoint-{state.global_step}"
    tmp = root / f"{_TMP_PREFIX}{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every process's files are in tmp
    if accelerator.is_main_process:
        # Written last: a folder with trainer_state.json is complete (list_checkpoints relies on it).
        (tmp / TRAINER_STATE_NAME).write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
        _fsync_tree(tmp)
        if final.exists():  # e.g. a resumed run re-saving a step: set the old copy aside, then swap
            stale = root / f"{_TMP_PREFIX}old-{final.name}"
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(final, stale)
            os.replace(tmp, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(tmp, final)
        prune_checkpoints(output_dir, keep)
    accelerator.wait_for_everyone()
    return final
