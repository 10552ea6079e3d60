import math

import pytest
import torch

from gptlite import GPTLiteConfig, GPTLiteForCausalLM
from gptlite.modeling_gptlite import (
    _keep_mask,
    apply_dropout,
    eager_attention_forward,
    fast_dropout_attention_forward,
    linear_cross_entropy,
)
from tests.book_gpt import BookGPTModel, book_generate_simple
from tests.reference_models import TINY, randomize_, tiny_model, to_gpt2


def test_state_dict_keys_are_the_books():
    model = tiny_model(n_layers=2)
    book = BookGPTModel({**model.config.to_dict(), "qkv_bias": False})
    book_keys = {k for k in book.state_dict() if not k.endswith("att.mask")}
    assert set(model.state_dict()) == book_keys


@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_logits_equal_the_books_forward(qkv_bias, attn):
    model = tiny_model(qkv_bias=qkv_bias)
    randomize_(model)
    model.set_attn_implementation(attn)
    cfg = dict(TINY, qkv_bias=qkv_bias)
    book = BookGPTModel(cfg).eval()
    # The book's state dict (with its att.mask buffers) loads 1:1, strictly.
    missing, unexpected = book.load_state_dict(model.state_dict(), strict=False)
    assert unexpected == [] and all(k.endswith("att.mask") for k in missing)
    ids = torch.randint(0, cfg["vocab_size"], (3, cfg["context_length"]))
    with torch.no_grad():
        ours = model(ids).logits
        theirs = book(ids)
    assert (ours - theirs).abs().max().item() < 1e-5


def test_book_state_dict_with_mask_buffers_loads_through_from_pretrained_path():
    book = BookGPTModel(dict(TINY, qkv_bias=False))
    model = tiny_model()
    result = model.load_state_dict(book.state_dict(), strict=False)
    assert all(k.endswith("att.mask") for k in result.unexpected_keys) and not result.missing_keys
    ids = torch.randint(0, TINY["vocab_size"], (2, 17))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, book.eval()(ids), atol=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_logits_and_loss_equal_transformers_gpt2(tied):
    model = tiny_model(qkv_bias=True, tie_word_embeddings=tied)
    randomize_(model)
    gpt2 = to_gpt2(model)
    ids = torch.randint(0, TINY["vocab_size"], (2, 33))
    labels = ids.clone()
    labels[0, :5] = -100
    with torch.no_grad():
        ours, theirs = model(ids, labels=labels), gpt2(ids, labels=labels)
    assert (ours.logits - theirs.logits).abs().max().item() < 1e-5
    assert abs(ours.loss.item() - theirs.loss.item()) < 1e-5


def test_loss_shifts_labels_and_ignores_minus_100():
    model = tiny_model()
    randomize_(model)
    ids = torch.randint(0, TINY["vocab_size"], (2, 12))
    labels = ids.clone()
    labels[:, -3:] = -100
    with torch.no_grad():
        out = model(ids, labels=labels)
    logits, targets = out.logits[:, :-1], labels[:, 1:]
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    assert abs(out.loss.item() - expected.item()) < 1e-6


def test_sdpa_equals_eager_with_left_padding():
    model = tiny_model()
    randomize_(model)
    ids = torch.randint(0, TINY["vocab_size"], (2, 20))
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    outputs = {}
    for attn in ("sdpa", "eager"):
        model.set_attn_implementation(attn)
        assert model.config._attn_implementation == attn
        with torch.no_grad():
            outputs[attn] = model(ids, attention_mask=mask).logits
    # Padding positions attend to nothing; their logits are meaningless, so compare the real tokens only.
    real = mask.bool()
    assert (outputs["sdpa"][real] - outputs["eager"][real]).abs().max().item() < 1e-5


def test_output_hidden_states_and_attentions():
    model = tiny_model()
    model.set_attn_implementation("eager")
    ids = torch.randint(0, TINY["vocab_size"], (1, 9))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == TINY["n_layers"] + 1
    assert len(out.attentions) == TINY["n_layers"]
    assert out.attentions[0].shape == (1, TINY["n_heads"], 9, 9)
    # Causal: no weight on the future.
    assert out.attentions[0][0, :, 0, 1:].abs().max().item() == 0.0
    assert torch.allclose(out.attentions[0].sum(-1), torch.ones(1, TINY["n_heads"], 9), atol=1e-6)


def test_logits_to_keep_and_return_dict_false():
    model = tiny_model()
    ids = torch.randint(0, TINY["vocab_size"], (2, 11))
    with torch.no_grad():
        full = model(ids).logits
        last = model(ids, logits_to_keep=1).logits
        as_tuple = model(ids, return_dict=False)
    assert last.shape == (2, 1, TINY["vocab_size"])
    assert torch.allclose(last[:, 0], full[:, -1], atol=1e-6)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], full)


def test_cached_forward_equals_full_forward():
    model = tiny_model()
    randomize_(model)
    ids = torch.randint(0, TINY["vocab_size"], (2, 15))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        first = model(ids[:, :10], use_cache=True)
        rest = model(ids[:, 10:], past_key_values=first.past_key_values, use_cache=True)
    assert first.past_key_values.get_seq_length() == 15
    assert (torch.cat([first.logits, rest.logits], 1) - full).abs().max().item() < 1e-5


def test_sequence_longer_than_context_names_both_numbers():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"41 tokens.*context_length of 40"):
        model(torch.zeros(1, 41, dtype=torch.long))
    with torch.no_grad():
        cache = model(torch.zeros(1, 38, dtype=torch.long), use_cache=True).past_key_values
    with pytest.raises(ValueError, match=r"42 tokens \(38 cached \+ 4 new\).*40"):
        model(torch.zeros(1, 4, dtype=torch.long), past_key_values=cache)


@pytest.mark.parametrize("bad", [120, 5000, -1])
def test_token_id_outside_vocabulary_is_refused(bad):
    model = tiny_model()
    ids = torch.tensor([[1, 2, bad]])
    with pytest.raises(ValueError, match=rf"token id {bad} .*vocab_size=120"):
        model(ids)


def test_gpt2_initialisation():
    model = GPTLiteForCausalLM(GPTLiteConfig(vocab_size=2000, context_length=64, emb_dim=256, n_heads=4, n_layers=6))
    residual_std = 0.02 / math.sqrt(2 * 6)
    block = model.trf_blocks[0]
    assert abs(block.att.W_query.weight.std().item() - 0.02) < 1e-3
    assert abs(block.att.out_proj.weight.std().item() - residual_std) < 5e-4
    assert abs(block.ff.layers[2].weight.std().item() - residual_std) < 5e-4
    assert abs(model.tok_emb.weight.std().item() - 0.02) < 1e-3
    assert abs(model.out_head.weight.std().item() - 0.02) < 1e-3
    assert block.ff.layers[0].bias.abs().max().item() == 0.0
    assert torch.equal(block.norm1.scale, torch.ones(256)) and torch.equal(block.norm1.shift, torch.zeros(256))


def test_book_initialisation_draws_exactly_what_the_books_model_draws():
    cfg = dict(TINY, qkv_bias=False)
    torch.manual_seed(123)
    book = BookGPTModel(cfg)
    torch.manual_seed(123)
    ours = GPTLiteForCausalLM(GPTLiteConfig(**cfg, initializer="book"))
    theirs = book.state_dict()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, theirs[name]), name
    # Both leave the global generator in the same state.
    assert torch.equal(torch.rand(3), (torch.manual_seed(123), BookGPTModel(cfg), torch.rand(3))[2])


def test_tying_through_the_config():
    tied = tiny_model(tie_word_embeddings=True)
    assert tied.out_head.weight is tied.tok_emb.weight
    untied = tiny_model()
    assert untied.out_head.weight.data_ptr() != untied.tok_emb.weight.data_ptr()


@pytest.mark.parametrize("tied", [False, True])
def test_resize_token_embeddings(tied):
    model = tiny_model(tie_word_embeddings=tied)
    old = model.tok_emb.weight.detach().clone()
    model.resize_token_embeddings(130)
    assert model.config.vocab_size == 130
    assert model.tok_emb.weight.shape == (130, 48) and model.out_head.weight.shape == (130, 48)
    assert torch.equal(model.tok_emb.weight[:120], old)
    assert (model.out_head.weight is model.tok_emb.weight) == tied
    with torch.no_grad():
        assert model(torch.tensor([[129, 3]])).logits.shape == (1, 2, 130)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model().train()
    randomize_(model)
    ids = torch.randint(0, TINY["vocab_size"], (2, 16))

    def grads():
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    # transformers 5.23 renamed it; 5.4 only has the old name.
    enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
    enable()
    assert all(block.gradient_checkpointing for block in model.trf_blocks)
    checkpointed = grads()
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name


def test_dropout_is_active_in_training_only():
    model = tiny_model(drop_rate=0.5)
    ids = torch.randint(0, TINY["vocab_size"], (1, 10))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)
        model.train()
        assert not torch.equal(model(ids).logits, model(ids).logits)


def test_cached_greedy_generation_equals_the_books_generate_text_simple():
    model = tiny_model()
    randomize_(model)
    prompt = torch.randint(0, TINY["vocab_size"], (1, 5))
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None)
        uncached = model.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None, use_cache=False)
    book = book_generate_simple(lambda ids: model(ids).logits, prompt, 20, TINY["context_length"])
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, book)


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


@pytest.mark.parametrize("chunk_rows", [None, 16])
def test_linear_cross_entropy_under_bf16_autocast_matches_the_bf16_logits_loss(chunk_rows):
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


def test_linear_cross_entropy_in_bf16_caps_an_underflowed_probability_instead_of_returning_inf():
    hidden = torch.ones(1, 2)
    weight = torch.tensor([[0.0, 0.0], [100.0, 100.0]])  # logits (0, 200): the target's probability is e^-200
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, torch.tensor([0]))
    assert loss.item() == pytest.approx(-math.log(torch.finfo(torch.float32).tiny))


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_dropout_drops_at_rate_p_scales_exactly_and_backpropagates_its_mask(p, dtype):
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


def test_eager_attention_builds_the_causal_mask_sdpa_would_skip():
    module = torch.nn.Module().eval()
    q, k, v = torch.randn(3, 2, 4, 6, 8).unbind(0)
    explicit = torch.zeros(6, 6).masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), torch.finfo(q.dtype).min)
    boolean = torch.ones(6, 6, dtype=torch.bool).tril()
    want, _ = eager_attention_forward(module, q, k, v, explicit, scaling=0.3)
    for mask in (None, boolean):
        got, _ = eager_attention_forward(module, q, k, v, mask, scaling=0.3)
        assert torch.equal(got, want)
    # Two new queries after four cached keys: query i sees keys up to 4 + i.
    got, _ = eager_attention_forward(module, q[:, :, 4:], k, v, None, scaling=0.3)
    assert torch.allclose(got, want[:, 4:], atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_dropout_attention_is_the_books_attention_with_its_mask(dtype):
    module = torch.nn.Module().train()
    q, k, v = (torch.randn(2, 3, 10, 8, dtype=dtype, requires_grad=True) for _ in range(3))
    p = 0.3
    torch.manual_seed(5)
    got, weights = fast_dropout_attention_forward(module, q, k, v, None, scaling=0.125, dropout=p,
                                                  output_attentions=True)
    torch.manual_seed(5)
    keep = _keep_mask((2, 3, 10, 10), p, dtype, q.device)
    assert 0 < (keep == 0).sum() < keep.numel()  # some dropped, some kept
    # The book: scores, causal mask, softmax, dropout (kept weights scaled by 1/keep), weighted values.
    scores = (q @ k.transpose(2, 3)).float() * 0.125
    scores = scores.masked_fill(torch.ones(10, 10, dtype=torch.bool).triu(1), float("-inf"))
    want_weights = torch.softmax(scores, -1) * keep.float() * (32768 / (32768 - round(p * 32768)))
    want = (want_weights @ v.float()).transpose(1, 2)
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    assert torch.allclose(weights.float(), want_weights, atol=tolerance)
    assert torch.allclose(got.float(), want, atol=tolerance)
    grads = torch.autograd.grad(got.float().sum(), (q, k, v))
    want_grads = torch.autograd.grad(want.sum(), (q, k, v))
    for ours, theirs in zip(grads, want_grads):
        assert torch.allclose(ours.float(), theirs.float(), atol=tolerance * 4)
    # Without output_attentions the weights are not kept for the caller.
    assert fast_dropout_attention_forward(module, q, k, v, None, scaling=0.125, dropout=p)[1] is None


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_bf16_training_on_a_left_padded_batch_stays_finite(implementation):
    # The eager masks are fp32: their minimum would be -inf in bf16, and a fully masked row NaN.
    model = tiny_model(drop_rate=0.1).train()
    model.set_attn_implementation(implementation)
    ids = torch.randint(0, TINY["vocab_size"], (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, :4] = 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    assert torch.isfinite(out.logits).all()
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_training_with_fast_dropout_on_cpu_equals_eager_and_sdpa_when_masks_match():
    # With attention dropout in training, gptlite's CPU path runs the explicit attention (fast masks);
    # at rate 0 it runs SDPA. Their outputs agree once no element is dropped.
    model = tiny_model(drop_rate=1e-9).train()
    randomize_(model)
    ids = torch.randint(0, TINY["vocab_size"], (2, 12))
    dropped_path = model(ids).logits
    model.eval()
    assert torch.allclose(dropped_path, model(ids).logits, atol=1e-5)


def test_return_logits_false_gives_the_same_loss_and_gradients_without_logits():
    model = tiny_model().train()
    randomize_(model)
    ids = torch.randint(0, TINY["vocab_size"], (3, 21))
    targets = torch.randint(0, TINY["vocab_size"], (3, 21))
    for kwargs in ({"labels": ids}, {"shift_labels": targets}):
        results = []
        for return_logits in (True, False):
            model.zero_grad()
            torch.manual_seed(9)  # dropout is 0, but keep both passes identical regardless
            out = model(ids, return_logits=return_logits, **kwargs)
            out.loss.backward()
            results.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
        (full, full_grads), (fused, fused_grads) = results
        assert fused.logits is None
        assert abs(full.loss.item() - fused.loss.item()) < 1e-5
        for name, grad in full_grads.items():
            assert (grad - fused_grads[name]).abs().max().item() < 1e-5, name
    with pytest.raises(ValueError, match="return_logits=False needs labels"):
        model(ids, return_logits=False)


def test_shift_labels_are_the_books_targets():
    model = tiny_model()
    ids = torch.randint(0, TINY["vocab_size"], (2, 9))
    targets = torch.randint(0, TINY["vocab_size"], (2, 9))
    with torch.no_grad():
        logits = model(ids).logits
        loss = model(ids, shift_labels=targets).loss
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())  # the book's calc_loss_batch
    assert abs(loss.item() - expected.item()) < 1e-6
