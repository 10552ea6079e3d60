"""from_book: the book's GPTModel (reference/book_gpt.py, an independent plain-torch copy) saved as model.pth."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from gptlite import GPTLiteForCausalLM
from gptlite.conversion import ConversionError, from_book, to_hf
from gptlite.conversion.names import book_name
from reference.book_gpt import BookGPTModel, book_generate_simple
from tests.conversion.conftest import ATOL, randomize_, tokens

# The book's GPT_CONFIG_124M keys, shrunk (qkv_bias False as in chapter 4).
BOOK_CONFIG = {"vocab_size": 90, "context_length": 20, "emb_dim": 32, "n_heads": 4, "n_layers": 2,
               "drop_rate": 0.1, "qkv_bias": False}


def book_model(**overrides) -> BookGPTModel:
    torch.manual_seed(0)
    return randomize_(BookGPTModel({**BOOK_CONFIG, **overrides})).eval()


@pytest.mark.parametrize("chapter5_format", [False, True])
def test_round_trip_through_gptlite_and_plain_gpt2(chapter5_format, tmp_path):
    book = book_model()
    state = book.state_dict()
    assert any(name.endswith("att.mask") for name in state)  # the book's buffer, ignored by conversion
    if chapter5_format:
        optimizer = torch.optim.AdamW(book.parameters())
        book(tokens(90)).sum().backward()
        optimizer.step()
        state = book.state_dict()
        checkpoint = {"model_state_dict": state, "optimizer_state_dict": optimizer.state_dict()}
        torch.save(checkpoint, tmp_path / "m.pth")
    else:
        torch.save(state, tmp_path / "m.pth")

    result = from_book(tmp_path / "m.pth", tmp_path / "lite", config=BOOK_CONFIG, verify=True)
    assert result.max_logit_diff <= ATOL
    model = GPTLiteForCausalLM.from_pretrained(tmp_path / "lite")
    assert not model.config.tie_word_embeddings  # the book's head is its own tensor
    # Exact: same tensors under the same names.
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[book_name(name)]), name
    ids = tokens(90)
    with torch.no_grad():
        assert (book(ids) - model(ids).logits).abs().max() <= ATOL
    prompt = ids[:1, :4]
    assert torch.equal(book_generate_simple(book, prompt, 8, 20),
                       model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0))

    # Back out as plain GPT-2 (zero q/k/v biases) and in again: same logits.
    to_hf(tmp_path / "lite", tmp_path / "gpt2", verify=True)
    hf_state = load_file(tmp_path / "gpt2" / "model.safetensors")
    assert not hf_state["transformer.h.0.attn.c_attn.bias"].any()


def test_tying_follows_the_weights(tmp_path):
    book = book_model()
    with torch.no_grad():
        book.out_head.weight.copy_(book.tok_emb.weight)  # as after chapter 5's load_weights_into_gpt
    torch.save(book.state_dict(), tmp_path / "m.pth")
    from_book(tmp_path / "m.pth", tmp_path / "lite", config=BOOK_CONFIG)
    model = GPTLiteForCausalLM.from_pretrained(tmp_path / "lite")
    assert model.config.tie_word_embeddings and model.out_head.weight is model.model.tok_emb.weight
    with torch.no_grad():
        assert (book(tokens(90)) - model(tokens(90)).logits).abs().max() <= ATOL

    book = book_model()  # head differs from the embedding: an explicit tie is refused
    torch.save(book.state_dict(), tmp_path / "m.pth")
    with pytest.raises(ConversionError, match="out_head.weight differs from tok_emb.weight"):
        from_book(tmp_path / "m.pth", tmp_path / "lite2", config={**BOOK_CONFIG, "tie_word_embeddings": True})


def test_config_as_json_file_and_string(tmp_path):
    torch.save(book_model(qkv_bias=True).state_dict(), tmp_path / "m.pth")
    config = {**BOOK_CONFIG, "qkv_bias": True}
    (tmp_path / "config.json").write_text(json.dumps(config))
    from_book(tmp_path / "m.pth", tmp_path / "a", config=str(tmp_path / "config.json"))
    from_book(tmp_path / "m.pth", tmp_path / "b", config=json.dumps(config), dtype="bfloat16")
    assert GPTLiteForCausalLM.from_pretrained(tmp_path / "a").config.qkv_bias
    assert GPTLiteForCausalLM.from_pretrained(tmp_path / "b").dtype == torch.bfloat16


def test_wrong_shape_names_tensor_and_both_shapes(tmp_path):
    torch.save(book_model().state_dict(), tmp_path / "m.pth")
    with pytest.raises(ConversionError, match=r"tok_emb\.weight has shape \[90, 32\].*needs \[50257, 768\]"):
        from_book(tmp_path / "m.pth", tmp_path / "lite", preset="gpt2-small")
    with pytest.raises(ConversionError, match=r"pos_emb\.weight has shape \[20, 32\].*needs \[30, 32\]"):
        from_book(tmp_path / "m.pth", tmp_path / "lite", config={**BOOK_CONFIG, "context_length": 30})


def test_missing_and_unexpected_tensors(tmp_path):
    state = book_model().state_dict()
    del state["trf_blocks.1.ff.layers.2.bias"]
    torch.save(state, tmp_path / "m.pth")
    with pytest.raises(ConversionError, match=r"tensor trf_blocks\.1\.ff\.layers\.2\.bias is missing"):
        from_book(tmp_path / "m.pth", tmp_path / "lite", config=BOOK_CONFIG)

    torch.save(book_model(qkv_bias=True).state_dict(), tmp_path / "m.pth")
    expected = r"W_key\.bias is not part of the model the config describes \(.*qkv_bias"
    with pytest.raises(ConversionError, match=expected):
        from_book(tmp_path / "m.pth", tmp_path / "lite", config=BOOK_CONFIG)

    classifier = book_model()
    classifier.out_head = torch.nn.Linear(32, 2)  # chapter 6's spam classifier head
    torch.save(classifier.state_dict(), tmp_path / "m.pth")
    with pytest.raises(ConversionError, match=r"out_head\.weight has shape \[2, 32\]"):
        from_book(tmp_path / "m.pth", tmp_path / "lite", config=BOOK_CONFIG)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "m.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConversionError, match=r"m\.pth: not"):
        from_book(tmp_path / "m.pth", tmp_path / "lite", config=BOOK_CONFIG)
    torch.save(book_model(), tmp_path / "whole-model.pth")  # a pickled module, not a state dict
    with pytest.raises(ConversionError, match="weights_only=True"):
        from_book(tmp_path / "whole-model.pth", tmp_path / "lite", config=BOOK_CONFIG)
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(ConversionError, match="expected a state dict"):
        from_book(tmp_path / "list.pth", tmp_path / "lite", config=BOOK_CONFIG)


def test_config_choice(tmp_path):
    torch.save(book_model().state_dict(), tmp_path / "m.pth")
    with pytest.raises(ConversionError, match="exactly one of --preset NAME or --config JSON"):
        from_book(tmp_path / "m.pth", tmp_path / "lite")
    with pytest.raises(ConversionError, match="--preset: unknown preset 'gpt3'"):
        from_book(tmp_path / "m.pth", tmp_path / "lite", preset="gpt3")
    with pytest.raises(ConversionError, match="--config: .*n_heads"):
        from_book(tmp_path / "m.pth", tmp_path / "lite", config={**BOOK_CONFIG, "n_heads": 5})
