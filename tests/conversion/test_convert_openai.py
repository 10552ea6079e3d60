"""from_openai: the TensorFlow-written fixture -> gptlite, against a transformers GPT-2 built from the same
arrays (saved as .npz by scripts/make_tf_fixture.py), and downloads with a fake network."""

from __future__ import annotations

import io
import json
import shutil
import urllib.error

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gptlite import GPTLiteForCausalLM
from gptlite import downloads as network
from gptlite.conversion import ConversionError, DownloadError, from_openai
from gptlite.conversion import download as download_module
from tests.conversion.conftest import ATOL, OPENAI_TINY, greedy, max_diff, tokens

HPARAMS = json.loads((OPENAI_TINY / "hparams.json").read_text())


def gpt2_from_arrays() -> GPT2LMHeadModel:
    """transformers' GPT-2 loaded the way its old `load_tf_weights_in_gpt2` did, written out by hand."""
    arrays = dict(np.load(OPENAI_TINY.with_suffix(".npz")))
    config = GPT2Config(vocab_size=HPARAMS["n_vocab"], n_positions=HPARAMS["n_ctx"], n_embd=HPARAMS["n_embd"],
                        n_head=HPARAMS["n_head"], n_layer=HPARAMS["n_layer"], bos_token_id=0, eos_token_id=0)
    state = {
        "transformer.wte.weight": arrays["model/wte"], "transformer.wpe.weight": arrays["model/wpe"],
        "transformer.ln_f.weight": arrays["model/ln_f/g"], "transformer.ln_f.bias": arrays["model/ln_f/b"],
    }
    modules = {"ln_1": "ln_1", "ln_2": "ln_2", "attn.c_attn": "attn/c_attn", "attn.c_proj": "attn/c_proj",
               "mlp.c_fc": "mlp/c_fc", "mlp.c_proj": "mlp/c_proj"}
    for i in range(config.n_layer):
        for ours, theirs in modules.items():
            weight = arrays[f"model/h{i}/{theirs}/{'g' if ours.startswith('ln') else 'w'}"]
            state[f"transformer.h.{i}.{ours}.weight"] = weight[0] if weight.ndim == 3 else weight  # (in, out)
            state[f"transformer.h.{i}.{ours}.bias"] = arrays[f"model/h{i}/{theirs}/b"]
    model = GPT2LMHeadModel(config)
    state = {name: torch.from_numpy(value) for name, value in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert missing == ["lm_head.weight"] and not unexpected  # tied to wte
    return model.eval()


def test_fixture_converts_to_the_same_logits(tmp_path):
    assert not (OPENAI_TINY / "encoder.json").exists()  # gptlite's own BPE files are used
    result = from_openai(OPENAI_TINY, tmp_path / "lite", verify=True)
    model = GPTLiteForCausalLM.from_pretrained(tmp_path / "lite")
    reference = gpt2_from_arrays()

    assert model.config.tie_word_embeddings and model.config.context_length == HPARAMS["n_ctx"]
    ids = tokens(HPARAMS["n_vocab"])
    assert max_diff(reference, model, ids) <= ATOL
    assert result.max_logit_diff <= ATOL
    prompt = ids[:1, :3]
    new = HPARAMS["n_ctx"] - 3
    assert torch.equal(greedy(reference, prompt, new), greedy(model, prompt, new))
    assert (tmp_path / "lite" / "tokenizer.json").is_file()


def test_bfloat16(tmp_path):
    result = from_openai(OPENAI_TINY, tmp_path / "lite", dtype="bfloat16")
    assert result.dtype == torch.bfloat16
    assert GPTLiteForCausalLM.from_pretrained(tmp_path / "lite").dtype == torch.bfloat16


@pytest.fixture
def fixture_copy(tmp_path):
    folder = tmp_path / "openai"
    shutil.copytree(OPENAI_TINY, folder)
    return folder


def flip_byte(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_corrupted_tensor_fails_its_crc(fixture_copy, tmp_path):
    data = fixture_copy / "model.ckpt.data-00000-of-00001"
    flip_byte(data, data.stat().st_size // 2)
    with pytest.raises(ConversionError, match=r"data-00000-of-00001: CRC-32C mismatch for tensor 'model/"):
        from_openai(fixture_copy, tmp_path / "lite")
    assert not (tmp_path / "lite" / "model.safetensors").exists()


def test_corrupted_index_fails_its_crc(fixture_copy, tmp_path):
    flip_byte(fixture_copy / "model.ckpt.index", 20)
    with pytest.raises(ConversionError, match=r"ckpt\.index: CRC-32C mismatch in the block at offset 0"):
        from_openai(fixture_copy, tmp_path / "lite")


def test_truncated_data_file(fixture_copy, tmp_path):
    data = fixture_copy / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(ConversionError, match="the file ends first"):
        from_openai(fixture_copy, tmp_path / "lite")


def test_hparams_that_do_not_match_the_variables(fixture_copy, tmp_path):
    hparams = fixture_copy / "hparams.json"
    hparams.write_text(json.dumps({**HPARAMS, "n_layer": 3}))
    with pytest.raises(ConversionError, match=r"tensor model/h2/ln_1/g is missing"):
        from_openai(fixture_copy, tmp_path / "lite")
    hparams.write_text(json.dumps({**HPARAMS, "n_vocab": 50257}))
    with pytest.raises(ConversionError, match=r"tensor model/wte has shape \[80, 16\].*needs \[50257, 16\]"):
        from_openai(fixture_copy, tmp_path / "lite")


def test_not_a_checkpoint(fixture_copy, tmp_path):
    (fixture_copy / "model.ckpt.index").write_bytes(b"\0" * 100)
    with pytest.raises(ConversionError, match="bad table magic number"):
        from_openai(fixture_copy, tmp_path / "lite")
    (fixture_copy / "hparams.json").unlink()
    with pytest.raises(FileNotFoundError, match="hparams.json"):
        from_openai(fixture_copy, tmp_path / "lite")


def test_agrees_with_tensorflow():
    tf = pytest.importorskip("tensorflow")
    from gptlite.conversion import TensorBundle

    reader = tf.train.load_checkpoint(str(OPENAI_TINY))
    bundle = TensorBundle.from_directory(OPENAI_TINY)
    assert set(bundle.keys()) == set(reader.get_variable_to_shape_map())
    for name in bundle.keys():
        np.testing.assert_array_equal(bundle.read(name), reader.get_tensor(name), err_msg=name)


# --- downloads, with the network replaced by files served from the fixture -------------------------------

class FakeBlobServer:
    """Serves the fixture's files as if they were OpenAI's 124M release, honouring HEAD and Range."""

    def __init__(self, short_by: int = 0):
        self.requests = []
        self.short_by = short_by  # send fewer bytes than announced, like a dropped connection

    def __call__(self, request, timeout):
        name = request.full_url.rsplit("/", 1)[1]
        assert request.full_url == f"{download_module.OPENAI_URL}/124M/{name}"
        data = (OPENAI_TINY / name).read_bytes()
        self.requests.append((request.get_method(), name, request.get_header("Range")))
        response = io.BytesIO(b"" if request.get_method() == "HEAD" else data[: len(data) - self.short_by])
        response.headers = {"Content-Length": str(len(data))}
        response.status = 200
        if request.get_header("Range"):
            start = int(request.get_header("Range").removeprefix("bytes=").rstrip("-"))
            response = io.BytesIO(data[start:])
            response.headers, response.status = {"Content-Length": str(len(data) - start)}, 206
        return response


def test_download_resumes_and_converts(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    server = FakeBlobServer()
    monkeypatch.setattr(network, "_urlopen", server)
    folder = tmp_path / "cache" / "openai-gpt2" / "124M"
    folder.mkdir(parents=True)
    index = (OPENAI_TINY / "model.ckpt.index").read_bytes()
    (folder / "model.ckpt.index.part").write_bytes(index[:300])  # an interrupted earlier download

    from_openai("124M", tmp_path / "lite", cache_dir=tmp_path / "cache")

    assert ("GET", "model.ckpt.index", "bytes=300-") in server.requests
    assert not (folder / "model.ckpt.meta").exists()  # TensorFlow's graph is not needed
    for name in download_module.OPENAI_FILES:
        assert (folder / name).read_bytes() == (OPENAI_TINY / name).read_bytes()
    assert GPTLiteForCausalLM.from_pretrained(tmp_path / "lite").config.vocab_size == HPARAMS["n_vocab"]

    # A second run finds complete files: only size checks, no downloads.
    server.requests.clear()
    from_openai("124M", tmp_path / "lite2", cache_dir=tmp_path / "cache")
    assert {method for method, _, _ in server.requests} == {"HEAD"}


def test_download_size_mismatch_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(network, "_urlopen", FakeBlobServer(short_by=10))
    with pytest.raises(DownloadError, match=r"checkpoint: downloaded \d+ bytes, expected \d+; run again"):
        from_openai("124M", tmp_path / "lite", cache_dir=tmp_path / "cache")


def test_offline_fails_at_once_without_touching_the_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(network, "_urlopen", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE is set"):
        from_openai("124M", tmp_path / "lite", cache_dir=tmp_path / "cache")

    # With a complete cached copy, offline conversion works.
    shutil.copytree(OPENAI_TINY, tmp_path / "cache" / "openai-gpt2" / "124M")
    from_openai("124M", tmp_path / "lite", cache_dir=tmp_path / "cache")


def test_unreachable_network_fails_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def unreachable(*args, **kwargs):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(network, "_urlopen", unreachable)
    with pytest.raises(DownloadError, match="cannot fetch OpenAI's GPT-2 124M .*Network is unreachable"):
        from_openai("124M", tmp_path / "lite", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # no empty cache folders left behind


def test_unknown_size_or_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nor one of OpenAI's sizes"):
        from_openai("125M", tmp_path / "lite")
