"""Any model a command is given (a folder or a Hub id) as a gptlite model with its real weights, or one error line.

``gptlite-generate``, ``gptlite-eval`` and ``gptlite-train --init-from`` all load through :func:`load_model`:

* a gptlite folder (``model_type: gptlite``) loads with ``from_pretrained`` once its config and every tensor's
  name and shape have been checked, so a wrong tensor is one error naming it instead of a load report and a
  model with random weights;
* a plain GPT-2 folder (``model_type: gpt2``: what ``gptlite-convert to-hf`` writes, or any ``GPT2LMHeadModel``
  saved with ``save_pretrained``) is converted in memory through the same name table and checks as
  ``gptlite-convert from-hf`` (:func:`gptlite.conversion.hf.gpt2_state_dict_in_memory`), with a one-line notice;
* any other ``model_type`` is refused, naming it;
* a Hub id is fetched (or found in the cache) first; a name that is neither a folder nor reachable on the Hub
  is refused.

Errors are :class:`~gptlite.errors.UsageError` (the command line names something gptlite cannot use: exit 2) or
:class:`~gptlite.errors.InputFileError` (a file that was found is broken: exit 1), one line each, naming the file,
field or tensor. The model module knows nothing of this; it lives beside the commands.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from .configuration_gptlite import GPTLiteConfig
from .conversion import (
    ConversionError,
    book_named,
    check_gptlite_source,
    from_gpt2_config,
    gpt2_state_dict_in_memory,
    open_weights,
    read_gpt2_config,
)
from .downloads import DownloadError, hub_snapshot, is_offline
from .errors import InputFileError, UsageError, one_line
from .modeling_gptlite import GPTLiteForCausalLM

__all__ = ["first_non_finite", "load_model", "model_folder", "read_model_config"]


def _notice(message: str) -> None:
    print(message, file=sys.stderr)


def _looks_like_a_path(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else can only be meant as a local path.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def model_folder(source: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local folder of `source`: the folder itself, or the Hub snapshot (config and weights) of a Hub id.

    Raises:
        UsageError: when `source` is a file, or neither a folder nor reachable on the Hub.
    """
    name = os.fspath(source)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UsageError(f"{name} is a file, not a model folder (a folder with config.json and model.safetensors)")
    if _looks_like_a_path(name) or not name.strip():
        raise UsageError(f"{name} is neither a folder nor reachable on the Hub: no such folder, and it is not a Hub id")
    try:
        return hub_snapshot(name, cache_dir=cache_dir)
    except DownloadError as err:
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if is_offline() else one_line(err)
        raise UsageError(f"{name} is neither a folder nor reachable on the Hub ({why})") from None


def _read_raw_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise UsageError(f"{folder} has no config.json, so it is not a model folder (gptlite-train's output or a "
                         "save_pretrained folder)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise InputFileError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise InputFileError(f"{path}: not valid JSON (line {err.lineno} column {err.colno}: {err.msg})") from None
    if not isinstance(raw, dict):
        raise InputFileError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def _naming(where: str, err: BaseException) -> str:
    # GPTLiteConfig's own checks already name the file they read; others get it in front.
    message = one_line(err)
    return message if where in message else f"{where}: {message}"


def _gptlite_config(folder: Path, overrides: Mapping[str, Any]) -> GPTLiteConfig:
    try:
        return GPTLiteConfig.from_pretrained(folder, **overrides)
    except (ValueError, TypeError, OSError) as err:  # a field of the wrong type or value
        raise InputFileError(_naming(str(folder / "config.json"), err)) from None


def _gpt2_config(folder: Path) -> GPTLiteConfig:
    where = str(folder / "config.json")
    try:
        return from_gpt2_config(read_gpt2_config(folder / "config.json"), where=where)
    except (ValueError, TypeError) as err:  # a GPT-2 option gptlite cannot express (the message names it)
        raise UsageError(_naming(where, err)) from None


def read_model_config(folder: str | os.PathLike[str]) -> tuple[str, GPTLiteConfig]:
    """``(model_type, gptlite config)`` of a model folder, without reading its weights.

    Raises:
        UsageError: no config.json, a model_type other than gptlite or gpt2, or GPT-2 options gptlite lacks.
        InputFileError: config.json is not valid JSON or has a field of the wrong type or value.
    """
    folder = Path(folder)
    model_type = _read_raw_config(folder).get("model_type")
    if model_type == "gptlite":
        return model_type, _gptlite_config(folder, {})
    if model_type == "gpt2":
        return model_type, _gpt2_config(folder)
    raise UsageError(
        f"{folder / 'config.json'}: model_type is {model_type!r}; gptlite runs gptlite models and converts plain "
        "GPT-2 ('gpt2') in memory, nothing else"
    )


def _check_gptlite_weights(folder: Path, config: GPTLiteConfig, notice: Callable[[str], None] | None) -> None:
    try:  # the check speaks the book's names, whether the folder's trunk is under `model.` or not
        source = book_named(open_weights(folder, notice))  # the file from_pretrained reads below
        check_gptlite_source(config, source, described_by=str(folder / "config.json"))
    except FileNotFoundError as err:  # a config without weights
        raise InputFileError(one_line(err)) from None
    except ConversionError as err:  # unreadable file, missing/extra tensor, wrong shape: the message names it
        raise InputFileError(one_line(err)) from None


def _load_gptlite(folder: Path, dtype: torch.dtype, overrides: Mapping[str, Any], attn: str | None,
                  notice: Callable[[str], None] | None):
    config = _gptlite_config(folder, overrides)
    _check_gptlite_weights(folder, config, notice)
    options = {} if attn is None else {"attn_implementation": attn}
    try:
        return GPTLiteForCausalLM.from_pretrained(folder, config=config, dtype=dtype, **options)
    except (OSError, ValueError, RuntimeError) as err:  # checked above; what is left is the file itself
        raise InputFileError(f"{folder}: {one_line(err)}") from None


def _owning(tensor: torch.Tensor) -> torch.Tensor:
    # The query/key/value biases are views of GPT-2's fused c_attn bias: as parameters sharing one storage
    # they would be saved as "shared tensors" and dropped from checkpoints. Give each its own storage.
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        return tensor.clone()
    return tensor


def _load_gpt2(folder: Path, dtype: torch.dtype, overrides: Mapping[str, Any], attn: str | None,
               notice: Callable[[str], None] | None):
    try:  # read_model_config has already refused GPT-2 options gptlite cannot express (exit 2)
        config, state_dict = gpt2_state_dict_in_memory(folder, notice=notice)
    except (ConversionError, FileNotFoundError) as err:  # unreadable file, missing or wrongly shaped tensor
        raise InputFileError(one_line(err)) from None
    for key, value in overrides.items():
        setattr(config, key, value)
    config.validate_architecture()
    with torch.device("meta"):  # names, shapes and tying, no memory: every parameter is assigned below
        model = GPTLiteForCausalLM(config)
    state_dict = {name: _owning(tensor.to(dtype)) for name, tensor in state_dict.items()}
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    tied = {"out_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) != tied or unexpected:  # the conversion checked every name: this would be a gptlite bug
        raise RuntimeError(f"{folder}: in-memory conversion left {sorted(set(missing) - tied) or unexpected}")
    model.tie_weights()
    if attn is not None:
        model.set_attn_implementation(attn)
    return model


def first_non_finite(model: torch.nn.Module) -> str | None:
    """The name of the first parameter of ``model`` holding a NaN or an infinity (None if none does).

    Parameters only: a buffer may hold -inf on purpose (an attention mask).
    """
    for name, tensor in model.named_parameters():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _check_finite(model: torch.nn.Module, folder: Path) -> None:
    # A model saved by a run that diverged loads fine and generates "!!!!" with exit 0: refuse it here instead.
    name = first_non_finite(model)
    if name is not None:
        raise InputFileError(f"{folder}: tensor {name} holds NaN or infinite values, so the model cannot compute "
                             "anything (saved by a training run that diverged?)")


def load_model(
    source: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    overrides: Mapping[str, Any] | None = None,
    attn_implementation: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    notice: Callable[[str], None] | None = None,
) -> GPTLiteForCausalLM:
    """The gptlite model in `source` (a folder or a Hub id) with its real weights, in eval mode, on the CPU.

    Args:
        source: a gptlite folder, a plain GPT-2 folder (converted in memory), or a Hub id of either.
        dtype: dtype of the weights.
        overrides: config fields to change that do not change shapes (``drop_rate``).
        attn_implementation: ``"sdpa"`` or ``"eager"`` (default: the model's).
        cache_dir: Hugging Face cache for Hub downloads.
        notice: called with the one-line notices (a GPT-2 folder converted; a folder holding more than one weights
            file, naming the one read) (None: print them on stderr).

    Raises:
        UsageError: `source` cannot be found, is not a model folder, or is a kind of model gptlite does not run.
        InputFileError: a file of the model is broken (bad JSON, a truncated weights file, a missing or
            wrongly shaped tensor, a tensor holding NaN or infinity); the message names the file and the tensor.
    """
    overrides = dict(overrides or {})
    folder = model_folder(source, cache_dir)
    model_type, _ = read_model_config(folder)
    if model_type == "gpt2":
        model = _load_gpt2(folder, dtype, overrides, attn_implementation, notice)
        (notice or _notice)(f"{os.fspath(source)} is a GPT-2 folder (model_type gpt2): converted to gptlite in memory")
    else:
        model = _load_gptlite(folder, dtype, overrides, attn_implementation, notice)
    _check_finite(model, folder)
    return model.eval()
