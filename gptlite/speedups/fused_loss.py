"""Cross-entropy of the vocabulary projection, chunk by chunk: the loss without the (tokens, vocab) logits.

`linear_cross_entropy(hidden, weight, targets)` equals `F.cross_entropy(hidden @ weight.T, targets)` and computes
both gradients during the forward pass, a chunk of rows at a time, so the vocabulary-sized logits of a whole batch
never exist at once (in the spirit of litgpt's chunked loss and Liger Kernel's fused linear cross-entropy).
`speed_up(model, training=True)` makes a causal LM's forward compute its loss this way (`FusedLossForward`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import CausalLMOutputWithPast

from gptlite.compat import cache_of, with_cache

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
    during the forward pass; backward only scales the stored gradients (none are computed when no gradient is
    wanted: evaluation costs one product instead of three). In fp32 (and fp16) the softmax runs
    on fp32 logits, as transformers' loss does. In bf16 the softmax reads the bf16 logits and writes bf16
    probabilities, computing in fp32 inside (one pass instead of five over a vocabulary-sized tensor), and
    a token's loss is -log of its probability: within bf16's relative precision of 2^-9, about 0.002 per
    token and unbiased, finer than the rounding of the bf16 logits themselves.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk_rows, compute_dtype, divisor, with_grads):
        # hidden: (n, e); weight: (v, e); targets: (n,)
        h = hidden.to(compute_dtype)
        w = weight.to(compute_dtype)
        grad_hidden = torch.empty_like(h) if with_grads else None
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
                grad_logits = logits.sub_(lse[:, None]).exp_() if with_grads else None  # softmax, in place
            loss_sum += (token_loss * valid).sum()
            if not with_grads:
                continue
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
            *[None] * 6,  # targets, ignore_index, chunk_rows, compute_dtype, divisor, with_grads
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
    with_grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(
            hidden, weight, targets, ignore_index, chunk_rows, compute_dtype, divisor.float(), with_grads
        )


class FusedLossForward:
    """The forward `speed_up` stores on one causal LM (`model.forward`): the class's own forward, except that given
    labels (all logits kept), the loss comes from the final hidden states and the head's weight through
    `linear_cross_entropy` and `logits` is None.

    An object rather than a bound method, so that a model that holds it still pickles and deep-copies whole.
    """

    def __init__(self, model):
        self.model = model

    def __call__(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        shift_labels: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        # The same parameters as the class's forward: generate reads them from the signature.
        lm = self.model
        inputs = {"attention_mask": attention_mask, "position_ids": position_ids, "cache": cache,
                  "inputs_embeds": inputs_embeds, "use_cache": use_cache, **kwargs}
        if (labels is None and shift_labels is None) or not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
            return type(lm).forward(
                lm, input_ids, labels=labels, shift_labels=shift_labels, logits_to_keep=logits_to_keep, **inputs
            )
        num_items_in_batch = inputs.pop("num_items_in_batch", None)
        outputs = lm.model(input_ids, **inputs)
        if shift_labels is None:
            shift_labels = F.pad(labels, (0, 1), value=-100)[:, 1:]  # tokens < n predict n, as transformers' loss
        loss = linear_cross_entropy(
            outputs.last_hidden_state, lm.get_output_embeddings().weight, shift_labels,
            num_items_in_batch=num_items_in_batch,
        )
        return with_cache(
            CausalLMOutputWithPast, cache_of(outputs), loss=loss, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = ["FusedLossForward", "linear_cross_entropy"]
