"""gptlite.speedups.attention: the book's attention with fast dropout masks, for CPU training."""

import pytest
import torch

from gptlite.modeling_gptlite import eager_attention_forward
from gptlite.speedups import attention
from gptlite.speedups.attention import FAST_DROPOUT_ATTENTION, fast_dropout_attention_forward
from gptlite.speedups.dropout import _keep_mask
from tests.conftest import TINY, randomize_, tiny_model


def test_fast_attention_builds_the_causal_mask_sdpa_would_skip():
    module = torch.nn.Module().eval()
    q, k, v = torch.randn(3, 2, 4, 6, 8).unbind(0)
    explicit = torch.zeros(6, 6).masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), torch.finfo(q.dtype).min)
    boolean = torch.ones(6, 6, dtype=torch.bool).tril()
    want, _ = fast_dropout_attention_forward(module, q, k, v, explicit, scaling=0.3)
    # (the book's attention, up to where the scaling is applied)
    assert torch.allclose(want, eager_attention_forward(module, q, k, v, explicit, scaling=0.3)[0], atol=1e-6)
    for mask in (None, boolean):
        got, _ = fast_dropout_attention_forward(module, q, k, v, mask, scaling=0.3)
        assert torch.equal(got, want)
    # Two new queries after four cached keys: query i sees keys up to 4 + i.
    got, _ = fast_dropout_attention_forward(module, q[:, :, 4:], k, v, None, scaling=0.3)
    assert torch.allclose(got, want[:, 4:], atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_dropout_attention_is_the_books_attention_with_its_mask(dtype):
    module = torch.nn.Module().train()
    q, k, v = (torch.randn(2, 3, 10, 8, dtype=dtype, requires_grad=True) for _ in range(3))
    p = 0.3
    torch.manual_seed(5)
    got, weights = fast_dropout_attention_forward(module, q, k, v, None, scaling=0.125, dropout=p)
    torch.manual_seed(5)
    keep = _keep_mask((2, 3, 10, 10), p, dtype, q.device)
    assert 0 < (keep == 0).sum() < keep.numel()  # some dropped, some kept
    # The book: scores, causal mask, softmax, dropout (kept weights scaled by 1/keep), weighted values.
    scores = (q @ k.transpose(2, 3)).float() * 0.125
    scores = scores.masked_fill(torch.ones(10, 10, dtype=torch.bool).triu(1), float("-inf"))
    kept_weights = torch.softmax(scores, -1) * keep.float()
    want = (kept_weights * (32768 / (32768 - round(p * 32768))) @ v.float()).transpose(1, 2)
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    # The returned weights are the dropped ones the values are multiplied by (the 1/keep factor goes to the context).
    assert torch.allclose(weights.float(), kept_weights, atol=tolerance)
    assert torch.allclose(got.float(), want, atol=tolerance)
    weights.retain_grad()
    grads = torch.autograd.grad(got.float().sum(), (q, k, v, weights))
    # Gradients reach the returned weights: they are the tensor the context is computed from.
    assert grads[3].abs().sum() > 0
    grads = grads[:3]
    want_grads = torch.autograd.grad(want.sum(), (q, k, v))
    for ours, theirs in zip(grads, want_grads):
        assert torch.allclose(ours.float(), theirs.float(), atol=tolerance * 4)


def test_the_fast_dropout_attention_runs_only_when_chosen_and_equals_sdpa_when_nothing_is_dropped():
    # Chosen by name, in CPU training with attention dropout it runs the explicit attention (fast masks);
    # in evaluation it runs SDPA. Their outputs agree once no element is dropped.
    model = tiny_model(drop_rate=1e-9).train()
    randomize_(model)
    calls = []
    attention.register()
    original = attention.fast_dropout_attention_forward
    attention.fast_dropout_attention_forward = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    try:
        ids = torch.randint(0, TINY["vocab_size"], (2, 12))
        model(ids)
        assert calls == [], "the default attention must stay the user's (sdpa)"
        model.set_attn_implementation(FAST_DROPOUT_ATTENTION)
        dropped_path = model(ids).logits
        assert len(calls) == TINY["n_layers"]
    finally:
        attention.fast_dropout_attention_forward = original
    model.eval()
    assert torch.allclose(dropped_path, model(ids).logits, atol=1e-5)


def test_register_makes_the_attention_known_to_transformers_under_its_name():
    attention.register()
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    assert ALL_ATTENTION_FUNCTIONS[FAST_DROPOUT_ATTENTION] is attention.gptlite_fast_dropout_attention
    assert ALL_MASK_ATTENTION_FUNCTIONS[FAST_DROPOUT_ATTENTION] is ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]
