"""gptlite.fast_cpu: fast dropout masks, the CPU training attention, the fused linear cross-entropy."""

import math

import pytest
import torch

from gptlite import fast_cpu
from gptlite.fast_cpu import (
    FAST_DROPOUT_ATTENTION,
    _keep_mask,
    apply_dropout,
    fast_dropout_attention_forward,
    linear_cross_entropy,
)
from gptlite.modeling_gptlite import eager_attention_forward
from tests.reference_models import TINY, randomize_, tiny_model


def _cross_entropy_inputs(width: int, vocab: int, ignore_every: int):
    """70 rows of hidden states, a (vocab, width) head and targets with every `ignore_every`-th one ignored."""
    hidden = torch.randn(70, width, requires_grad=True)
    weight = torch.randn(vocab, width, requires_grad=True)
    targets = torch.randint(0, vocab, (70,))
    targets[::ignore_every] = -100
    return hidden, weight, targets


@pytest.mark.parametrize("num_items", [None, 50])
def test_linear_cross_entropy_equals_cross_entropy_and_its_gradients(num_items):
    hidden, weight, targets = _cross_entropy_inputs(width=16, vocab=90, ignore_every=5)
    logits = hidden @ weight.T
    if num_items is None:
        expected = torch.nn.functional.cross_entropy(logits, targets)
    else:
        expected = torch.nn.functional.cross_entropy(logits, targets, reduction="sum") / num_items
    expected_grads = torch.autograd.grad(expected * 3, (hidden, weight))
    ours = linear_cross_entropy(hidden, weight, targets, num_items_in_batch=num_items, chunk_rows=16)
    grads = torch.autograd.grad(ours * 3, (hidden, weight))
    assert abs(ours.item() - expected.item()) < 1e-6
    for got, want in zip(grads, expected_grads):
        assert (got - want).abs().max().item() < 1e-6


@pytest.mark.parametrize("vocab_block_rows", [2048, 128])  # 2048: one product for this vocabulary; 128: three
@pytest.mark.parametrize("chunk_rows", [None, 16])
def test_linear_cross_entropy_under_bf16_autocast_matches_the_bf16_logits_loss(chunk_rows, vocab_block_rows,
                                                                              monkeypatch):
    monkeypatch.setattr(fast_cpu, "_VOCAB_BLOCK_ROWS", vocab_block_rows)
    hidden, weight, targets = _cross_entropy_inputs(width=32, vocab=300, ignore_every=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = hidden @ weight.T  # bf16, as transformers' autocast path computes them
    expected = torch.nn.functional.cross_entropy(logits.float(), targets)
    expected_grads = torch.autograd.grad(expected, (hidden, weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(hidden, weight, targets, chunk_rows=chunk_rows)
    grads = torch.autograd.grad(ours, (hidden, weight))
    assert ours.dtype == torch.float32
    # bf16 probabilities: 2^-9 relative per token, far below the loss's own scale (about 5 here).
    assert abs(ours.item() - expected.item()) < 5e-3
    for got, want in zip(grads, expected_grads):
        assert got.dtype == torch.float32
        assert (got - want).abs().max().item() < 2e-2 * want.abs().max().item()


def test_bf16_logits_in_vocabulary_blocks_are_the_rounded_products_of_the_whole_matrix(monkeypatch):
    monkeypatch.setattr(fast_cpu, "_VOCAB_BLOCK_ROWS", 128)  # 300 rows: blocks of 128, 128 and 44
    hidden, weight = torch.randn(70, 32, dtype=torch.bfloat16), torch.randn(300, 32, dtype=torch.bfloat16)
    exact = hidden.double() @ weight.double().T
    logits = fast_cpu._project_to_vocab(hidden, weight)
    assert logits.shape == (70, 300) and logits.dtype == torch.bfloat16
    # Each logit is its exact product rounded once to bf16 (8 significant bits), in every block.
    assert ((logits.double() - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all()


def test_linear_cross_entropy_in_bf16_caps_an_underflowed_probability_instead_of_returning_inf():
    hidden = torch.ones(1, 2)
    weight = torch.tensor([[0.0, 0.0], [100.0, 100.0]])  # logits (0, 200): the target's probability is e^-200
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, torch.tensor([0]))
    assert loss.item() == pytest.approx(-math.log(torch.finfo(torch.float32).tiny))


@pytest.mark.parametrize("compiled_from", [1 << 18, 1 << 62])  # the compiled kernel's masks; the Mersenne Twister's
@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_dropout_drops_at_rate_p_scales_exactly_and_backpropagates_its_mask(p, dtype, compiled_from, monkeypatch):
    monkeypatch.setattr(fast_cpu, "COMPILED_MASK_ELEMENTS", compiled_from)
    x = torch.ones(400_001, dtype=dtype, requires_grad=True)  # not a multiple of 4: the last draw is part-used
    y = apply_dropout(x, p, training=True, fast=True)
    kept_value = 32768 / (32768 - round(p * 32768))
    values = set(y.detach().float().unique().tolist())
    assert values == {0.0, torch.tensor(kept_value, dtype=dtype).item()}
    dropped = (y == 0).float()
    # All four 16-bit quarters of every 64-bit draw must drop at rate p (one of them holds the sign bit).
    for quarter in range(4):
        lane = dropped[quarter::4]
        assert abs(lane.mean().item() - p) < 5 * math.sqrt(p * (1 - p) / lane.numel())
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())
    assert apply_dropout(x, p, training=False, fast=True) is x
    assert apply_dropout(x, 0.0, training=True, fast=True) is x


def test_fast_dropout_off_is_torchs_dropout_draw_for_draw():
    x = torch.randn(5, 7)
    torch.manual_seed(3)
    ours = apply_dropout(x, 0.3, training=True, fast=False)
    torch.manual_seed(3)
    assert torch.equal(ours, torch.nn.functional.dropout(x, 0.3, training=True))


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
    model = tiny_model(drop_rate=1e-9, fast_dropout=True).train()
    randomize_(model)
    calls = []
    original = fast_cpu.fast_dropout_attention_forward
    fast_cpu.fast_dropout_attention_forward = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    try:
        ids = torch.randint(0, TINY["vocab_size"], (2, 12))
        model(ids)
        assert calls == [], "the default attention must stay the user's (sdpa), fast_dropout or not"
        model.set_attn_implementation(FAST_DROPOUT_ATTENTION)
        dropped_path = model(ids).logits
        assert len(calls) == TINY["n_layers"]
    finally:
        fast_cpu.fast_dropout_attention_forward = original
    model.eval()
    assert torch.allclose(dropped_path, model(ids).logits, atol=1e-5)


def test_fast_dropout_is_off_by_default_and_set_by_the_training_settings():
    from gptlite import GPTLiteConfig
    from gptlite.training.config import TrainConfig

    assert GPTLiteConfig().fast_dropout is False
    assert TrainConfig().model_config().fast_dropout is True


def test_the_attention_is_registered_with_transformers_under_its_name():
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    assert ALL_ATTENTION_FUNCTIONS[FAST_DROPOUT_ATTENTION] is fast_cpu.gptlite_fast_dropout_attention
    assert ALL_MASK_ATTENTION_FUNCTIONS[FAST_DROPOUT_ATTENTION] is ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]
