"""from_hf: random transformers GPT-2s of several shapes and file layouts -> gptlite, compared by logits."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GPT2LMHeadModel

from gptlite import GPTLiteForCausalLM
from gptlite.conversion import ConversionError, DownloadError, from_hf
from tests.conversion.conftest import ATOL, greedy, max_diff, safetensors_keys, tiny_gpt2, tokens


def save_gpt2(model: GPT2LMHeadModel, folder, layout: str) -> None:
    """The layouts found on the Hub: safetensors (single or sharded), and pytorch_model.bin, including
    the original `gpt2` upload's (GPT2Model keys without `transformer.`, mask buffers saved)."""
    if layout == "safetensors":
        model.save_pretrained(folder)
    elif layout == "sharded":
        model.save_pretrained(folder, max_shard_size="20KB")
        assert (folder / "model.safetensors.index.json").is_file()
    else:
        model.config.save_pretrained(folder)
        if layout == "bin":
            state = model.state_dict()
            if model.config.tie_word_embeddings:
                state.pop("lm_head.weight")
        else:  # "bin-legacy"
            state = model.transformer.state_dict()
            n = model.config.n_positions
            for i in range(model.config.n_layer):
                state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
                state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        torch.save(state, folder / "pytorch_model.bin")


CASES = {
    "tied-safetensors": ({"tied": True}, "safetensors"),
    "untied-safetensors-40pos": ({"tied": False, "positions": 40, "embd": 48, "heads": 3, "layers": 3,
                                    "vocab": 77}, "safetensors"),
    "tied-sharded": ({"tied": True, "positions": 16, "layers": 3}, "sharded"),
    "untied-bin": ({"tied": False, "vocab": 64, "positions": 30}, "bin"),
    "tied-bin-legacy-keys": ({"tied": True, "embd": 24, "heads": 2}, "bin-legacy"),
}


@pytest.mark.parametrize("case", CASES)
def test_converted_model_matches_transformers(case, tmp_path):
    shape, layout = CASES[case]
    reference = tiny_gpt2(**shape)
    save_gpt2(reference, tmp_path / "hf", layout)

    result = from_hf(tmp_path / "hf", tmp_path / "lite", verify=True)

    model, info = GPTLiteForCausalLM.from_pretrained(tmp_path / "lite", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    cfg = reference.config
    assert (model.config.context_length, model.config.emb_dim, model.config.n_layers) == (
        cfg.n_positions, cfg.n_embd, cfg.n_layer)
    assert model.config.tie_word_embeddings == cfg.tie_word_embeddings
    assert (model.out_head.weight is model.model.tok_emb.weight) == cfg.tie_word_embeddings
    ids = tokens(cfg.vocab_size)
    assert max_diff(reference, model, ids) <= ATOL
    assert result.max_logit_diff <= ATOL
    prompt = ids[:1, :4]
    new = cfg.n_positions - prompt.shape[1]
    assert torch.equal(greedy(reference, prompt, new), greedy(model, prompt, new))


def test_output_folder_is_what_save_pretrained_writes(tmp_path):
    reference = tiny_gpt2(tied=True)
    reference.save_pretrained(tmp_path / "hf")
    from_hf(tmp_path / "hf", tmp_path / "lite")

    files = {p.name for p in (tmp_path / "lite").iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "configuration_gptlite.py",
            "modeling_gptlite.py", "tokenizer.json", "tokenizer_config.json"} <= files
    assert not any(name.endswith(".partial") for name in files)
    # The streamed file holds exactly what save_pretrained of the loaded model writes (tied head once).
    GPTLiteForCausalLM.from_pretrained(tmp_path / "lite").save_pretrained(tmp_path / "resaved")
    assert safetensors_keys(tmp_path / "lite" / "model.safetensors") == safetensors_keys(
        tmp_path / "resaved" / "model.safetensors")
    config = json.loads((tmp_path / "lite" / "config.json").read_text())
    assert config["model_type"] == "gptlite" and "auto_map" in config


def test_to_hf_round_trip_is_exact(tmp_path):
    from gptlite.conversion import to_hf

    for tied in (True, False):
        reference = tiny_gpt2(tied=tied, positions=20)
        reference.save_pretrained(tmp_path / f"hf{tied}")
        from_hf(tmp_path / f"hf{tied}", tmp_path / f"lite{tied}")
        to_hf(tmp_path / f"lite{tied}", tmp_path / f"back{tied}")

        original = load_file(tmp_path / f"hf{tied}" / "model.safetensors")
        back = load_file(tmp_path / f"back{tied}" / "model.safetensors")
        assert original.keys() == back.keys()
        for name, tensor in original.items():
            assert torch.equal(tensor, back[name]), name
        # A plain GPT-2 folder: transformers' own class, no remote code involved.
        model = AutoModelForCausalLM.from_pretrained(tmp_path / f"back{tied}")
        assert type(model) is GPT2LMHeadModel
        assert model.config.n_positions == 20 and model.config.tie_word_embeddings == tied


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dtype(dtype, tmp_path):
    tiny_gpt2().save_pretrained(tmp_path / "hf")
    result = from_hf(tmp_path / "hf", tmp_path / "lite", dtype=dtype)
    assert str(result.dtype) == f"torch.{dtype}"
    assert {d for _, d in safetensors_keys(tmp_path / "lite" / "model.safetensors").values()} == {
        {"bfloat16": "BF16", "float16": "F16"}[dtype]}
    assert json.loads((tmp_path / "lite" / "config.json").read_text())["dtype"] == dtype


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("activation_function", "relu"),
        ("n_inner", 40),
        ("scale_attn_by_inverse_layer_idx", True),
        ("reorder_and_upcast_attn", True),
        ("scale_attn_weights", False),
    ],
)
def test_refuses_options_gptlite_cannot_express(option, value, tmp_path):
    tiny_gpt2(**{option: value}).save_pretrained(tmp_path / "hf")
    with pytest.raises(ConversionError, match=rf"config\.json: {option} "):
        from_hf(tmp_path / "hf", tmp_path / "lite")
    assert not (tmp_path / "lite").exists()


def test_gelu_variants_with_the_same_maths_are_accepted(tmp_path):
    reference = tiny_gpt2(activation_function="gelu_pytorch_tanh")
    reference.save_pretrained(tmp_path / "hf")
    from_hf(tmp_path / "hf", tmp_path / "lite")
    assert max_diff(reference, GPTLiteForCausalLM.from_pretrained(tmp_path / "lite"), tokens(100)) <= ATOL


def test_refuses_other_model_types(tmp_path):
    tiny_gpt2().save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ConversionError, match="model_type is 'llama'"):
        from_hf(tmp_path / "hf", tmp_path / "lite")


def test_missing_tensor_is_named(tmp_path):
    tiny_gpt2().save_pretrained(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    state = load_file(weights)
    del state["transformer.h.1.mlp.c_fc.bias"]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"tensor transformer\.h\.1\.mlp\.c_fc\.bias is missing"):
        from_hf(tmp_path / "hf", tmp_path / "lite")


def test_wrong_shape_names_tensor_and_both_shapes(tmp_path):
    tiny_gpt2(positions=24).save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "n_positions": 32}))
    expected = r"transformer\.wpe\.weight has shape \[24, 32\].*needs \[32, 32\]"
    with pytest.raises(ConversionError, match=expected):
        from_hf(tmp_path / "hf", tmp_path / "lite")


def test_unexpected_tensor_is_refused(tmp_path):
    tiny_gpt2().save_pretrained(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    state = load_file(weights)
    state["score.weight"] = torch.zeros(2, 32)  # a sequence-classification head
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"score\.weight is not part of a GPT-2 language model"):
        from_hf(tmp_path / "hf", tmp_path / "lite")


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_not_a_checkpoint(name, tmp_path):
    tiny_gpt2().config.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / name).write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ConversionError, match=name.replace(".", r"\.")):
        from_hf(tmp_path / "hf", tmp_path / "lite")


def test_pickled_objects_are_never_unpickled(tmp_path):
    tiny_gpt2().config.save_pretrained(tmp_path / "hf")
    torch.save({"transformer.wte.weight": torch.zeros(1), "payload": ConversionError("x")},
               tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="weights_only=True"):
        from_hf(tmp_path / "hf", tmp_path / "lite")


def test_folder_without_weights(tmp_path):
    tiny_gpt2().config.save_pretrained(tmp_path / "hf")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        from_hf(tmp_path / "hf", tmp_path / "lite")


def test_hub_id_offline_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE is set and it is not in the local cache"):
        from_hf("gpt2", tmp_path / "lite", cache_dir=tmp_path / "empty-cache")


def test_hub_id_unreachable_fails_with_a_clear_message(tmp_path, monkeypatch):
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("connection refused")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # CI sets it; this test is about an online attempt failing
    with pytest.raises(DownloadError, match="the Hub cannot be reached"):
        from_hf("distilgpt2", tmp_path / "lite")


def test_hub_snapshot_is_used_like_a_folder(tmp_path, monkeypatch):
    import huggingface_hub

    reference = tiny_gpt2()
    reference.save_pretrained(tmp_path / "snapshot")
    calls = []

    def fake_snapshot(repo_id, allow_patterns, cache_dir, local_files_only):
        calls.append((repo_id, allow_patterns))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    from_hf("gpt2", tmp_path / "lite")
    assert calls == [("gpt2", ["config.json", "*.safetensors", "model.safetensors.index.json"])]
    assert max_diff(reference, GPTLiteForCausalLM.from_pretrained(tmp_path / "lite"), tokens(100)) <= ATOL
