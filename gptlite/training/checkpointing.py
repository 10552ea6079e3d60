"""Training checkpoints: Accelerate's ``save_state`` written atomically, the last few kept, ``latest`` found.

A checkpoint is the folder ``OUTPUT_DIR/checkpoints/checkpoint-{step}`` (``step`` = optimizer steps
done) holding what ``Accelerator.save_state`` writes (model, optimizer, scheduler, every process's RNG
states) plus ``trainer_state.json`` (where in the run it was taken, and the history so far).

Atomicity: everything is first written into ``checkpoints/.tmp-checkpoint-{step}``, then flushed to disk
and renamed into place (:func:`gptlite.folders.move_into_place`). A process killed while saving leaves only
a ``.tmp-`` folder, which :func:`list_checkpoints` ignores (and :func:`remove_partial_checkpoints` deletes),
so the previous checkpoint still resumes. A write that fails (disk full) removes the ``.tmp-`` folder and says which
checkpoint is still intact.

Each checkpoint records the run it belongs to (``run_id``): which checkpoints a run may resume from or
prune is decided by :mod:`gptlite.training.run_folder`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gptlite.configuration_gptlite import ARCHITECTURE_FIELDS
from gptlite.errors import InputFileError, one_line
from gptlite.folders import FolderWriteError, move_into_place, usual_weight_modes, write_failure
from gptlite.training.checkpoint_files import check_rng_restored, checkpoint_damage, file_sizes
from gptlite.training.config import TrainConfig
from gptlite.training.data_identity import describe_change
from gptlite.training.flags import flag

# Accelerate drops the tied output head from a checkpoint's safetensors, then warns "This should be OK, but check
# ... while reloading" at every checkpoint. For gptlite's own tie it is OK: loading ties the head again
# (tests/training/test_loop.py resumes a tied run bit for bit). Any other shared tensor is still reported.
_TIED_HEAD_REMOVED = "Removed shared tensor {'out_head.weight'} while saving"


def _drop_tied_head_warning(record: logging.LogRecord) -> bool:
    return _TIED_HEAD_REMOVED not in str(record.msg)  # accelerate puts "[RANK n] " in front


logging.getLogger("accelerate.utils.other").addFilter(_drop_tied_head_warning)

__all__ = [
    "TRAINER_STATE_NAME",
    "TrainerState",
    "check_intact",
    "check_resumable",
    "checkpoints_dir",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_trainer_state",
    "newest_intact_checkpoint",
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
    run_id: str | None = None
    """The run that wrote the checkpoint (None: written before gptlite recorded runs)."""
    architecture: dict[str, Any] = field(default_factory=dict)
    """The trained model's architecture (the :data:`ARCHITECTURE` fields of its config)."""
    data: dict[str, Any] = field(default_factory=dict)
    """What the run trains on: the sources in words and a fingerprint of their content (:mod:`.data_identity`)."""
    files: dict[str, int] = field(default_factory=dict)
    """Every other file of the checkpoint and its size, checked before resuming (:mod:`.checkpoint_files`)."""


def model_architecture(model_config) -> dict[str, Any]:
    """The ``ARCHITECTURE_FIELDS`` of a ``GPTLiteConfig``: what a resume must not change."""
    return {name: getattr(model_config, name) for name in ARCHITECTURE_FIELDS}


def checkpoints_dir(output_dir: str | os.PathLike[str]) -> Path:
    """``OUTPUT_DIR/checkpoints``."""
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | os.PathLike[str], run_id: str | None = None) -> list[Path]:
    """Complete checkpoints in ``OUTPUT_DIR/checkpoints``, oldest (fewest steps) first; with ``run_id``,
    only those that run wrote (and those that name no run: older gptlite wrote them, one run per folder)."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and (path / TRAINER_STATE_NAME).is_file() and (run_id is None
                                                                  or checkpoint_run_id(path) in (run_id, None)):
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def checkpoint_run_id(checkpoint: Path) -> str | None:
    """The run id a checkpoint records (None when it records none or cannot be read)."""
    try:
        with open(checkpoint / TRAINER_STATE_NAME, encoding="utf-8") as f:
            value = json.load(f).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def latest_checkpoint(output_dir: str | os.PathLike[str], run_id: str | None = None) -> Path | None:
    """The newest complete checkpoint (of run ``run_id``, when given), or None."""
    found = list_checkpoints(output_dir, run_id)
    return found[-1] if found else None


_DAMAGED_SUFFIX = ".damaged"


def _step(checkpoint: Path) -> int:
    match = _NAME.match(checkpoint.name)
    return int(match.group(1)) if match else -1


def newest_intact_checkpoint(output_dir: str | os.PathLike[str], run_id: str | None,
                             notices: list[str]) -> Path | None:
    """The newest checkpoint of run ``run_id`` whose files are all whole (None if it has none).

    Newer damaged ones are renamed ``checkpoint-N.damaged`` (so that neither a later ``latest`` nor pruning takes
    them for the run's newest) and a notice says why. If every checkpoint is damaged, the error names the newest.
    """
    found = list_checkpoints(output_dir, run_id)
    damaged: list[tuple[Path, str]] = []
    for path in reversed(found):
        damage = checkpoint_damage(path)
        if damage is None:
            for bad, why in damaged:
                aside = _set_aside(bad)
                notices.append(f"--resume-from latest: {why}; resuming from {path.name} instead (the damaged "
                               f"checkpoint is kept as {aside.name})")
            return path
        damaged.append((path, damage))
    if damaged:
        raise InputFileError(f"--resume-from latest: no checkpoint of this run can be resumed; the newest: "
                             f"{damaged[0][1]}; pass --overwrite to start the run again, or another --output-dir")
    return None


def _set_aside(checkpoint: Path) -> Path:
    aside, n = checkpoint.with_name(checkpoint.name + _DAMAGED_SUFFIX), 1
    while aside.exists():  # an earlier resume set another copy of this step aside: keep both
        n += 1
        aside = checkpoint.with_name(f"{checkpoint.name}{_DAMAGED_SUFFIX}-{n}")
    os.replace(checkpoint, aside)
    return aside


def check_intact(checkpoint: Path) -> None:
    """Refuse to resume a damaged ``checkpoint`` (InputFileError naming the file and an earlier intact one)."""
    damage = checkpoint_damage(checkpoint)
    if damage is None:
        return
    earlier = [p for p in list_checkpoints(checkpoint.parent.parent) if _step(p) < _step(checkpoint)]
    intact = next((p for p in reversed(earlier) if checkpoint_damage(p) is None), None)
    instead = (f"resume from the previous intact checkpoint instead: --resume-from {intact}" if intact is not None
               else "no earlier intact checkpoint is beside it")
    raise InputFileError(f"--resume-from {checkpoint}: {damage}; {instead}")


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
    """Read a checkpoint's ``trainer_state.json`` (a ``ValueError`` naming the file if it is not one)."""
    path = Path(checkpoint) / TRAINER_STATE_NAME
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
        known = {k: v for k, v in values.items() if k in TrainerState.__dataclass_fields__}
        return TrainerState(**known)
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} is not a gptlite trainer state ({err})") from None


def check_resumable(saved: TrainerState, now: TrainerState, checkpoint: Path) -> None:
    """Refuse to resume ``saved`` with a run set up as ``now``, naming the first setting that differs.

    The architecture must match (else the weights do not fit, or fit with another meaning: the same
    matrix split into other heads); the data order depends on the others. The run may be longer than the
    checkpoint's (extended), not shorter than the steps it has done.
    """
    flags = TrainConfig.field_types()
    recorded = saved.architecture or _architecture_from_settings(saved.config)
    for name in ARCHITECTURE_FIELDS:
        before, after = recorded.get(name), now.architecture.get(name)
        if before is not None and before != after:
            named = flag(name) if name in flags else name
            raise ValueError(f"--resume-from {checkpoint}: the checkpoint's model has {name} {before!r}, this run "
                             f"would build {after!r} ({named}); resume with the checkpoint's {named} or start a new "
                             "run in another --output-dir")
    change = describe_change(saved.data, now.data)
    if change is not None:  # another corpus with as many steps per epoch would pass every check below
        raise ValueError(change)
    # The processes and --grad-accum matter only through their product: an optimizer step takes global
    # batches k*P*A .. (k+1)*P*A - 1 of the epoch's order, whichever process trains which (loop docstring).
    saved_accum, accum = saved.config.get("grad_accum"), now.config.get("grad_accum")
    if saved_accum is not None and accum is not None and saved.num_processes * saved_accum != now.num_processes * accum:
        per_step = saved.num_processes * saved_accum
        fits = per_step % now.num_processes == 0
        hint = f"; continue it with --grad-accum {per_step // now.num_processes}" if fits else ""
        raise ValueError(
            f"--resume-from: the checkpoint was written by {saved.num_processes} process(es) with --grad-accum "
            f"{saved_accum} ({per_step} batches per optimizer step), this run has {now.num_processes} process(es) "
            f"with --grad-accum {accum} ({now.num_processes * accum}){hint}"
        )
    same = {
        "--batch-size": (saved.config.get("batch_size"), now.config.get("batch_size")),
        "--seed": (saved.config.get("seed"), now.config.get("seed")),
        "optimizer steps per epoch": (saved.steps_per_epoch, now.steps_per_epoch),
    }
    for what, (before, after) in same.items():
        if before is not None and before != after:
            raise ValueError(f"--resume-from: the checkpoint was written with {what} {before}, this run has {after}")
    # The run's length may change (--epochs / --max-steps extend it; the schedule stays the checkpoint's),
    # but not to end before the steps already done.
    if now.total_steps < saved.global_step:
        raise ValueError(f"--resume-from {checkpoint}: the checkpoint is at optimizer step {saved.global_step}, past "
                         f"the {now.total_steps} steps of this run; give a larger --epochs or --max-steps")


def load_checkpoint(accelerator, checkpoint: Path, num_processes: int) -> None:
    """``accelerator.load_state(checkpoint)`` (every process; ``num_processes`` wrote it), its files checked
    beforehand (:func:`check_intact`): what still fails is one line naming the checkpoint, and random states
    that were not restored are an error, not accelerate's info-level log line."""

    try:
        accelerator.load_state(str(checkpoint))
    except Exception as err:  # noqa: BLE001 - library errors of every kind; the files were checked whole
        raise InputFileError(f"--resume-from {checkpoint}: cannot be loaded ({one_line(err)})") from None
    check_rng_restored(checkpoint, accelerator.process_index, num_processes)


def remove_partial_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete the ``.tmp-`` folders that saves interrupted by a crash left behind; return them."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    partial = [p for p in root.iterdir() if p.name.startswith(_TMP_PREFIX)]
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def _architecture_from_settings(settings: dict[str, Any]) -> dict[str, Any]:
    # Checkpoints written before TrainerState recorded the architecture: rebuild it from the run's settings.
    if not settings or settings.get("init_from"):
        return {}
    try:
        known = {k: v for k, v in settings.items() if k in TrainConfig.field_types()}
        return model_architecture(TrainConfig.from_flat(known).model_config())
    except (TypeError, ValueError):
        return {}


def prune_checkpoints(output_dir: str | os.PathLike[str], keep: int, run_id: str | None = None) -> list[Path]:
    """Delete all but the ``keep`` newest complete checkpoints (of run ``run_id`` only, when given);
    return the deleted folders."""
    found = list_checkpoints(output_dir, run_id)
    doomed = found[: max(len(found) - keep, 0)]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def save_checkpoint(
    accelerator, output_dir: str | os.PathLike[str], state: TrainerState, previous: Path | None = None
) -> Path:
    """Save Accelerate's state and ``state`` as ``checkpoints/checkpoint-{global_step}``, atomically.

    Every process must call this (each writes its own RNG states); the main process then moves the
    finished folder into place. If a write fails on any process (disk full), every process raises
    ``FolderWriteError`` saying that ``previous`` (the run's last checkpoint) is intact, and the
    temporary folder is removed.
    """
    root = checkpoints_dir(output_dir)
    final = root / f"checkpoint-{state.global_step}"
    tmp = root / f"{_TMP_PREFIX}{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    failure: Exception | None = None
    try:
        accelerator.save_state(str(tmp))
    except Exception as err:  # noqa: BLE001 - every process must learn of it before anyone raises
        failure = err
    if _failed_anywhere(accelerator, failure):  # doubles as the barrier: every process's files are in tmp
        _give_up(accelerator, failure, tmp, final, previous)
    if accelerator.is_main_process:
        try:
            # Written last: a folder with trainer_state.json is complete (list_checkpoints relies on it), and it
            # records the size of every other file, so that a truncated or missing one is found before resuming.
            state.files = file_sizes(tmp)
            (tmp / TRAINER_STATE_NAME).write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
            usual_weight_modes(tmp)
            move_into_place(tmp, final)  # a step saved again (a resumed run) replaces its old copy whole
        except Exception as err:  # noqa: BLE001
            failure = err
    if _failed_anywhere(accelerator, failure):
        _give_up(accelerator, failure, tmp, final, previous)
    accelerator.wait_for_everyone()
    return final


def _failed_anywhere(accelerator, failure: Exception | None) -> bool:
    if accelerator.num_processes == 1:
        return failure is not None
    flag = torch.tensor([0.0 if failure is None else 1.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def _give_up(accelerator, failure: Exception | None, tmp: Path, final: Path, previous: Path | None) -> None:
    intact = f"{previous} is intact" if previous is not None else "this run has no earlier checkpoint"
    # Judged before the partial files are removed: a full disk is then still full.
    error = None if failure is None else write_failure(failure, final, intact)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    if failure is None:
        raise FolderWriteError(f"Writing {final} failed on another process; {intact}")
    if error is None:
        raise failure
    raise error from failure
