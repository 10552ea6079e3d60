"""The main job's path: ``gptlite-train`` with the default recipe on the built-in corpus, then ``gptlite-generate``."""

from __future__ import annotations

import json
import re

import pytest

from gptlite.training.recipes import build_config
from tests.training.conftest import run, subprocess_env, train_command


def test_default_settings_train_a_small_model_on_the_built_in_corpus():
    config = build_config()
    assert config.data.data == [] and config.data.dataset is None  # pydoc_data.topics: no download
    assert config.run.output_dir == "runs/default" and config.optim.max_steps is None
    model = config.model_config()
    assert model.vocab_size == 50257 and model.emb_dim * model.n_layers <= 2048  # small enough for 2 CPU cores


def words_after(prompt: str, text: str) -> list[str]:
    assert text.startswith(prompt), text
    return re.findall(r"[A-Za-z]{2,}", text[len(prompt):])


@pytest.mark.slow
@pytest.mark.all_cores
def test_the_main_job_samples_and_its_follow_up_show_words(tmp_path):
    """The whole main job (about 2 minutes on an idle 2-core machine), written under tmp_path: the default settings
    on the built-in corpus, then the greedy sample after each epoch and the first screen's follow-up,
    gptlite-generate runs/default --prompt "The for statement", print words. Trained on pydoc's layout, they
    printed the prompt and then blank lines."""
    out, env = tmp_path / "run", subprocess_env(tmp_path)
    env.pop("OMP_NUM_THREADS")  # as a user runs it: every core
    done = run(train_command("--output-dir", str(out), "--cache-dir", str(tmp_path / "cache")), env, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Ep 1 (Step 000000): Train loss" in done.stdout and "tokens/s" in done.stdout
    saved = json.loads((out / "train_config.json").read_text())
    assert {saved.pop("output_dir"), saved.pop("cache_dir")} == {str(out), str(tmp_path / "cache")}
    assert saved.items() <= build_config().to_dict().items()
    history = json.loads((out / "history.json").read_text())
    assert history["dataset"] == "the built-in corpus (pydoc_data.topics)"
    samples = [line for line in done.stdout.splitlines() if line.startswith("The for statement")]
    generated = run(["gptlite-generate", str(out), "--prompt", "The for statement"], env)
    assert generated.returncode == 0, generated.stderr[-2000:]
    assert len(samples) == 3
    for text in [*samples, generated.stdout]:
        assert len(words_after("The for statement", text)) >= 10, text
