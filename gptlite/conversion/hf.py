"""Hugging Face GPT-2 checkpoints (`GPT2LMHeadModel` folders or Hub ids) to gptlite."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel

from ..configuration_gptlite import GPTLiteConfig
from ..downloads import hub_snapshot
from ..folders import atomic_folder
from ..modeling_gptlite import GPTLiteForCausalLM
from .common import (
    ConversionResult,
    check_gpt2_source,
    expected_gpt2_shapes,
    gpt2_tensors_to_gptlite,
    meta_model,
    parse_dtype,
    write_gptlite,
)
from .configs import from_gpt2_config, read_gpt2_config
from .output import check_conversion_output
from .storage import ConversionError, TensorSource, open_weights, weights_files
from .verify import verify_gptlite, weights_file_read

__all__ = ["from_hf", "gpt2_state_dict_in_memory", "open_hf_checkpoint"]

# Buffers older transformers versions saved with the weights (the causal mask and its fill value).
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_PREFIX = "transformer."


class _GPT2Checkpoint:
    """A GPT-2 checkpoint's tensors under GPT2LMHeadModel's names, whatever prefix the file used.

    Checkpoints saved from `GPT2Model` (like the original `gpt2` upload) lack the `transformer.` prefix.
    """

    def __init__(self, source: TensorSource):
        self.source = source
        self._names = {}
        for name in source.names():
            if name.endswith(_IGNORED_SUFFIXES):
                continue
            full = name if name.startswith(_PREFIX) or name == "lm_head.weight" else _PREFIX + name
            self._names[full] = name

    def file_name(self, name: str) -> str:
        """The name the file uses for a GPT2LMHeadModel name."""
        return self._names.get(name, name)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {full: self.source.shape(name) for full, name in self._names.items()}

    def file_of(self, name: str) -> Path:
        return self.source.file_of(self.file_name(name))

    def get(self, name: str) -> torch.Tensor:
        return self.source.get(self._names[name])


def open_hf_checkpoint(src: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local folder as is; otherwise `src` is a Hub id, downloaded (or found in the cache)."""
    path = Path(src)
    if path.is_dir():
        return path
    if path.exists() or str(src).startswith((".", "/", "~")) or str(src).count("/") > 1:
        raise FileNotFoundError(f"{src} is not a checkpoint folder (and not a Hugging Face Hub id)")
    return hub_snapshot(str(src), cache_dir=cache_dir)


def _checked_checkpoint(folder: Path, notice: Callable[[str], None] | None = None
                        ) -> tuple[GPTLiteConfig, _GPT2Checkpoint]:
    """The gptlite config of a GPT-2 folder and its tensors, every one checked against the name table."""
    gpt2_config = read_gpt2_config(folder / "config.json")
    config = from_gpt2_config(gpt2_config, where=str(folder / "config.json"))
    checkpoint = _GPT2Checkpoint(open_weights(folder, notice))  # the file transformers reads
    found = checkpoint.shapes()

    model = meta_model(GPTLiteForCausalLM, config, torch.float32)
    expected = expected_gpt2_shapes(model)
    hint = f"config.json ({config.n_layers} layers, emb_dim {config.emb_dim}, vocab {config.vocab_size})"
    check_gpt2_source(found, expected, checkpoint.file_of, hint, checkpoint.file_name)
    # With a tied head, a saved lm_head.weight is a copy of wte and is simply not used.
    unexpected = sorted(set(found) - set(expected) - {"lm_head.weight"})
    if unexpected:
        raise ConversionError(
            f"{checkpoint.file_of(unexpected[0])}: tensor {unexpected[0]} is not part of a GPT-2 language model "
            f"({len(unexpected)} such tensors); gptlite has no place for it"
        )
    return config, checkpoint


def from_hf(
    src: str | Path,
    out: str | Path,
    dtype: str | torch.dtype | None = None,
    verify: bool = False,
    cache_dir: str | Path | None = None,
    overwrite: bool = False,
) -> ConversionResult:
    """Convert a Hugging Face GPT-2 checkpoint to a gptlite folder.

    Args:
        src: a folder with config.json and model.safetensors (sharded or not) or pytorch_model.bin, or a
            Hub id such as `gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`, `distilgpt2`.
        out: output folder (weights, config, remote code, tokenizer).
        dtype: `float32`, `float16` or `bfloat16`; default: the checkpoint's.
        verify: run both models on the same tokens and report the largest logit difference.
        cache_dir: Hugging Face cache folder for Hub downloads.
        overwrite: replace a non-empty `out` that is not a previous gptlite output (see `output.py`).

    The folder appears whole or not at all: it is written beside `out`, verified, and swapped into place.

    Raises:
        FolderRefused: `out` is (or contains) the source, or holds something other than a gptlite model.
        ConversionError: for options gptlite cannot express, missing or wrongly shaped tensors, and a
            failed verification (`VerificationFailed`).
        FolderWriteError: the disk filled up (or a write failed); a previous `out` is left as it was.
    """
    out = check_conversion_output(out, "gptlite", inputs=[src], overwrite=overwrite)
    folder = open_hf_checkpoint(src, cache_dir)
    check_conversion_output(out, "gptlite", inputs=[folder], overwrite=overwrite)  # a Hub id's snapshot
    config, checkpoint = _checked_checkpoint(folder)

    out_dtype = parse_dtype(dtype, default=checkpoint.get("transformer.wte.weight").dtype)
    result = ConversionResult(out, config, out_dtype)
    with atomic_folder(out) as tmp:
        write_gptlite(tmp, config, out_dtype, gpt2_tensors_to_gptlite(config, checkpoint.get))
        if verify:


            with weights_file_read() as read_by_transformers:
                reference = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32)
            sources = (weights_files(folder)[0], read_by_transformers[0] if read_by_transformers else None)
            result.max_logit_diff, result.tolerance = verify_gptlite(reference, tmp, out_dtype, out, sources)
    return result


def gpt2_state_dict_in_memory(
    src: str | Path, cache_dir: str | Path | None = None, notice: Callable[[str], None] | None = None
) -> tuple[GPTLiteConfig, dict[str, torch.Tensor]]:
    """What `from_hf` would write, without writing: the gptlite config and state dict of a GPT-2 checkpoint.

    The same checks and the same name table as `from_hf`; tensors keep the checkpoint's dtype. A tied head
    has no `out_head.weight` entry (it is the token embedding).

    Raises:
        ConversionError: for options gptlite cannot express, and missing or wrongly shaped tensors.

    `notice` gets the one line naming the file read when the folder holds several (None: stderr).
    """
    config, checkpoint = _checked_checkpoint(open_hf_checkpoint(src, cache_dir), notice)
    return config, dict(gpt2_tensors_to_gptlite(config, checkpoint.get))
