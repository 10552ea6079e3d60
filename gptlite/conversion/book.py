"""The book's `model.pth` (a `GPTModel` state dict) to a gptlite folder.

gptlite keeps the book's parameter names, so the tensors are copied as they are; what this adds is the
config the book kept in a Python dict, a check of every tensor against it, and the Hugging Face folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..configuration_gptlite import GPTLiteConfig
from ..folders import atomic_folder
from .common import ConversionResult, book_named, check_gptlite_source, parse_dtype, write_gptlite
from .configs import to_gpt2_config
from .export import gpt2_tensors
from .output import check_conversion_output
from .storage import ConversionError, FlagError, TensorSource, load_torch_file
from .verify import gpt2_from_tensors, verify_gptlite

__all__ = ["book_config", "from_book"]

def book_config(
    preset: str | None = None, config: str | Path | Mapping[str, Any] | None = None
) -> tuple[GPTLiteConfig, bool]:
    """The config from exactly one of `preset` or `config`; also whether it sets tying explicitly.

    `config` is a mapping with the book's keys (`GPT_CONFIG_124M`), a JSON string, or a JSON file path.
    """
    if (preset is None) == (config is None):
        raise FlagError("give exactly one of --preset NAME or --config JSON")
    if preset is not None:
        try:
            return GPTLiteConfig.from_preset(preset), False
        except ValueError as err:
            raise FlagError(f"--preset: {err}") from None
    if isinstance(config, (str, Path)):
        text = str(config)
        source = "--config"
        if not text.lstrip().startswith("{"):
            source = f"--config {text}"
            try:
                text = Path(text).read_text()
            except (OSError, UnicodeDecodeError) as err:
                raise FlagError(f"{source}: neither inline JSON nor a readable JSON file ({err})") from None
        try:
            config = json.loads(text)
        except json.JSONDecodeError as err:
            raise FlagError(f"{source}: not valid JSON ({err})") from None
    if not isinstance(config, Mapping):
        raise FlagError(f"--config: expected a JSON object of the book's config keys, got {type(config).__name__}")
    try:
        return GPTLiteConfig(**config), "tie_word_embeddings" in config
    except (TypeError, ValueError) as err:
        raise FlagError(f"--config: {err}") from None


def _decide_tying(config: GPTLiteConfig, explicit: bool, source: TensorSource) -> None:
    # The book's GPTModel never ties out_head to tok_emb, but after loading OpenAI's weights (chapter 5)
    # the two hold equal values. Tie exactly when they are equal, unless the config decided.
    names = source.names()
    if "out_head.weight" not in names or "tok_emb.weight" not in names:
        return  # the missing tensor is reported by the shape check
    same = source.shape("out_head.weight") == source.shape("tok_emb.weight") and torch.equal(
        source.get("out_head.weight"), source.get("tok_emb.weight")
    )
    if explicit and config.tie_word_embeddings and not same:
        raise ConversionError(
            f"{source.path}: --config sets tie_word_embeddings true, but out_head.weight differs from "
            "tok_emb.weight; drop the setting to keep the head untied"
        )
    if not explicit:
        config.tie_word_embeddings = same


def _qkv_bias_hint(name: str) -> str:
    if ".att.W_" in name and name.endswith(".bias"):
        return " (the book's GPT_CONFIG_124M has qkv_bias false; OpenAI's weights need true)"
    return ""


def from_book(
    pth: str | Path,
    out: str | Path,
    preset: str | None = None,
    config: str | Path | Mapping[str, Any] | None = None,
    dtype: str | torch.dtype | None = None,
    verify: bool = False,
    overwrite: bool = False,
) -> ConversionResult:
    """Convert the book's saved `GPTModel` to a gptlite folder.

    Args:
        pth: `torch.save(model.state_dict(), "model.pth")`, or chapter 5's
            `{"model_state_dict": ..., "optimizer_state_dict": ...}`; loaded with `weights_only=True`.
        out: output folder.
        preset: `gpt2-small` (124M), `gpt2-medium`, `gpt2-large`, `gpt2-xl`: the book's `model_configs`.
        config: the book's config dict (e.g. `GPT_CONFIG_124M`), as a mapping, JSON string or JSON file.
        dtype: `float32`, `float16` or `bfloat16`; default: the checkpoint's.
        verify: compare logits with transformers' GPT-2 holding the same weights.
        overwrite: replace a non-empty `out` that is not a previous gptlite output (see `output.py`).

    The folder appears whole or not at all: it is written beside `out`, verified, and swapped into place.
    The head is tied to the token embedding exactly when `out_head.weight` equals `tok_emb.weight`
    (as after loading OpenAI's weights), unless the config sets `tie_word_embeddings`.

    Raises:
        FolderRefused: `out` is (or contains) the .pth or config file, or holds something other than a
            gptlite model.
        ConversionError: naming the tensor (and both shapes) that does not fit the config; a failed
            verification (`VerificationFailed`).
        FolderWriteError: the disk filled up (or a write failed); a previous `out` is left as it was.
    """
    config_file = config if isinstance(config, (str, Path)) and not str(config).lstrip().startswith("{") else None
    out = check_conversion_output(out, "gptlite", inputs=[pth, config_file], overwrite=overwrite)
    gptlite_config, explicit_tying = book_config(preset, config)
    # The book's names; a gptlite state dict (its trunk under `model.`) reads the same way.
    source = book_named(load_torch_file(pth, unwrap=("model_state_dict",)))
    _decide_tying(gptlite_config, explicit_tying, source)
    names = check_gptlite_source(gptlite_config, source, "the config", _qkv_bias_hint)

    out_dtype = parse_dtype(dtype, default=source.get("tok_emb.weight").dtype)
    result = ConversionResult(out, gptlite_config, out_dtype)
    with atomic_folder(out) as tmp:
        write_gptlite(tmp, gptlite_config, out_dtype, ((name, source.get(name)) for name in names))
        if verify:

            pairs = gpt2_tensors(gptlite_config, source.get)
            reference = gpt2_from_tensors(to_gpt2_config(gptlite_config), pairs)
            result.max_logit_diff, result.tolerance = verify_gptlite(reference, tmp, out_dtype, out)
    return result
