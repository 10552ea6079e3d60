"""``gptlite-train --push-to-hub REPO``: the saved run's model, tokenizer and card go to the Hub, faked at
huggingface_hub's boundary as in tests/test_hub.py (the ``hub`` fixture); offline, one line, exit 1, and the run
kept; resuming the finished run with the flag pushes it then."""

from __future__ import annotations

import json
import socket

import pytest
import torch
import yaml
from safetensors.torch import load

from gptlite.training.cli import main
from tests.conftest import run_in_process
from tests.training.conftest import (
    config_flags,
    tiny_config,
    weights,
)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

REPO_ID = "someone/tiny-run"


@pytest.fixture(scope="module")
def corpus_words():
    return 1200


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    return run_in_process(capsys, main, *argv)


def assert_pushed(hub, out) -> None:
    """One commit holding the run's saved weights, the tokenizer, and a card with the run's final validation loss."""
    assert [c["repo_id"] for c in hub.commits] == [REPO_ID]
    expected = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"}
    assert expected <= hub.files.keys()
    pushed, saved = load(hub.files["model.safetensors"]), weights(out)
    assert pushed.keys() == saved.keys() and all(torch.equal(pushed[k], saved[k]) for k in saved)
    meta = yaml.safe_load(hub.readme().split("---\n")[1])
    losses = {m["name"]: m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    val_loss = json.loads((out / "history.json").read_text())["val_loss"][-1]
    assert losses["Validation loss"] == round(val_loss, 4)


def test_a_run_pushes_its_saved_model_tokenizer_and_card(tmp_path, corpus, hub, capsys):
    config = tiny_config(tmp_path, corpus, max_steps=2, push_to_hub=REPO_ID)
    code, printed, err = cli(capsys, *config_flags(config))
    assert code == 0, err[-2000:]
    out = tmp_path / "run"
    assert_pushed(hub, out)
    assert f"Pushed the model, tokenizer and model card of {out} to {REPO_ID}: https://huggingface.co/" in printed
    assert "Writing model shards" not in err and "Loading weights" not in err  # transformers' own bars


def test_offline_the_push_is_one_line_the_run_is_kept_and_resuming_it_pushes(tmp_path, corpus, capsys, monkeypatch,
                                                                              request):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    config = tiny_config(tmp_path, corpus, max_steps=2, push_to_hub=REPO_ID)
    code, _, err = cli(capsys, *config_flags(config))
    out = tmp_path / "run"
    [line] = [line for line in err.splitlines() if "gptlite-train" in line]
    assert code == 1
    assert line.startswith(f"gptlite-train: error: --push-to-hub {REPO_ID}: Cannot reach https://huggingface.co/")
    assert "offline mode is enabled" in line
    assert line.endswith(f"; the run is saved in {out}: push it with gptlite-train --resume-from latest "
                         f"--output-dir {out} --push-to-hub {REPO_ID}")
    assert (out / "model.safetensors").is_file() and not (out / "run.lock").exists()

    monkeypatch.undo()
    hub = request.getfixturevalue("hub")  # back online: the command the line gives pushes the saved run
    code, printed, err = cli(capsys, "--resume-from", "latest", "--output-dir", str(out), "--push-to-hub", REPO_ID)
    assert code == 0 and "holds a finished run" not in printed, err[-2000:]
    assert_pushed(hub, out)


def test_a_bad_repository_id_is_refused_before_training(capsys):
    code, _, err = cli(capsys, "--push-to-hub", "not a repo", "--print-config")
    assert code == 2 and "gptlite-train: error: --push-to-hub 'not a repo' is not a Hub repository id" in err
