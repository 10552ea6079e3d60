"""`--verify`: run the source and the converted model on the same tokens and compare their logits.

The source side is always transformers' own `GPT2LMHeadModel` holding the source weights, so a check
compares gptlite against an independent implementation, not against itself. Both sides run in float32;
what differs is the order of summation and, for float16/bfloat16 output, the rounding of the weights.

A difference above the output dtype's tolerance fails the conversion (before the folder is moved into
place). The tolerance is `RELATIVE_TOLERANCE[dtype]` times the largest |logit| of the source, plus 1e-6
(so that a model whose logits are all near zero is not failed for float32's own rounding):
- float32: 1e-4. Measured (difference / largest |logit|) on the test fixtures and random GPT-2s up to
  12 layers x 256: at most 1.7e-6.
- float16: 1.25e-2 (about 25 units of float16's rounding, 2^-11). Measured: at most 1.7e-3 on the
  fixtures, 4.9e-3 on a 12-layer model with large random weights.
- bfloat16: 1e-1 (about 25 units of bfloat16's rounding, 2^-8). Measured: at most 8.7e-3 on the
  fixtures, 4.8e-2 on that 12-layer model.
A wrong tensor (transposed, swapped query/key, a dropped LayerNorm gain or bias) measured 4e-2 to 1.1
times the largest |logit|, so float32 catches all of them; bfloat16's rounding can hide the subtlest, so
verify a float32 conversion to check those.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from ..modeling_gptlite import GPTLiteForCausalLM
from .storage import ConversionError

__all__ = [
    "RELATIVE_TOLERANCE",
    "VerificationFailed",
    "gpt2_from_tensors",
    "sample_tokens",
    "verify",
    "verify_gptlite",
    "weights_file_read",
]

RELATIVE_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1.25e-2, torch.bfloat16: 1e-1}
_ABSOLUTE_TOLERANCE = 1e-6


class VerificationFailed(ConversionError):
    """`--verify` found a logit difference above the dtype's tolerance; the output was not written."""


def sample_tokens(vocab_size: int, context_length: int, batch: int = 2, length: int = 16) -> torch.Tensor:
    """Fixed pseudo-random token ids (seeded, independent of the global RNG). Shape (batch, length)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (batch, min(length, context_length)), generator=generator)


@torch.no_grad()
def _logits(reference: PreTrainedModel, candidate: PreTrainedModel) -> tuple[torch.Tensor, torch.Tensor]:
    # float32 logits of both models on the same tokens, over the vocabulary both share. (batch, T, vocab)
    vocab = min(reference.config.vocab_size, candidate.config.vocab_size)
    context = min(reference.config.max_position_embeddings, candidate.config.max_position_embeddings)
    tokens = sample_tokens(vocab, context)
    logits = []
    for model in (reference, candidate):
        was_training = model.training
        model.eval()  # no dropout; a caller's model is put back as it was
        logits.append(model(tokens).logits[..., :vocab].float())
        model.train(was_training)
    return logits[0], logits[1]


@contextmanager
def weights_file_read() -> Iterator[list[str]]:
    """Within the block, collect the weights file each `from_pretrained` of a local folder reads.

    transformers says which file it picked only in an info-level log line ("loading weights file PATH"); it is
    caught here, and the logger's other info lines stay as silent as before (warnings still pass).
    """
    logger = logging.getLogger("transformers.modeling_utils")
    found: list[str] = []

    def catch(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(_LOADING):
            found.append(message.removeprefix(_LOADING).split(" from cache at ")[-1])
        return record.levelno >= level_before

    level_before = logger.getEffectiveLevel()
    previous = logger.level
    logger.addFilter(catch)
    logger.setLevel(min(level_before, logging.INFO))
    try:
        yield found
    finally:
        logger.removeFilter(catch)
        logger.setLevel(previous)


_LOADING = "loading weights file "


def _sources_part(sources: tuple[str | Path, str | Path | None] | None) -> str:
    # `sources`: the weights file the conversion read, and the one transformers' reference loaded.
    if sources is None:
        return "the conversion is wrong"
    ours, theirs = (str(p) if p is not None else "an unknown file" for p in sources)
    if sources[1] is not None and Path(sources[0]).resolve() == Path(sources[1]).resolve():
        return f"the conversion of {ours} (which transformers read too) is wrong"
    return (f"the sources disagree: the conversion read {ours} but transformers reads {theirs}, so the folder "
            "holds two different models")


def verify(
    reference: PreTrainedModel, candidate: PreTrainedModel, dtype: torch.dtype, where: str | Path,
    sources: tuple[str | Path, str | Path | None] | None = None,
) -> tuple[float, float]:
    """The largest logit difference and the tolerance for weights written in `dtype`.

    `sources`, if known, are the weights file the conversion read and the one `reference` was loaded from: the
    failure names both.

    Raises:
        VerificationFailed: when the difference exceeds the tolerance (or is not a number), naming `where`.
    """
    ours, theirs = _logits(reference, candidate)
    diff = (ours - theirs).abs().max().item()
    scale = ours.abs().max().item()
    tolerance = RELATIVE_TOLERANCE[dtype] * scale + _ABSOLUTE_TOLERANCE
    if not diff <= tolerance:  # NaN fails too
        name = str(dtype).removeprefix("torch.")
        raise VerificationFailed(
            f"{where}: --verify: largest logit difference between source and result is {diff:.3g}, above the "
            f"{name} tolerance {tolerance:.3g} ({RELATIVE_TOLERANCE[dtype]:g} x largest |logit| {scale:.3g}); "
            f"{_sources_part(sources)}, and it was not written"
        )
    return diff, tolerance


def verify_gptlite(
    reference: PreTrainedModel, folder: str | Path, dtype: torch.dtype, where: str | Path,
    sources: tuple[str | Path, str | Path | None] | None = None,
) -> tuple[float, float]:
    """Load the converted gptlite `folder` in float32 and `verify` it against `reference`."""
    candidate = GPTLiteForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return verify(reference, candidate, dtype, where, sources)


def gpt2_from_tensors(config: GPT2Config, tensors: Iterable[tuple[str, torch.Tensor]]) -> GPT2LMHeadModel:
    """A float32 `GPT2LMHeadModel` holding `(hf_name, tensor)` pairs (Hugging Face layout)."""
    with torch.device("meta"):
        model = GPT2LMHeadModel(config)
    state = {name: tensor.float().clone() for name, tensor in tensors}
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()  # a tied head was not in `tensors`
    still_meta = [name for name, param in model.named_parameters() if param.is_meta]
    if still_meta:
        raise RuntimeError(f"reference GPT-2 is missing {', '.join(still_meta)}")
    return model.eval()
