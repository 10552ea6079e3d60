"""to_hf: gptlite models of every option to plain GPT2LMHeadModel folders."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

from gptlite import GPTLiteConfig, GPTLiteForCausalLM
from gptlite.conversion import ConversionError, to_hf
from tests.conversion.conftest import ATOL, greedy, max_diff, randomize_, tokens


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


# The keys of OpenAI's gpt2 config.json on the Hub (less task_specific_params), which GPT-2 consumers
# outside transformers read by name: llama.cpp's convert_hf_to_gguf.py reads n_ctx, for one.
GPT2_HUB_KEYS = {
    "activation_function", "architectures", "attn_pdrop", "bos_token_id", "embd_pdrop", "eos_token_id",
    "initializer_range", "layer_norm_epsilon", "model_type", "n_ctx", "n_embd", "n_head", "n_layer",
    "n_positions", "resid_pdrop", "summary_activation", "summary_first_dropout", "summary_proj_to_labels",
    "summary_type", "summary_use_proj", "vocab_size",
}


def test_config_has_every_key_gpt2_consumers_read(tmp_path):
    model = tiny_gptlite(context_length=40, emb_dim=48, n_heads=6, n_layers=3, drop_rate=0.25,
                         layer_norm_eps=1e-6)
    model.save_pretrained(tmp_path / "lite")
    to_hf(tmp_path / "lite", tmp_path / "gpt2")
    config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    assert GPT2_HUB_KEYS <= set(config), GPT2_HUB_KEYS - set(config)
    expected = {
        "n_ctx": 40, "n_positions": 40, "n_embd": 48, "n_head": 6, "n_layer": 3, "n_inner": 4 * 48,
        "vocab_size": 96, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-6,
        "attn_pdrop": 0.25, "embd_pdrop": 0.25, "resid_pdrop": 0.25, "tie_word_embeddings": False,
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
    }
    assert {key: config[key] for key in expected} == expected
    # The file still reads back as the same GPT-2, and converts back to the same gptlite config.
    from gptlite.conversion.configs import from_gpt2_config, read_gpt2_config

    back = from_gpt2_config(read_gpt2_config(tmp_path / "gpt2" / "config.json"))
    assert (back.context_length, back.emb_dim, back.n_layers, back.n_heads) == (40, 48, 3, 6)
