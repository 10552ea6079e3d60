import math

import pytest
import torch

from gptlite import GPTLiteConfig, GPTLiteForCausalLM
from gptlite.compat import cache_of
from reference.book_gpt import BookGPTModel, book_generate_simple
from tests.conftest import TINY, book_state_dict, randomize_, tiny_model, to_gpt2


def test_state_dict_keys_are_the_books_with_the_trunk_under_model():
    model = tiny_model(n_layers=2)
    book = BookGPTModel({**model.config.to_dict(), "qkv_bias": False})
    book_keys = {k for k in book.state_dict() if not k.endswith("att.mask")}
    assert set(book_state_dict(model)) == book_keys
    assert {k.split(".")[0] for k in model.state_dict()} == {"model", "out_head"}


@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_logits_equal_the_books_forward(qkv_bias, attn):
    model = tiny_model(qkv_bias=qkv_bias)
    randomize_(model)
    model.set_attn_implementation(attn)
    cfg = dict(TINY, qkv_bias=qkv_bias)
    book = BookGPTModel(cfg).eval()
    # The book's state dict (with its att.mask buffers) loads 1:1, strictly.
    missing, unexpected = book.load_state_dict(book_state_dict(model), strict=False)
    assert unexpected == [] and all(k.endswith("att.mask") for k in missing)
    ids = torch.randint(0, cfg["vocab_size"], (3, cfg["context_length"]))
    with torch.no_grad():
        ours = model(ids).logits
        theirs = book(ids)
    assert (ours - theirs).abs().max().item() < 1e-5


def test_book_state_dict_with_mask_buffers_loads_strictly():
    book = BookGPTModel(dict(TINY, qkv_bias=False))
    model = tiny_model()
    # The trunk's keys move under `model.` and the book's att.mask buffers are dropped, so even strict loading works.
    result = model.load_state_dict(book.state_dict(), strict=True)
    assert not result.unexpected_keys and not result.missing_keys
    assert torch.equal(model.model.trf_blocks[1].att.W_key.weight, book.trf_blocks[1].att.W_key.weight)
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
        rest = model(ids[:, 10:], cache=cache_of(first), use_cache=True)
    assert cache_of(first).get_seq_length() == 15
    assert (torch.cat([first.logits, rest.logits], 1) - full).abs().max().item() < 1e-5


def test_sequence_longer_than_context_names_both_numbers():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"41 tokens.*context_length of 40"):
        model(torch.zeros(1, 41, dtype=torch.long))
    with torch.no_grad():
        cache = cache_of(model(torch.zeros(1, 38, dtype=torch.long), use_cache=True))
    with pytest.raises(ValueError, match=r"42 tokens \(38 cached \+ 4 new\).*40"):
        model(torch.zeros(1, 4, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("bad", [120, 5000, -1])
def test_token_id_outside_vocabulary_is_refused(bad):
    model = tiny_model()
    ids = torch.tensor([[1, 2, bad]])
    with pytest.raises(ValueError, match=rf"token id {bad} .*vocab_size=120"):
        model(ids)


def test_gpt2_initialisation():
    model = GPTLiteForCausalLM(GPTLiteConfig(vocab_size=2000, context_length=64, emb_dim=256, n_heads=4, n_layers=6))
    residual_std = 0.02 / math.sqrt(2 * 6)
    block = model.model.trf_blocks[0]
    assert abs(block.att.W_query.weight.std().item() - 0.02) < 1e-3
    assert abs(block.att.out_proj.weight.std().item() - residual_std) < 5e-4
    assert abs(block.ff.layers[2].weight.std().item() - residual_std) < 5e-4
    assert abs(model.model.tok_emb.weight.std().item() - 0.02) < 1e-3
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
    for name, tensor in book_state_dict(ours).items():
        assert torch.equal(tensor, theirs[name]), name
    # Both leave the global generator in the same state.
    assert torch.equal(torch.rand(3), (torch.manual_seed(123), BookGPTModel(cfg), torch.rand(3))[2])


def test_tying_through_the_config():
    tied = tiny_model(tie_word_embeddings=True)
    assert tied.out_head.weight is tied.model.tok_emb.weight
    untied = tiny_model()
    assert untied.out_head.weight.data_ptr() != untied.model.tok_emb.weight.data_ptr()


@pytest.mark.parametrize("tied", [False, True])
def test_resize_token_embeddings(tied):
    model = tiny_model(tie_word_embeddings=tied)
    old = model.model.tok_emb.weight.detach().clone()
    model.resize_token_embeddings(130)
    assert model.config.vocab_size == 130
    assert model.model.tok_emb.weight.shape == (130, 48) and model.out_head.weight.shape == (130, 48)
    assert torch.equal(model.model.tok_emb.weight[:120], old)
    assert (model.out_head.weight is model.model.tok_emb.weight) == tied
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
    assert all(block.gradient_checkpointing for block in model.model.trf_blocks)
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


def test_shift_labels_are_the_books_targets():
    model = tiny_model()
    ids = torch.randint(0, TINY["vocab_size"], (2, 9))
    targets = torch.randint(0, TINY["vocab_size"], (2, 9))
    with torch.no_grad():
        logits = model(ids).logits
        loss = model(ids, shift_labels=targets).loss
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())  # the book's calc_loss_batch
    assert abs(loss.item() - expected.item()) < 1e-6


@pytest.mark.parametrize("bad", [TINY["context_length"], -1])
def test_position_ids_outside_the_context_are_refused_naming_them(bad):
    model = tiny_model()
    ids = torch.randint(0, TINY["vocab_size"], (1, 4))
    positions = torch.tensor([[0, 1, 2, bad]])
    with pytest.raises(ValueError, match=rf"position_ids hold position {bad}"):
        model(ids, position_ids=positions)
