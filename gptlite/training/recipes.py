"""Built-in recipes and how a run's settings are put together: recipe < ``--config`` file < flags.

* ``default``: the main job, :class:`~gptlite.training.config.TrainConfig`'s defaults (a small model on
  the built-in Python-documentation corpus), sampling from "The for statement".
* ``book-ch5``: chapter 5 of the book: the 124M model at context 256, stride 256, batch 2, 10 epochs,
  AdamW at a constant 4e-4 with weight decay 0.1, evaluation every 5 steps over 1 batch, no clipping.
  It runs book-exact (:mod:`gptlite.training.book_exact`): the book's loop and random draws, so its
  losses are the book's.
* ``book-appendix-d``: appendix D's loop on the same model and data: 15 epochs, linear warmup over 20%
  of the steps from 1e-5 to a peak of 5e-4 (the value the text of section D.4 names), cosine decay to
  1e-5, gradient clipping at 1.0 from the first step after warmup, evaluation every 5 steps over 1 batch,
  on gptlite's own training path. With ``--book-exact`` it runs the D.4 listing as printed instead, draw for
  draw (:data:`BOOK_EXACT`): the listing builds ``AdamW`` without ``lr=`` and reads its peak back from
  the optimizer, so the printed run peaks at AdamW's default 1e-3 (the book's erratum: its repository
  now passes ``lr=0.001`` explicitly), and it clips only when ``global_step > warmup_steps``.

Both book recipes train on the book's ``the-verdict.txt`` (``--data the-verdict``, downloaded once; see
:mod:`gptlite.training.builtin_data`) unless ``--data`` or ``--dataset`` says otherwise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from gptlite.configuration_gptlite import PRESET_FIELDS, GPTLiteConfig
from gptlite.errors import UsageError
from gptlite.loading import model_folder, read_model_config
from gptlite.training.config import TrainConfig
from gptlite.training.flags import coerce, flag
from gptlite.training.preflight import check_vocabulary

__all__ = ["BOOK_EXACT", "RECIPES", "build_config", "load_config_file"]

_BOOK_124M = {
    "emb_dim": 768,
    "n_layers": 12,
    "n_heads": 12,
    "drop_rate": 0.1,
    "qkv_bias": False,
    "tie_word_embeddings": False,
    "context_length": 256,
    "stride": 256,
    "train_ratio": 0.9,
    # The book seeds with torch.manual_seed(123) before building GPTModel, with PyTorch's default init.
    "seed": 123,
    "initializer": "book",
    "attn_implementation": "eager",
    "fast_dropout": False,  # torch's F.dropout: the book's random draws
    "batch_size": 2,
    "grad_accum": 1,
    "weight_decay": 0.1,
    "start_context": "Every effort moves you",
    "sample_tokens": 50,
    "data": ["the-verdict"],
}

RECIPES: dict[str, dict[str, Any]] = {
    "default": {"start_context": "The for statement"},
    "book-ch5": {
        **_BOOK_124M,
        "epochs": 10,
        "schedule": "constant",
        "peak_lr": 4e-4,
        "grad_clip": None,
        "eval_freq": 5,
        "eval_iter": 1,
        "book_exact": True,
    },
    "book-appendix-d": {
        **_BOOK_124M,
        "epochs": 15,
        "schedule": "cosine",
        "initial_lr": 1e-5,
        "peak_lr": 5e-4,
        "min_lr": 1e-5,
        "warmup_ratio": 0.2,
        "grad_clip": 1.0,
        "clip_mode": "after-warmup",
        "eval_freq": 5,
        "eval_iter": 1,
    },
}

# What --book-exact changes in a recipe, on top of the recipe and below a --config file and the flags: the
# settings of the book's listing where the general recipe departs from it.
BOOK_EXACT: dict[str, dict[str, Any]] = {
    "book-appendix-d": {
        "peak_lr": 1e-3,  # AdamW's default: the D.4 listing never passes its peak_lr = 5e-4 to the optimizer
        "clip_mode": "book-d4",  # global_step > warmup_steps, as printed
    },
}


def _coerce(name: str, value: Any, source: str) -> Any:
    return coerce(name, TrainConfig.field_types()[name], value, source)


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read settings from a YAML or JSON file: a mapping of field names (``emb_dim`` or ``emb-dim``) to values.

    A ``recipe`` key picks the recipe the file builds on. Raises ``ValueError`` naming the file and the
    key for unknown keys and bad values, ``FileNotFoundError`` if the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"--config file {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"--config file {path} must hold a mapping of settings, got {type(raw).__name__}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name == "recipe":
            values[name] = str(value)
        elif name in TrainConfig.field_types():
            values[name] = _coerce(name, value, str(path))
        else:
            known = ", ".join(sorted(TrainConfig.field_types()))
            raise ValueError(f"--config file {path}: unknown setting {key!r}; known settings: recipe, {known}")
    return values


def _init_from_architecture(merged: dict[str, Any], level: dict[str, int]) -> dict[str, Any]:
    """``--init-from`` fixes the architecture as a preset does: the source model's.

    A value set in the ``--config`` file or by a flag (a recipe's sizes are only defaults) that contradicts
    the source is refused, naming the flag and both values. The window length may be shorter than the
    source's context, never longer; unset, it is capped at the source's.
    """
    source = merged["init_from"]
    _, config = read_model_config(model_folder(source))
    check_vocabulary(config.vocab_size, f"--init-from {source}")  # now, not as an index error at the first step
    fixed = {key: getattr(config, key) for key in PRESET_FIELDS}
    preset_given = merged.get("preset") is not None and level.get("preset", 0) >= 2
    for key in PRESET_FIELDS:
        if merged.get(key, fixed[key]) == fixed[key] or (level.get(key, 0) < 2 and not preset_given):
            continue
        if level.get(key, 0) >= 2:
            given = f"{flag(key)} {merged[key]}"
        else:  # the preset's value
            given = f"--preset {merged['preset']} ({key} {merged[key]})"
        raise UsageError(
            f"{given} contradicts --init-from {source}, which has {key} {fixed[key]}; drop it to train the "
            "source's architecture"
        )
    length = merged.get("context_length", TrainConfig().data.context_length)
    if length > config.context_length:
        if level.get("context_length", 0) >= 2:
            raise UsageError(
                f"--context-length {length} exceeds the context_length {config.context_length} of --init-from {source}"
            )
        length = config.context_length
    return {**fixed, "context_length": length, "preset": None}


def _preset_architecture(preset: str) -> dict[str, Any]:
    try:
        config = GPTLiteConfig.from_preset(preset)
    except ValueError as err:
        raise ValueError(f"--preset: {err}") from None
    return {key: getattr(config, key) for key in PRESET_FIELDS}


def build_config(
    recipe: str | None = None,
    config_file: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """The settings of a run: the recipe, then the ``--config`` file, then ``overrides`` (the flags) on top.

    The recipe is ``recipe`` if given, else the file's ``recipe`` key, else ``"default"``. A ``preset``
    sets the architecture fields (``emb_dim``, ...) to its own, replacing those of lower levels; a
    different value given at the same or a higher level is an error, as the two disagree about the model.
    When the result is book-exact, the recipe's :data:`BOOK_EXACT` settings join it at the recipe's level;
    a ``dataset`` given above the recipe drops the recipe's default ``data``.
    """
    file_values = load_config_file(config_file) if config_file is not None else {}
    overrides = {k: v for k, v in (overrides or {}).items() if k != "recipe"}
    name = recipe or file_values.pop("recipe", None) or "default"
    file_values.pop("recipe", None)
    if name not in RECIPES:
        raise ValueError(f"unknown --recipe {name!r}; choose one of {', '.join(RECIPES)}")
    unknown = sorted(set(overrides) - set(TrainConfig.field_types()))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}")

    recipe_values = dict(RECIPES[name])
    book_exact = overrides.get("book_exact", file_values.get("book_exact", recipe_values.get("book_exact", False)))
    if book_exact:
        recipe_values |= BOOK_EXACT.get(name, {})
    given_dataset = file_values.get("dataset") or overrides.get("dataset")
    if given_dataset and "data" not in file_values and "data" not in overrides:
        recipe_values.pop("data", None)  # a --dataset replaces the recipe's default text

    merged: dict[str, Any] = {}
    level: dict[str, int] = {}  # where each key was last set: 1 recipe, 2 file, 3 flags
    for rank, values in enumerate((recipe_values, file_values, overrides), start=1):
        if values.get("preset") is not None:
            for key in PRESET_FIELDS:  # the preset supersedes architecture from lower levels
                merged.pop(key, None)
                level.pop(key, None)
        for key, value in values.items():
            merged[key] = value
            level[key] = rank
    if merged.get("preset") is not None:
        fixed = _preset_architecture(merged["preset"])
        clash = [k for k in PRESET_FIELDS if level.get(k, 0) >= level["preset"] and merged[k] != fixed[k]]
        if clash:
            given = ", ".join(f"{flag(k)} {merged[k]}" for k in clash)
            raise ValueError(f"--preset {merged['preset']} fixes the architecture; drop {given} or the preset")
        merged |= fixed  # so the resolved settings (and train_config.json) show the real model
    if merged.get("init_from") is not None:
        merged |= _init_from_architecture(merged, level)
    return TrainConfig.from_flat(merged)
