"""`--verify`: run the source and the converted model on the same tokens and compare their logits.

The source side is always transformers' own `GPT2LMHeadModel` holding the source weights, so a check
compares gptlite against an independent implementation, not against itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from ..modeling_gptlite import GPTLiteForCausalLM

__all__ = ["compare_to_gptlite", "gpt2_from_tensors", "max_logit_difference", "sample_tokens"]


def sample_tokens(vocab_size: int, context_length: int, batch: int = 2, length: int = 16) -> torch.Tensor:
    """Fixed pseudo-random token ids (seeded, independent of the global RNG). Shape (batch, length)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (batch, min(length, context_length)), generator=generator)


@torch.no_grad()
def max_logit_difference(reference: PreTrainedModel, candidate: PreTrainedModel) -> float:
    """Largest |logit difference| (in float32) over the vocabulary both models share."""
    vocab = min(reference.config.vocab_size, candidate.config.vocab_size)
    context = min(reference.config.max_position_embeddings, candidate.config.max_position_embeddings)
    tokens = sample_tokens(vocab, context)
    logits = []
    for model in (reference, candidate):
        was_training = model.training
        model.eval()  # no dropout; a caller's model is put back as it was
        logits.append(model(tokens).logits[..., :vocab].float())
        model.train(was_training)
    return (logits[0] - logits[1]).abs().max().item()


def compare_to_gptlite(reference: PreTrainedModel, out_dir: str | Path) -> float:
    """Load the converted gptlite folder in float32 and compare it with `reference`."""
    candidate = GPTLiteForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    return max_logit_difference(reference, candidate)


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
