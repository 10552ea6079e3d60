"""to_hf: gptlite models of every option to plain GPT2LMHeadModel folders."""

from __future__ import annotations

import json

import pytest
import torch
from conversion_helpers import ATOL, greedy, max_diff, randomize_, tokens
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

from gptlite import GPTLiteConfig, GPTLiteForCausalLM
from gptlite.conversion import ConversionError, to_hf


def tiny_gptlite(**overrides) -> GPTLiteForCausalLM:
    fields = {"vocab_size": 96, "context_length": 24, "emb_dim": 32, "n_heads": 4, "n_layers": 2,
              "qkv_bias": False, "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0}
    return randomize_(GPTLiteForCausalLM(GPTLiteConfig(**{**fields, **overrides}))).eval()


@pytest.mark.parametrize(
    "options",
    [
        {},  # the book's defaults: no q/k/v bias, untied head
        {"qkv_bias": True, "tie_word_embeddings": True, "layer_norm_eps": 1e-6, "context_length": 40},
    ],
)
def test_plain_gpt2_computes_the_same_function(options, tmp_path):
    model = tiny_gptlite(**options)
    model.save_pretrained(tmp_path / "lite")
    result = to_hf(tmp_path / "lite", tmp_path / "gpt2", verify=True)
    assert result.max_logit_diff <= ATOL

    gpt2 = AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2")  # no trust_remote_code
    assert type(gpt2) is GPT2LMHeadModel
    config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and "auto_map" not in config
    assert not list((tmp_path / "gpt2").glob("*.py"))
    assert gpt2.config.tie_word_embeddings == model.config.tie_word_embeddings
    assert gpt2.config.layer_norm_epsilon == model.config.layer_norm_eps
    ids = tokens(96)
    assert max_diff(model, gpt2, ids) <= ATOL
    prompt = ids[:1, :4]
    new = model.config.context_length - 4
    assert torch.equal(greedy(model, prompt, new), greedy(gpt2, prompt, new))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "gpt2")
    assert tokenizer.model_max_length == model.config.context_length
    assert tokenizer("Every effort moves you")["input_ids"] == [6109, 3626, 6100, 345]


def test_padded_vocabulary_is_trimmed_to_the_tokenizer(tmp_path):
    model = tiny_gptlite(vocab_size=50304, emb_dim=16, n_heads=2, n_layers=1)  # nanoGPT-style padding
    model.save_pretrained(tmp_path / "lite")
    result = to_hf(tmp_path / "lite", tmp_path / "gpt2", verify=True)
    assert result.config.vocab_size == 50257
    assert result.max_logit_diff <= ATOL
    state = load_file(tmp_path / "gpt2" / "model.safetensors")
    assert state["transformer.wte.weight"].shape == state["lm_head.weight"].shape == (50257, 16)
    gpt2 = GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2")
    ids = tokens(50257)
    with torch.no_grad():
        assert (model(ids).logits[..., :50257] - gpt2(ids).logits).abs().max() <= ATOL


def test_in_memory_model_is_left_as_it_was(tmp_path):
    model = tiny_gptlite().to(torch.bfloat16).train()
    result = to_hf(model, tmp_path / "gpt2", verify=True)
    assert result.dtype == torch.bfloat16 and result.max_logit_diff <= ATOL
    assert model.training and model.dtype == torch.bfloat16
    assert GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").dtype == torch.bfloat16


def test_refuses_what_is_not_a_gptlite_language_model(tmp_path):
    tiny = tiny_gptlite()
    tiny.save_pretrained(tmp_path / "lite")
    to_hf(tmp_path / "lite", tmp_path / "gpt2")
    with pytest.raises(ConversionError, match="model_type is 'gpt2', not 'gptlite'"):
        to_hf(tmp_path / "gpt2", tmp_path / "again")

    weights = tmp_path / "lite" / "model.safetensors"
    state = load_file(weights)
    state["out_head.bias"] = torch.zeros(96)  # e.g. a classification head with a bias
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"out_head\.bias is not part .*cannot be written as GPT-2"):
        to_hf(tmp_path / "lite", tmp_path / "out")

    del state["out_head.bias"], state["model.trf_blocks.0.norm2.shift"]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"tensor trf_blocks\.0\.norm2\.shift is missing"):
        to_hf(tmp_path / "lite", tmp_path / "out")
