"""gptlite.loading: the one loader behind gptlite-generate, gptlite-eval and --init-from.

Plain GPT-2 folders are real GPT2LMHeadModel.save_pretrained folders (and gptlite-convert to-hf outputs); the
converted model must compute transformers' GPT-2 logits and hold what the on-disk conversion writes.
"""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from gptlite.conversion import from_hf, to_hf
from gptlite.errors import EXIT_FAILURE, EXIT_USAGE, InputFileError, UsageError, exit_status
from gptlite.loading import load_model, model_folder, read_model_config
from tests.conftest import TINY, randomize_, tiny_model


def save_gpt2(folder, seed=0, **overrides):
    """A random GPT2LMHeadModel saved by transformers, every parameter random (biases and LayerNorms too)."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=120, n_positions=24, n_embd=32, n_layer=2, n_head=4, **overrides)
    model = GPT2LMHeadModel(config).eval()
    randomize_(model)
    model.save_pretrained(folder)
    return model


def save_gptlite(folder, **overrides):
    model = tiny_model(**overrides)
    randomize_(model)
    model.save_pretrained(folder)
    return model


def notices():
    seen = []
    return seen, seen.append


@pytest.mark.parametrize("tied", [True, False], ids=["tied-head", "own-head"])
def test_a_gpt2_folder_runs_its_real_weights(tmp_path, tied):
    reference = save_gpt2(tmp_path / "gpt2", tie_word_embeddings=tied)
    seen, notice = notices()
    model = load_model(tmp_path / "gpt2", notice=notice)
    assert seen == [f"{tmp_path / 'gpt2'} is a GPT-2 folder (model_type gpt2): converted to gptlite in memory"]
    ids = torch.randint(0, 120, (2, 24))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-5)
    greedy = {"max_new_tokens": 10, "do_sample": False, "eos_token_id": None, "pad_token_id": 0}
    assert torch.equal(model.generate(ids[:, :6], **greedy), reference.generate(ids[:, :6], **greedy))
    assert (model.out_head.weight is model.model.tok_emb.weight) == tied


def test_the_in_memory_conversion_is_the_on_disk_one(tmp_path):
    save_gpt2(tmp_path / "gpt2", tie_word_embeddings=False)
    from_hf(tmp_path / "gpt2", tmp_path / "converted")
    on_disk = load_model(tmp_path / "converted").state_dict()
    in_memory = load_model(tmp_path / "gpt2", notice=lambda line: None).state_dict()
    assert on_disk.keys() == in_memory.keys()
    for name, tensor in on_disk.items():
        assert torch.equal(tensor, in_memory[name]), name


def test_converted_parameters_own_their_storage(tmp_path):
    # q/k/v biases are slices of GPT-2's fused c_attn bias; shared storage would be dropped from checkpoints.
    save_gpt2(tmp_path / "gpt2")
    model = load_model(tmp_path / "gpt2", notice=lambda line: None)
    storages = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        storages.setdefault(param.untyped_storage().data_ptr(), []).append(name)
    assert [names for names in storages.values() if len(names) > 1] == [["model.tok_emb.weight", "out_head.weight"]]


def test_what_to_hf_writes_loads_back_with_the_same_logits(tmp_path):
    original = save_gptlite(tmp_path / "lite", qkv_bias=True)
    to_hf(tmp_path / "lite", tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["model_type"] == "gpt2"
    model = load_model(tmp_path / "plain", notice=lambda line: None)
    ids = torch.randint(0, TINY["vocab_size"], (2, 12))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, original(ids).logits, atol=1e-5)


def test_overrides_and_dtype_apply_to_both_kinds(tmp_path):
    save_gpt2(tmp_path / "gpt2")
    save_gptlite(tmp_path / "lite")
    for folder in ("gpt2", "lite"):
        model = load_model(tmp_path / folder, dtype=torch.bfloat16, overrides={"drop_rate": 0.25},
                           attn_implementation="eager", notice=lambda line: None)
        assert model.config.drop_rate == 0.25 and model.dtype == torch.bfloat16
        assert model.config._attn_implementation == "eager" and not model.training


def test_another_model_type_is_refused_naming_it(tmp_path):
    save_gptlite(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps(config | {"model_type": "llama"}))
    with pytest.raises(UsageError, match=r"config.json: model_type is 'llama'; gptlite runs gptlite models") as err:
        load_model(tmp_path / "m")
    assert exit_status(err.value) == EXIT_USAGE


def test_a_folder_without_config_json_is_not_a_model_folder(tmp_path):
    with pytest.raises(UsageError, match="has no config.json, so it is not a model folder"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("{tmp}/does-not-exist", "is neither a folder nor reachable on the Hub: no such folder"),
        ("no-such-model-anywhere", r"is neither a folder nor reachable on the Hub \(HF_HUB_OFFLINE is set"),
        ("someone/no-such-model", r"is neither a folder nor reachable on the Hub \(HF_HUB_OFFLINE is set"),
    ],
    ids=["path", "hub-id", "owner-hub-id"],
)
def test_a_missing_path_is_neither_a_folder_nor_on_the_hub(tmp_path, monkeypatch, name, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=message):
        model_folder(name.format(tmp=tmp_path))


def test_a_file_is_not_a_model_folder(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(UsageError, match="is a file, not a model folder"):
        model_folder(tmp_path / "model.safetensors")


@pytest.mark.parametrize("kind", ["gptlite", "gpt2"])
def test_a_truncated_weights_file_is_named(tmp_path, kind):
    (save_gptlite if kind == "gptlite" else save_gpt2)(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    with pytest.raises(InputFileError, match=f"{weights}: not a readable safetensors file") as err:
        load_model(tmp_path / "m", notice=lambda line: None)
    assert exit_status(err.value) == EXIT_FAILURE


def test_a_wrongly_shaped_gptlite_tensor_is_named_with_both_shapes(tmp_path):
    save_gptlite(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.trf_blocks.1.att.W_query.weight"] = torch.zeros(24, 48)
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(InputFileError, match=r"tensor model.trf_blocks.1.att.W_query.weight has shape \[24, 48\], but "
                                             r".*config.json needs \[48, 48\]"):
        load_model(tmp_path / "m")


def test_a_wrongly_shaped_gpt2_tensor_is_named_with_both_shapes(tmp_path):
    save_gpt2(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    tensors = load_file(weights)
    tensors["transformer.h.0.mlp.c_fc.weight"] = torch.zeros(32, 100)
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(InputFileError, match=r"tensor transformer.h.0.mlp.c_fc.weight has shape \[32, 100\], but "
                                             r"config.json .* needs \[32, 128\]"):
        load_model(tmp_path / "m")


def test_a_missing_tensor_is_named_instead_of_initialised_at_random(tmp_path):
    save_gptlite(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    tensors = load_file(weights)
    del tensors["model.final_norm.shift"]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(InputFileError, match="tensor final_norm.shift is missing"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text.replace('"emb_dim": 48', '"emb_dim": "two"'), "config.json: .*emb_dim.*'two'"),
        (lambda text: text[: len(text) // 2], r"config.json: not valid JSON \(line \d+ column \d+"),
        (lambda text: "[1, 2]", "config.json: expected a JSON object, got list"),
    ],
    ids=["field-type", "bad-json", "not-an-object"],
)
def test_a_bad_config_json_is_one_error_naming_it(tmp_path, edit, message):
    save_gptlite(tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    config.write_text(edit(config.read_text()))
    with pytest.raises(InputFileError, match=message):
        read_model_config(tmp_path / "m")


def test_gpt2_options_gptlite_lacks_are_refused_naming_the_field(tmp_path):
    save_gpt2(tmp_path / "m", activation_function="relu")
    with pytest.raises(UsageError, match="config.json: activation_function is 'relu'"):
        load_model(tmp_path / "m")
