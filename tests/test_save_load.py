"""Save and load: the files save_pretrained writes, the Auto classes, dtypes, sharding, tying and broken files.

No network: every model is built locally and saved to tmp_path.
"""

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

import gptlite
from gptlite import GPTLiteConfig, GPTLiteForCausalLM, GPTLiteModel
from gptlite.errors import InputFileError
from gptlite.loading import load_model
from tests.conftest import REMOTE_CODE

PACKAGE_DIR = Path(gptlite.__file__).resolve().parent
HUB_FILES = {"config.json", "generation_config.json", "model.safetensors", *REMOTE_CODE}


def tiny_config(**overrides) -> GPTLiteConfig:
    fields = {"vocab_size": 256, "context_length": 32, "emb_dim": 32, "n_heads": 2, "n_layers": 2, "drop_rate": 0.0}
    return GPTLiteConfig(**{**fields, **overrides})


def tiny_model(**overrides) -> GPTLiteForCausalLM:
    return GPTLiteForCausalLM(tiny_config(**overrides)).eval()


def assert_same_weights(loaded: torch.nn.Module, original: torch.nn.Module) -> None:
    expected = original.state_dict()
    actual = loaded.state_dict()
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor.to(actual[name].dtype)), name


def keys_on_disk(folder: Path) -> set[str]:
    keys: set[str] = set()
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            keys.update(f.keys())
    return keys


@pytest.fixture
def saved(tmp_path) -> tuple[GPTLiteForCausalLM, Path]:
    model = tiny_model()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    return model, folder


def test_save_pretrained_writes_the_remote_code_file_set(saved):
    _, folder = saved
    assert {p.name for p in folder.iterdir()} == HUB_FILES

    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gptlite"
    assert config["architectures"] == ["GPTLiteForCausalLM"]
    assert config["auto_map"] == {
        "AutoConfig": "configuration_gptlite.GPTLiteConfig",
        "AutoModel": "modeling_gptlite.GPTLiteModel",
        "AutoModelForCausalLM": "modeling_gptlite.GPTLiteForCausalLM",
        "AutoModelForSequenceClassification": "modeling_gptlite.GPTLiteForSequenceClassification",
        "AutoModelForTokenClassification": "modeling_gptlite.GPTLiteForTokenClassification",
    }
    assert "fast_dropout" not in config  # a training setting, not the model's
    # The copies are the package's own files, byte for byte.
    for name in REMOTE_CODE:
        assert (folder / name).read_bytes() == (PACKAGE_DIR / name).read_bytes()


def test_the_remote_code_imports_only_torch_transformers_and_itself_and_touches_nothing_process_wide(saved):
    import ast

    _, folder = saved
    allowed = ("torch", "transformers", "__future__", "math", "os", "re", "functools", "inspect", "collections")
    for name in REMOTE_CODE:
        source = (folder / name).read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                roots = [] if node.level else [node.module.split(".")[0]]
            else:
                continue
            assert all(root in allowed for root in roots), (name, roots)
        # No private torch switches or kernels, and nothing registered with transformers at import.
        for forbidden in ("torch._C", "torch.ops", "torch.backends", ".register(", "register_for_auto_class"):
            assert forbidden not in source, (name, forbidden)

    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 50256
    assert generation["pad_token_id"] == generation["eos_token_id"]


def test_auto_classes_load_gptlite_without_trust_remote_code(saved):
    model, folder = saved
    assert type(AutoConfig.from_pretrained(folder)) is GPTLiteConfig

    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert type(loaded) is GPTLiteForCausalLM  # gptlite's class, not a transformers_modules copy
    assert not loaded.training
    assert loaded.generation_config.pad_token_id == 50256
    assert_same_weights(loaded, model)
    ids = torch.randint(0, 256, (2, 10))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_bf16_loading(saved, tmp_path):
    model, folder = saved
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert_same_weights(loaded, model)  # equal to the float32 weights rounded to bf16

    # A bf16 save records its dtype and reloads as bf16 by default (dtype="auto").
    bf16_folder = tmp_path / "bf16"
    loaded.save_pretrained(bf16_folder)
    assert json.loads((bf16_folder / "config.json").read_text())["dtype"] == "bfloat16"
    reloaded = GPTLiteForCausalLM.from_pretrained(bf16_folder)
    assert {p.dtype for p in reloaded.parameters()} == {torch.bfloat16}
    assert_same_weights(reloaded, loaded)
    ids = torch.randint(0, 256, (1, 8))
    assert reloaded(ids).logits.dtype == torch.bfloat16


def test_sharded_round_trip(tmp_path):
    model = tiny_model()
    folder = tmp_path / "sharded"
    model.save_pretrained(folder, max_shard_size="50KB")

    shards = sorted(p.name for p in folder.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3
    assert not (folder / "model.safetensors").exists()
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    in_files = {"lm_head.weight" if name == "out_head.weight" else name for name in model.state_dict()}
    assert set(index["weight_map"]) == in_files
    assert sorted(set(index["weight_map"].values())) == shards
    for shard in shards:
        assert (folder / shard).stat().st_size <= 50_000 + 4096  # tensors under the limit, plus the header

    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert_same_weights(loaded, model)


def test_the_untied_head_is_saved_as_lm_head_and_folders_that_call_it_out_head_still_load(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "new")
    names = set(load_file(tmp_path / "new" / "model.safetensors"))
    assert "lm_head.weight" in names and "out_head.weight" not in names  # the name vLLM and exporters look for
    assert "out_head.weight" in model.state_dict()  # inside, the book's name
    assert_same_weights(GPTLiteForCausalLM.from_pretrained(tmp_path / "new"), model)

    (tmp_path / "old").mkdir()  # a folder saved before: the head under the book's name
    (tmp_path / "old" / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
    save_file({name: t.contiguous() for name, t in model.state_dict().items()}, tmp_path / "old" / "model.safetensors",
              metadata={"format": "pt"})
    assert_same_weights(GPTLiteForCausalLM.from_pretrained(tmp_path / "old"), model)


def test_tied_round_trip(tmp_path):
    model = tiny_model(tie_word_embeddings=True)
    assert model.out_head.weight is model.model.tok_emb.weight
    folder = tmp_path / "tied"
    model.save_pretrained(folder)
    assert keys_on_disk(folder) == set(model.state_dict()) - {"out_head.weight"}

    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert loaded.out_head.weight is loaded.model.tok_emb.weight
    assert len({p.data_ptr() for p in loaded.parameters()}) == len(list(loaded.parameters()))
    assert_same_weights(loaded, model)


def test_untied_round_trip(tmp_path):
    model = tiny_model(tie_word_embeddings=False)
    assert not torch.equal(model.out_head.weight, model.model.tok_emb.weight)
    folder = tmp_path / "untied"
    model.save_pretrained(folder)
    assert {"model.tok_emb.weight", "lm_head.weight"} <= keys_on_disk(folder)

    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert loaded.out_head.weight is not loaded.model.tok_emb.weight
    assert loaded.out_head.weight.data_ptr() != loaded.model.tok_emb.weight.data_ptr()
    assert_same_weights(loaded, model)


@pytest.mark.parametrize("tied", [False, True])
def test_a_folder_saved_before_the_base_model_loads_with_the_same_logits(tmp_path, tied):
    # Until GPTLiteModel existed, the trunk's keys were at the top level (tok_emb.weight, trf_blocks.0...).
    model = tiny_model(tie_word_embeddings=tied)
    folder = tmp_path / "old"
    model.save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    save_file({k.removeprefix("model."): v for k, v in weights.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    assert "tok_emb.weight" in keys_on_disk(folder)
    loaded, info = GPTLiteForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert_same_weights(loaded, model)
    assert (loaded.out_head.weight is loaded.model.tok_emb.weight) == tied
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_gptlite_model_is_the_base_model_and_loads_from_a_causal_lm_folder(saved):
    from transformers import AutoModel

    model, folder = saved
    assert model.base_model is model.model and isinstance(model.model, GPTLiteModel)
    base = AutoModel.from_pretrained(folder)
    assert type(base) is GPTLiteModel
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        hidden = base(ids).last_hidden_state
        assert torch.equal(hidden, model.model(ids).last_hidden_state)
        assert torch.allclose(model.out_head(hidden), model(ids).logits)


# --- Safety ---------------------------------------------------------------------------------------------------


def _truncate_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _truncate_inside_header(data: bytes) -> bytes:
    return data[:20]


def _empty(data: bytes) -> bytes:
    return b""


def _garbage_header(data: bytes) -> bytes:
    header_len = int.from_bytes(data[:8], "little")
    return data[:8] + b"\xff" * header_len + data[8 + header_len :]


def _header_json_broken(data: bytes) -> bytes:
    return data[:8] + b"x" + data[9:]  # the header's opening brace


def _huge_header_length(data: bytes) -> bytes:
    return (10**12).to_bytes(8, "little") + data[8:]


def _dtype_does_not_match_offsets(data: bytes) -> bytes:
    # Valid JSON, wrong metadata: every float32 tensor claims twice the bytes it has.
    header_len = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + header_len].replace(b'"F32"', b'"F64"')
    return data[:8] + header + data[8 + header_len :]


CORRUPTIONS = [
    _truncate_half,
    _truncate_inside_header,
    _empty,
    _garbage_header,
    _header_json_broken,
    _huge_header_length,
    _dtype_does_not_match_offsets,
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_broken_safetensors_error_names_the_file(saved, corrupt):
    # gptlite's commands load through load_model, which names the file; from_pretrained is transformers' own.
    _, folder = saved
    path = folder / "model.safetensors"
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(InputFileError) as excinfo:
        load_model(folder, notice=lambda line: None)
    assert str(path) in str(excinfo.value)
    assert "safetensors" in str(excinfo.value)


def test_broken_shard_error_names_that_shard(tmp_path):
    folder = tmp_path / "sharded"
    tiny_model().save_pretrained(folder, max_shard_size="50KB")
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    broken = shards[len(shards) // 2]
    broken.write_bytes(_truncate_half(broken.read_bytes()))
    with pytest.raises(InputFileError) as excinfo:
        load_model(folder, notice=lambda line: None)
    message = str(excinfo.value)
    assert str(broken) in message
    assert all(str(shard) not in message for shard in shards if shard != broken)


def test_save_and_load_never_unpickle(saved, monkeypatch, tmp_path):
    _, folder = saved

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle while saving or loading a gptlite model")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    loaded.save_pretrained(tmp_path / "again")
    GPTLiteForCausalLM.from_pretrained(tmp_path / "again")


class _Payload:
    """A pickle that creates a directory when unpickled: stands in for code execution."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_pickled_weights_are_never_executed(saved, tmp_path):
    _, folder = saved
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "payload-ran"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker), protocol=2))

    # transformers' weights_only unpickler refuses the payload, and so does gptlite's loader, in one line.
    with pytest.raises(pickle.UnpicklingError, match="(?s)Weights only load failed.*mkdir"):
        AutoModelForCausalLM.from_pretrained(folder)
    with pytest.raises(InputFileError, match="pytorch_model.bin"):
        load_model(folder, notice=lambda line: None)
    assert not marker.exists()


def test_a_folder_saved_with_the_old_speed_settings_and_files_still_loads(saved, tmp_path):
    # Before the CPU speed-ups left the model, configs carried fast_dropout and six .py files travelled.
    model, folder = saved
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "fast_dropout": True}))
    for old in ("fast_cpu.py", "cpu_kernels.py", "decode_linear.py"):
        (folder / old).write_text("raise ImportError('never imported: the model no longer needs it')\n")
    for load in (AutoModelForCausalLM.from_pretrained, lambda f: load_model(f, notice=lambda line: None)):
        loaded = load(folder)
        assert_same_weights(loaded, model)
        assert not hasattr(loaded.config, "fast_dropout")
    loaded.save_pretrained(tmp_path / "again")
    assert "fast_dropout" not in json.loads((tmp_path / "again" / "config.json").read_text())
    assert {p.name for p in (tmp_path / "again").glob("*.py")} == REMOTE_CODE
