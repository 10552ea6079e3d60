"""gptlite.speedups.fused_loss: the cross-entropy of the vocabulary projection without its logits."""

import math

import pytest
import torch

from gptlite.speedups import fused_loss
from gptlite.speedups.fused_loss import linear_cross_entropy


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
    monkeypatch.setattr(fused_loss, "_VOCAB_BLOCK_ROWS", vocab_block_rows)
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
    monkeypatch.setattr(fused_loss, "_VOCAB_BLOCK_ROWS", 128)  # 300 rows: blocks of 128, 128 and 44
    hidden, weight = torch.randn(70, 32, dtype=torch.bfloat16), torch.randn(300, 32, dtype=torch.bfloat16)
    exact = hidden.double() @ weight.double().T
    logits = fused_loss._project_to_vocab(hidden, weight)
    assert logits.shape == (70, 300) and logits.dtype == torch.bfloat16
    # Each logit is its exact product rounded once to bf16 (8 significant bits), in every block.
    assert ((logits.double() - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all()


def test_linear_cross_entropy_in_bf16_caps_an_underflowed_probability_instead_of_returning_inf():
    hidden = torch.ones(1, 2)
    weight = torch.tensor([[0.0, 0.0], [100.0, 100.0]])  # logits (0, 200): the target's probability is e^-200
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, torch.tensor([0]))
    assert loss.item() == pytest.approx(-math.log(torch.finfo(torch.float32).tiny))


@pytest.mark.parametrize("autocast", [False, True])
def test_without_gradients_wanted_the_loss_is_the_same_from_one_product_per_chunk(autocast, monkeypatch):
    hidden, weight, targets = _cross_entropy_inputs(width=16, vocab=90, ignore_every=5)  # 70 rows: 5 chunks of 16
    products = []
    original = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: products.append(1) or original(a, b))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with_grads = linear_cross_entropy(hidden, weight, targets, chunk_rows=16)
        assert len(products) == 3 * 5  # the logits and both gradients, chunk by chunk
        products.clear()
        with torch.no_grad():
            without = linear_cross_entropy(hidden, weight, targets, chunk_rows=16)
    assert len(products) == 5  # the logits only
    assert without.item() == with_grads.item()
