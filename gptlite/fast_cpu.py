"""gptlite's CPU fast paths: cheaper dropout masks, attention for CPU training, a fused linear cross-entropy.

None of this changes the maths of the book's model; each piece does the same work with fewer passes over memory,
which is what bounds a training step on a CPU. The model file uses them only where asked: `Dropout` draws fast
masks when `config.fast_dropout` is on, the attention below runs only when chosen by name
(`attn_implementation="gptlite_fast_dropout"`, as gptlite's training does with fast dropout), and the fused
cross-entropy only with `forward(..., return_logits=False)`.

This file travels to the Hub with the model (a relative import of `modeling_gptlite.py`): it imports only torch
and transformers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from .cpu_kernels import compiled_available, hashed_dropout

# The attention implementation gptlite's training chooses when fast dropout is on.
FAST_DROPOUT_ATTENTION = "gptlite_fast_dropout"


def _keep_mask(shape: torch.Size, p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1 where an element is kept, 0 where dropped (with probability p rounded to a multiple of 2^-15), in `dtype`.

    torch's CPU dropout draws a Bernoulli variate per element, about 7 ns each on two cores: a fifth of a 124M
    training step. Here one 64-bit draw serves four elements, 15 random bits each, compared as integers.
    """
    dropped = round(p * 32768)  # of 32768 equally likely values, this many drop the element
    n = math.prod(shape)
    # random_() fills int64 with 63 random bits (15% cheaper per bit than int32's 31); each 16-bit quarter
    # keeps 15 of them.
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_()
    uniform15 = bits.view(torch.int16).bitwise_and_(0x7FFF)[:n].view(shape)
    # The comparison writes straight into `dtype`: converting a bool tensor afterwards costs 4x more on CPU.
    return torch.ge(uniform15, dropped, out=torch.empty(shape, dtype=dtype, device=device))


def _keep_scale(p: float) -> float:
    """1 / the keep probability that _keep_mask really uses: kept values are scaled by it to stay unbiased."""
    dropped = round(p * 32768)
    return 32768 / (32768 - dropped)


class _MaskedDropout(torch.autograd.Function):
    """Dropout with _keep_mask's masks (0.1 becomes 0.100006): one multiply each way by the scaled mask."""

    @staticmethod
    def forward(ctx, x, p):
        mask = _keep_mask(x.shape, p, x.dtype, x.device).mul_(_keep_scale(p))  # 0 or the scale
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad_output):
        (mask,) = ctx.saved_tensors
        return grad_output * mask, None


# From this many elements on, a mask is drawn by cpu_kernels' compiled kernel (a 124M model's smallest mask
# has 1.6M at batch 8); smaller ones, as in tiny models, are not worth compiling it for.
COMPILED_MASK_ELEMENTS = 1 << 18


def _drop(x: torch.Tensor, p: float, scale: bool) -> torch.Tensor:
    """x with elements dropped at rate p (a multiple of 2^-15) on CPU, the others scaled by 1/keep if `scale`."""
    keep_scale = _keep_scale(p) if scale else 1.0
    if x.numel() >= COMPILED_MASK_ELEMENTS and compiled_available() and not torch.compiler.is_compiling():
        return hashed_dropout(x, round(p * 32768), keep_scale)
    if scale:
        return _MaskedDropout.apply(x, p)
    return x * _keep_mask(x.shape, p, x.dtype, x.device)


def apply_dropout(x: torch.Tensor, p: float, training: bool, fast: bool = False) -> torch.Tensor:
    """`F.dropout`, or with `fast` on CPU the same in distribution with cheaper masks (_keep_mask, cpu_kernels)."""
    if not training or p == 0.0:
        return x
    if fast and x.device.type == "cpu" and 0.0 < p < 1.0:
        return _drop(x, p, scale=True)
    return F.dropout(x, p=p, training=True)


class Dropout(nn.Dropout):
    """`nn.Dropout` that can draw its masks the fast way on CPU (`config.fast_dropout`)."""

    def __init__(self, p: float, fast: bool = False):
        super().__init__(p)
        self.fast = fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_dropout(x, self.p, self.training, self.fast)


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
    1/keep onto the context. The mask is added in place, and dropout multiplies by a 0/1 mask from
    _keep_mask. The returned weights are the ones the values are multiplied by, so gradients reach them: dropped,
    but without dropout's 1/keep factor, which is applied to the context.
    """
    # query: (b, h, q, d); key/value: (b, h, k, d)
    attn_scores = torch.matmul(query * scaling, key.transpose(2, 3))  # (b, h, q, k)
    attn_weights = _masked_softmax(attn_scores, attention_mask, query, key)
    scale = 1.0
    if module.training and dropout > 0.0:
        attn_weights = _drop(attn_weights, dropout, scale=False)
        scale = _keep_scale(dropout)
    context = torch.matmul(attn_weights, value)  # (b, h, q, d)
    if scale != 1.0:
        context.mul_(scale)
    return context.transpose(1, 2).contiguous(), attn_weights  # (b, q, h, d)


# oneDNN multiplies 2048 rows by all of GPT-2's 50257-row vocabulary matrix (transposed) at 0.45 TFLOP/s on this
# project's CPU, but by slices of 2048 of its rows at 0.64: the same products, 1.5x faster in bf16. fp32 gains
# nothing from it and keeps its single product.
_VOCAB_BLOCK_ROWS = 2048


def _project_to_vocab(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`hidden @ weight.T`: (n, e) x (v, e) -> (n, v) logits, in vocabulary blocks for bf16 on CPU."""
    if hidden.dtype != torch.bfloat16 or hidden.device.type != "cpu" or weight.shape[0] <= _VOCAB_BLOCK_ROWS:
        return hidden @ weight.T
    logits = torch.empty(hidden.shape[0], weight.shape[0], dtype=hidden.dtype)
    for start in range(0, weight.shape[0], _VOCAB_BLOCK_ROWS):
        block = slice(start, start + _VOCAB_BLOCK_ROWS)
        torch.mm(hidden, weight[block].T, out=logits[:, block])
    return logits


def _scaled_as(tensor: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor) -> torch.Tensor:
    # One pass either way; never scales the saved tensor in place (backward may run again with retain_graph).
    return tensor * scale if tensor.dtype == dtype else tensor.to(dtype).mul_(scale)


class _LinearCrossEntropy(torch.autograd.Function):
    """Cross-entropy of `hidden @ weight.T` without ever holding the full (tokens, vocab) logits in fp32.

    The vocabulary projection, the softmax and both gradients are computed one chunk of rows at a time
    during the forward pass; backward only scales the stored gradients. In fp32 (and fp16) the softmax runs
    on fp32 logits, as transformers' loss does. In bf16 the softmax reads the bf16 logits and writes bf16
    probabilities, computing in fp32 inside (one pass instead of five over a vocabulary-sized tensor), and
    a token's loss is -log of its probability: within bf16's relative precision of 2^-9, about 0.002 per
    token and unbiased, finer than the rounding of the bf16 logits themselves.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk_rows, compute_dtype, divisor):
        # hidden: (n, e); weight: (v, e); targets: (n,)
        h = hidden.to(compute_dtype)
        w = weight.to(compute_dtype)
        grad_hidden = torch.empty_like(h)
        grad_weight = None
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, h.shape[0], chunk_rows):
            h_chunk, t_chunk = h[start : start + chunk_rows], targets[start : start + chunk_rows]
            rows = torch.arange(len(t_chunk), device=h.device)
            valid = t_chunk != ignore_index
            safe_targets = torch.where(valid, t_chunk, 0)
            logits = _project_to_vocab(h_chunk, w)  # (c, v)
            if compute_dtype == torch.bfloat16:
                grad_logits = torch.softmax(logits, dim=-1)  # (c, v) bf16 probabilities
                del logits
                # A probability that underflowed to 0 would give an infinite loss: cap it at -log(fp32 tiny), 87.3.
                target_probs = grad_logits[rows, safe_targets].float().clamp_min(torch.finfo(torch.float32).tiny)
                token_loss = -target_probs.log()
            else:
                logits = logits.float()
                lse = torch.logsumexp(logits, dim=-1)  # (c,)
                token_loss = lse - logits[rows, safe_targets]
                grad_logits = logits.sub_(lse[:, None]).exp_()  # softmax, in place
            loss_sum += (token_loss * valid).sum()
            # d(loss)/d(logits) = softmax - one_hot(target), zero on ignored rows.
            grad_logits[rows, safe_targets] -= 1.0
            ignored = (~valid).nonzero().squeeze(1)
            if len(ignored):  # zero those rows only (a boolean mask would rewrite the whole chunk)
                grad_logits.index_fill_(0, ignored, 0.0)
            grad_logits = grad_logits.to(compute_dtype)
            grad_hidden[start : start + chunk_rows] = grad_logits @ w
            chunk_grad_weight = grad_logits.T @ h_chunk  # (v, e)
            if grad_weight is None:
                grad_weight = chunk_grad_weight
            else:
                # Summed in fp32 across chunks, as autocast accumulates a bf16 product into an fp32 .grad.
                grad_weight = grad_weight.float().add_(chunk_grad_weight)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.hidden_dtype, ctx.weight_dtype, ctx.divisor = hidden.dtype, weight.dtype, divisor
        return loss_sum / divisor

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output / ctx.divisor
        return (
            _scaled_as(grad_hidden, ctx.hidden_dtype, scale),
            _scaled_as(grad_weight, ctx.weight_dtype, scale),
            None,
            None,
            None,
            None,
            None,
        )


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of the logits `hidden @ weight.T` against `targets`, computed chunk by chunk.

    Equals `F.cross_entropy(hidden @ weight.T, targets, ignore_index=...)` (sum / `num_items_in_batch`
    when that is given, as transformers' loss does) with a fraction of its memory. Under autocast the
    projection runs in the autocast dtype; the softmax reads it in fp32 precision. `chunk_rows` bounds the
    rows whose logits exist at once (default: about 100M logits' worth).
    """
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1).to(hidden.device)
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = hidden.dtype
    if chunk_rows is None:
        # fp32 logits: 1024 rows of GPT-2's vocabulary are 200 MB; bf16 ones half as big per row.
        budget = (1 << 27) if compute_dtype == torch.bfloat16 else (1 << 26)
        chunk_rows = max(1, budget // weight.shape[0])
    if num_items_in_batch is None:
        divisor = (targets != ignore_index).sum().clamp(min=1)
    else:
        divisor = torch.as_tensor(num_items_in_batch, device=hidden.device)
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(
            hidden, weight, targets, ignore_index, chunk_rows, compute_dtype, divisor.float()
        )


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


# Chosen by name like any attention implementation; its masks are SDPA's (None, or boolean with True = attend).
AttentionInterface.register(FAST_DROPOUT_ATTENTION, gptlite_fast_dropout_attention)
AttentionMaskInterface.register(FAST_DROPOUT_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])

__all__ = [
    "FAST_DROPOUT_ATTENTION",
    "Dropout",
    "apply_dropout",
    "fast_dropout_attention_forward",
    "gptlite_fast_dropout_attention",
    "linear_cross_entropy",
]
