"""Attention for CPU training with dropout: the book's attention, with fast dropout masks and fewer passes.

With attention dropout, CPU SDPA falls back to its unfused maths anyway and draws the mask the slow way; this is the
same work with `gptlite.speedups.dropout`'s masks. Everywhere else (evaluation, no dropout, GPUs) it is SDPA.
It is registered with transformers under `FAST_DROPOUT_ATTENTION` by `register()`, which `speed_up` calls: a model
chooses it by name like any attention implementation.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from .dropout import drop, keep_scale

FAST_DROPOUT_ATTENTION = "gptlite_fast_dropout"


def _additive_mask(attention_mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor | None:
    """The additive mask eager attention needs, from any mask gptlite's forward builds.

    Built for SDPA, the mask is None when plain causality suffices (SDPA's is_causal) or boolean (True =
    attend); eager attention adds a float mask instead.
    """
    q_len, k_len = query.shape[-2], key.shape[-2]
    if attention_mask is None:
        if q_len == 1:
            return None
        # Query i sits at key position i + (k_len - q_len): it sees keys up to there.
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask
    else:
        return attention_mask
    return torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill(
        ~allowed, torch.finfo(query.dtype).min
    )


def _masked_softmax(
    attn_scores: torch.Tensor, attention_mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor
) -> torch.Tensor:
    """Attention weights: the scores (b, h, q, k) plus the additive mask, softmaxed over the keys, in query's dtype."""
    attention_mask = _additive_mask(attention_mask, query, key)
    if attention_mask is not None and attention_mask.dtype == attn_scores.dtype:
        # The scores are a fresh product the backward does not need: adding in place is safe.
        attn_scores = attn_scores.add_(attention_mask)
    elif attention_mask is not None:
        # An fp32 mask (built for eager attention) on bf16 scores: in fp32, since fp32's minimum would
        # round to -inf in bf16 and turn a fully masked (padding) row into NaN.
        attn_scores = attn_scores + attention_mask
    if attn_scores.dtype == torch.bfloat16:
        # Computes in fp32 inside and rounds once: the same numbers as an fp32 softmax cast back, in one pass.
        return torch.softmax(attn_scores, dim=-1)
    return torch.softmax(attn_scores, dim=-1, dtype=torch.float32).to(query.dtype)


def fast_dropout_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's attention for CPU training with `fast_dropout`: the same maths in fewer passes over the weights.

    The (b, h, q, k) weights are the biggest tensors of a step, so both scalings move to tensors 4x smaller
    (at q = k = 4 * head_dim): 1/sqrt(d) onto the queries (exact for d = 64, a power of two) and dropout's
    1/keep onto the context. The mask is added in place, and dropout multiplies by a 0/1 fast mask. The returned
    weights are the ones the values are multiplied by, so gradients reach them: dropped, but without dropout's
    1/keep factor, which is applied to the context.
    """
    # query: (b, h, q, d); key/value: (b, h, k, d)
    attn_scores = torch.matmul(query * scaling, key.transpose(2, 3))  # (b, h, q, k)
    attn_weights = _masked_softmax(attn_scores, attention_mask, query, key)
    scale = 1.0
    if module.training and dropout > 0.0:
        attn_weights = drop(attn_weights, dropout, scale=False)
        scale = keep_scale(dropout)
    context = torch.matmul(attn_weights, value)  # (b, h, q, d)
    if scale != 1.0:
        context.mul_(scale)
    return context.transpose(1, 2).contiguous(), attn_weights  # (b, q, h, d)


def gptlite_fast_dropout_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDPA, except in CPU training with attention dropout, where it is fast_dropout_attention_forward.

    With dropout, CPU SDPA falls back to its unfused maths anyway, drawing the mask the slow way; the explicit
    path is the same work with fast masks. Everywhere else (evaluation, GPUs) SDPA's fused kernels win.
    """
    if module.training and dropout > 0.0 and query.device.type == "cpu":
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        return fast_dropout_attention_forward(module, query, key, value, attention_mask, scaling, dropout)
    return ALL_ATTENTION_FUNCTIONS["sdpa"](
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


def register() -> None:
    """Make `FAST_DROPOUT_ATTENTION` an attention implementation transformers knows (masks as SDPA's)."""
    AttentionInterface.register(FAST_DROPOUT_ATTENTION, gptlite_fast_dropout_attention)
    AttentionMaskInterface.register(FAST_DROPOUT_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


__all__ = ["FAST_DROPOUT_ATTENTION", "fast_dropout_attention_forward", "gptlite_fast_dropout_attention", "register"]
