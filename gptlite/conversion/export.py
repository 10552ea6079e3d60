"""gptlite to a plain Hugging Face `GPT2LMHeadModel` folder (no remote code needed to load it)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel

from ..configuration_gptlite import GPTLiteConfig
from ..folders import atomic_folder
from ..modeling_gptlite import GPTLiteForCausalLM
from ..tokenization import N_VOCAB, save_tokenizer
from .common import ConversionResult, book_named, check_gptlite_source, meta_model, parse_dtype, save_streaming
from .configs import ModelRefused, read_json, to_gpt2_config
from .names import from_gptlite_layout, rows
from .output import check_conversion_output
from .storage import ConversionError, StateDictSource, TensorSource, open_weights
from .verify import verify as verify_logits

__all__ = ["gpt2_tensors", "to_hf"]

_EMBEDDING_ROWS = ("transformer.wte.weight", "lm_head.weight")


def gpt2_tensors(
    config: GPTLiteConfig, get_gptlite: Callable[[str], torch.Tensor], vocab_size: int | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """GPT-2 (Hugging Face name, tensor) pairs of a gptlite model, converted one at a time.

    Without query/key/value biases (`qkv_bias=False`) GPT-2's c_attn gets an exact zero bias. With
    `vocab_size` smaller than the model's, the embedding and head rows past it are dropped.
    """
    for row in rows(config.n_layers, head=not config.tie_word_embeddings):
        if row.hf.endswith("attn.c_attn.bias") and not config.qkv_bias:
            dtype = get_gptlite(row.gptlite[0].replace(".bias", ".weight")).dtype
            yield row.hf, torch.zeros(3 * config.emb_dim, dtype=dtype)
            continue
        tensor = from_gptlite_layout(row, [get_gptlite(name) for name in row.gptlite])
        if vocab_size is not None and row.hf in _EMBEDDING_ROWS:
            tensor = tensor[:vocab_size].contiguous()  # (vocab, emb) -> (vocab_size, emb)
        yield row.hf, tensor


def _open_gptlite(src: str | Path | GPTLiteForCausalLM) -> tuple[GPTLiteConfig, TensorSource]:
    if isinstance(src, GPTLiteForCausalLM):
        return src.config, book_named(StateDictSource(src.state_dict(), "<model>"))
    folder = Path(src)
    config_path = folder / "config.json"
    raw = read_json(config_path, "expected a gptlite folder (save_pretrained)")
    if raw.get("model_type") != "gptlite":
        raise ModelRefused(f"{config_path}: model_type is {raw.get('model_type')!r}, not 'gptlite'")
    try:
        config = GPTLiteConfig.from_pretrained(folder)
    except (TypeError, ValueError) as err:  # a field of the wrong type or value
        raise ConversionError(f"{config_path}: {err}") from None
    return config, book_named(open_weights(folder))


def to_hf(
    src: str | Path | GPTLiteForCausalLM,
    out: str | Path,
    dtype: str | torch.dtype | None = None,
    verify: bool = False,
    overwrite: bool = False,
) -> ConversionResult:
    """Write a gptlite model as a plain `GPT2LMHeadModel` folder, with GPT-2's tokenizer files.

    Every gptlite model is expressible as GPT-2 (see `configs.to_gpt2_config`). A vocabulary padded
    beyond the tokenizer's 50,257 tokens is trimmed back to it: the logits of real tokens are unchanged.

    Args:
        src: a gptlite folder (as `save_pretrained` writes it) or a `GPTLiteForCausalLM`.
        out: output folder, loadable with `GPT2LMHeadModel.from_pretrained` / `AutoModelForCausalLM`.
        dtype: `float32`, `float16` or `bfloat16`; default: the source's.
        verify: compare the written GPT-2 with the source model on the same tokens.
        overwrite: replace a non-empty `out` that is not a previous plain GPT-2 output (see `output.py`).

    The folder appears whole or not at all: it is written beside `out`, verified, and swapped into place.

    Raises:
        FolderRefused: `out` is (or contains) the source, or holds something other than a plain GPT-2 model.
        ConversionError: for a folder that is not gptlite, or missing, misshapen or extra tensors; a failed
            verification (`VerificationFailed`).
        FolderWriteError: the disk filled up (or a write failed); a previous `out` is left as it was.
    """

    source_folder = None if isinstance(src, GPTLiteForCausalLM) else src
    out = check_conversion_output(out, "gpt2", inputs=[source_folder], overwrite=overwrite)
    config, source = _open_gptlite(src)
    no_place = "; a GPT2LMHeadModel has no place for it, so this model cannot be written as GPT-2"
    check_gptlite_source(config, source, "config.json", extra_reason=no_place)
    vocab_size = N_VOCAB if config.vocab_size > N_VOCAB else None
    gpt2_config = to_gpt2_config(config, vocab_size=vocab_size)

    out_dtype = parse_dtype(dtype, default=source.get("tok_emb.weight").dtype)
    model = meta_model(GPT2LMHeadModel, gpt2_config, out_dtype)
    result = ConversionResult(out, gpt2_config, out_dtype)
    with atomic_folder(out) as tmp:
        save_streaming(model, tmp, gpt2_tensors(config, source.get, vocab_size))
        save_tokenizer(tmp, model_max_length=config.context_length)
        if verify:

            if isinstance(src, GPTLiteForCausalLM):
                # Compare in float32 on both sides, on a copy: the caller's model keeps its dtype.
                reference = src if src.dtype == torch.float32 else copy.deepcopy(src).float()
            else:
                reference = GPTLiteForCausalLM.from_pretrained(src, dtype=torch.float32)
            candidate = GPT2LMHeadModel.from_pretrained(tmp, dtype=torch.float32)
            result.max_logit_diff, result.tolerance = verify_logits(reference, candidate, out_dtype, out)
    return result
