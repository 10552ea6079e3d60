"""Every gptlite reader takes the weights file transformers' from_pretrained takes: a single file over an index,
an index only when there is no single file, safetensors over pickles; a folder with several says which it read."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import GPT2LMHeadModel

from gptlite.conversion import from_hf
from gptlite.conversion.cli import main as convert_main
from gptlite.conversion.storage import weights_files
from gptlite.loading import load_model
from tests.conversion.conftest import max_diff, tiny_gpt2, tokens


def save_bin(model: GPT2LMHeadModel, folder, shards: int = 1) -> None:
    """The model as pickled weights, as transformers 4 wrote them: pytorch_model.bin, or shards and their index."""
    model.config.save_pretrained(folder)
    state = {name: tensor for name, tensor in model.state_dict().items() if name != "lm_head.weight"}  # tied
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return
    names, weight_map = sorted(state), {}
    for i in range(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = names[i::shards]
        torch.save({name: state[name] for name in part}, folder / file)
        weight_map |= dict.fromkeys(part, file)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def stale_layout(tmp_path, layout: str):
    """A GPT-2 folder whose current weights (model `new`) sit beside an older model's other weights files."""
    old, new = tiny_gpt2(), tiny_gpt2()
    with torch.no_grad():
        for param in new.parameters():
            param.mul_(-1.5)  # another model of the same shape
    folder = tmp_path / "gpt2"
    if layout == "pytorch_model.bin.index.json":  # only pickled shards: what transformers reads then
        save_bin(new, folder, shards=3)
        return folder, new
    old.save_pretrained(folder, max_shard_size="20KB")  # shards + model.safetensors.index.json
    if layout == "stale index":  # a re-save over it: its index is left, its shards are gone
        for shard in folder.glob("model-*.safetensors"):
            shard.unlink()
    if layout == "pytorch_model.bin":  # safetensors over pickles: the old model as .bin beside the new one
        shutil.rmtree(folder)
        save_bin(old, folder)
    new.save_pretrained(tmp_path / "new")
    shutil.copy(tmp_path / "new" / "model.safetensors", folder / "model.safetensors")
    return folder, new


@pytest.mark.parametrize("layout", ["shards", "stale index", "pytorch_model.bin", "pytorch_model.bin.index.json"])
def test_readers_take_the_file_transformers_takes(tmp_path, capsys, layout):
    folder, new = stale_layout(tmp_path, layout)
    reference = GPT2LMHeadModel.from_pretrained(folder).eval()
    ids = tokens(100)
    assert max_diff(reference, new, ids) < 1e-6  # transformers reads the new model
    expected = "pytorch_model.bin.index.json" if layout == "pytorch_model.bin.index.json" else "model.safetensors"
    assert weights_files(folder)[0].name == expected

    lines = []
    assert max_diff(load_model(folder, notice=lines.append), reference, ids) < 1e-5  # generate, eval, --init-from
    code = convert_main(["from-hf", str(folder), str(tmp_path / "lite"), "--verify"])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err, err
    if layout != "pytorch_model.bin.index.json":  # several weights files: one line names the one read
        notice = f"{folder} holds model.safetensors, "
        assert any(line.startswith(notice) and line.endswith("reading model.safetensors, as transformers' "
                                                             "from_pretrained does") for line in lines), lines
        assert sum(line.startswith(notice) for line in err.splitlines()) == 1, err
    assert max_diff(load_model(tmp_path / "lite"), reference, ids) < 1e-5


def test_verify_names_both_files_when_the_sources_disagree(tmp_path, monkeypatch):
    import gptlite.conversion.storage as storage

    folder, _ = stale_layout(tmp_path, "shards")
    # A reader that still put the index first (gptlite did) converts the old shards; transformers loads the new file.
    monkeypatch.setattr(storage, "WEIGHTS_FILES", ("model.safetensors.index.json", "model.safetensors"))
    with pytest.raises(Exception) as failure:
        from_hf(folder, tmp_path / "lite", verify=True)
    message = str(failure.value)
    assert f"the conversion read {folder / 'model.safetensors.index.json'} but transformers reads " \
           f"{folder / 'model.safetensors'}" in message and not (tmp_path / "lite").exists()
