"""What a finished run leaves in its folder (gptlite.training.outputs)."""

from __future__ import annotations

import sys

import pytest

from gptlite.training.loop import train
from tests.training.conftest import tiny_config, write_corpus

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def test_without_matplotlib_the_run_saves_its_model_and_says_the_figures_are_left_out(tmp_path, monkeypatch, capsys):
    corpus = write_corpus(tmp_path / "corpus.txt", n_words=600)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    result = train(tiny_config(tmp_path, corpus, max_steps=3))
    files = {path.name for path in result.output_dir.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "history.json", "train_config.json"} <= files
    assert not {"loss.png", "lr.png"} & files
    out = capsys.readouterr().out
    assert out.count("Not drawing loss.png and lr.png") == 1
    assert "Saved the model, tokenizer and history.json in" in out
