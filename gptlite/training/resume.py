"""Resuming a run by its folder alone: ``gptlite-train --resume-from latest --output-dir DIR``.

A run's settings are recorded where it starts, in ``DIR/run.json``; each checkpoint's ``trainer_state.json``
holds the settings it was written with. A resumed run takes every setting from there: from ``run.json``
for ``--resume-from latest``, from the checkpoint's record for ``--resume-from CHECKPOINT``. Flags, a
``--config`` file or a ``--recipe`` given beside it may repeat the run's values, and change only
:data:`RESUME_SAFE`: how long to train, when to evaluate, sample, checkpoint and log, where the output
and the token cache are, and where to push the model. None of them changes what a step computes, so the
resumed steps are the ones the uninterrupted run takes. (``--grad-accum`` may change with the number of
processes as long as their product stays the same; the checkpoint check refuses any other change.)

Extending a run (a larger ``--epochs`` or ``--max-steps``) keeps its learning-rate schedule, which the
checkpoint holds: steps past its old end train at its last rate (``--min-lr`` for cosine, ``--peak-lr``
for constant) instead of warming up again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptlite.errors import UsageError
from gptlite.training.checkpoint_files import checkpoint_damage
from gptlite.training.checkpointing import (
    TRAINER_STATE_NAME,
    check_intact,
    list_checkpoints,
    load_trainer_state,
    newest_intact_checkpoint,
    resolve_resume,
)
from gptlite.training.config import TrainConfig
from gptlite.training.flags import flag
from gptlite.training.recipes import RECIPES, build_config, load_config_file
from gptlite.training.run_folder import RUN_FILE, read_run_record

__all__ = ["RESUME_SAFE", "RecordedRun", "finished_message", "recorded_run", "resolve_settings"]

RESUME_SAFE: tuple[str, ...] = (
    "epochs", "max_steps", "eval_freq", "eval_iter", "start_context", "sample_tokens", "report_to",
    "checkpoint_every", "keep_checkpoints", "output_dir", "cache_dir", "num_proc", "grad_accum", "push_to_hub",
)  # fmt: skip
# Not settings of the run but of this command: never taken from the record.
_OF_THIS_COMMAND = ("resume_from", "overwrite")


@dataclass
class RecordedRun:
    """The run a ``--resume-from`` continues: its recorded settings and the checkpoint to resume."""

    settings: dict[str, Any]
    source: Path
    """The file the settings come from (``run.json`` or a checkpoint's ``trainer_state.json``)."""
    checkpoint: Path


def recorded_run(resume_from: str | None, output_dir: str | os.PathLike[str]) -> RecordedRun | None:
    """The recorded run ``--resume-from`` names, or None when there is no checkpoint of one to continue.

    ``latest``: the newest checkpoint of the run ``OUTPUT_DIR/run.json`` records, with that file's settings
    (a folder without ``run.json``, from before gptlite recorded runs, gives None: its flags apply as given).
    A checkpoint folder: that checkpoint, with the settings it was written with.
    """
    if resume_from is None:
        return None
    if resume_from == "latest":
        out = Path(output_dir)
        record = read_run_record(out) if out.is_dir() else None
        found = list_checkpoints(out, record["run_id"]) if record else []
        # The one the resume will take: the newest whole checkpoint (the claim sets damaged ones aside and says so).
        whole = [path for path in found if checkpoint_damage(path) is None]
        if found and not whole:
            newest_intact_checkpoint(out, record["run_id"], [])  # every one damaged: the error names the newest
        checkpoint = whole[-1] if whole else None
        if checkpoint is None or not isinstance(record.get("settings"), dict):
            return None
        return RecordedRun(record["settings"], out / RUN_FILE, checkpoint)
    checkpoint = resolve_resume(resume_from, output_dir)
    check_intact(checkpoint)  # a damaged checkpoint is refused naming the file, before its settings are read
    try:
        settings = json.loads((checkpoint / TRAINER_STATE_NAME).read_text(encoding="utf-8")).get("config")
    except (OSError, ValueError, AttributeError):
        return None  # the resume itself reports the broken file
    if not isinstance(settings, dict) or not settings:
        return None
    return RecordedRun(settings, checkpoint / TRAINER_STATE_NAME, checkpoint)


def resolve_settings(
    recipe: str | None, config_file: str | os.PathLike[str] | None, overrides: dict[str, Any]
) -> tuple[TrainConfig, RecordedRun | None]:
    """The settings of ``gptlite-train``: :func:`~gptlite.training.recipes.build_config`'s, or those of the run
    ``--resume-from`` continues (with the file's and the flags' :data:`RESUME_SAFE` values on top).

    Raises:
        UsageError: a recipe, file value or flag contradicts the resumed run; the message names it.
    """
    file_values = load_config_file(config_file) if config_file is not None else {}
    resume_from = overrides.get("resume_from", file_values.get("resume_from"))
    output_dir = overrides.get("output_dir", file_values.get("output_dir", TrainConfig().run.output_dir))
    recorded = recorded_run(resume_from, output_dir)
    if recorded is None:
        return build_config(recipe, config_file, overrides), None
    name = recipe or file_values.pop("recipe", None)
    file_values.pop("recipe", None)
    if name is not None and name not in RECIPES:
        raise UsageError(f"unknown --recipe {name!r}; choose one of {', '.join(RECIPES)}")
    known = TrainConfig.field_types()
    recorded_values = {k: v for k, v in recorded.settings.items() if k in known and k not in _OF_THIS_COMMAND}
    run = TrainConfig.from_flat(recorded_values).to_dict()
    given = [(f"--recipe {name}", RECIPES[name])] if name else []
    given += [(f"--config file {config_file}", file_values), ("", overrides)]
    changes: dict[str, Any] = {}
    for origin, values in given:
        for key, value in values.items():
            if key in RESUME_SAFE or key in _OF_THIS_COMMAND:
                if origin.startswith("--recipe"):
                    continue  # a recipe's values are defaults: the run's own win
                changes[key] = value
            elif value != run[key]:
                raise UsageError(_contradiction(origin, key, value, run[key], recorded.source))
    return TrainConfig.from_flat({**run, **changes}), recorded


def _contradiction(origin: str, key: str, value: Any, recorded: Any, source: Path) -> str:
    if origin.startswith("--recipe"):
        given = f"{origin} ({key} {value!r})"
    elif origin:
        given = f"{key} {value!r} in {origin}"
    else:
        given = _as_flag(key, value)
    safe = ", ".join(flag(name) for name in RESUME_SAFE)
    return (f"{given} contradicts the run being resumed, which has {key} {recorded!r} ({source}); drop it (a resumed "
            f"run may change only {safe}), or start a new run with --overwrite or another --output-dir")


def _as_flag(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return flag(key) if value else "--no-" + flag(key)[2:]
    if isinstance(value, list):
        return " ".join([flag(key), *map(str, value)])
    return f"{flag(key)} {'none' if value is None else value}"


def finished_message(config: TrainConfig, recorded: RecordedRun) -> str | None:
    """One line saying that the resumed run is already finished and how to extend it, or None to go on.

    Finished: the checkpoint is at the run's last step and the folder's model is that checkpoint's (its
    ``history.json`` is the checkpoint's history). A checkpoint at the last step whose model was never
    written (the final save failed) is not finished: resuming writes the model.

    Raises:
        UsageError: ``--epochs`` / ``--max-steps`` end the run before the steps it has already done.
    """
    optim = config.optim
    state = load_trainer_state(recorded.checkpoint)
    total = optim.max_steps or optim.epochs * state.steps_per_epoch
    length = f"--max-steps {optim.max_steps}" if optim.max_steps else f"--epochs {optim.epochs}"
    if total < state.global_step:
        raise UsageError(f"{length} makes {total} optimizer steps, fewer than the {state.global_step} that "
                         f"{recorded.checkpoint} has done; give at least as many to resume it")
    if total > state.global_step or not _model_is_the_checkpoints(Path(config.run.output_dir), state.history):
        return None
    more = f"a --max-steps above {total}" if optim.max_steps else f"a larger --epochs or a --max-steps above {total}"
    return (f"{config.run.output_dir} holds a finished run ({length}: {total} of {total} optimizer steps done, its "
            f"model saved); to train it further, resume with {more}")


def _model_is_the_checkpoints(folder: Path, history: dict) -> bool:
    try:
        saved = json.loads((folder / "history.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # The per-step learning rates and losses are the run's fingerprint: another run's model has other ones.
    return all(isinstance(saved, dict) and saved.get(key) == history.get(key) for key in ("lr", "step_loss"))
