"""Checks before the first token: an output folder or parent that cannot be written, a tracker that is not installed
and an --init-from model whose vocabulary is not GPT-2's are refused in one line before any work is done; data too
short for one window names its files."""

from __future__ import annotations

import importlib.util
import subprocess
from contextlib import contextmanager

import pytest

from gptlite.training.cli import eval_main, main
from tests.conftest import run_in_process
from tests.training.conftest import (
    config_flags,
    tiny_config,
    write_corpus,
)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def exit_of(capsys, command, argv) -> tuple[int, str]:
    """(exit status, stderr) of an in-process command, asserting that no traceback was printed."""
    code, _, err = run_in_process(capsys, command, *argv)
    return code, err


def last_line(err: str) -> str:
    """The error line, which must be the last thing printed (no progress bar redrawn after it)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and ": error: " in lines[-1], err
    return lines[-1]


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "corpus.txt", n_words=1200)


@contextmanager
def immutable(folder):
    """``folder`` with the immutable attribute: nothing can be created in it, not even by root."""
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.parametrize("which", ["parent", "folder"])
def test_an_output_dir_that_cannot_be_written_is_refused_before_the_first_token(tmp_path, corpus, capsys, which):
    parent = tmp_path / "parent"
    (parent / "run").mkdir(parents=True)
    config = tiny_config(tmp_path, corpus, output_dir=str(parent / "run"), max_steps=2)
    with immutable(parent if which == "parent" else parent / "run") as locked:
        code, err = exit_of(capsys, main, config_flags(config))
    line = last_line(err)
    assert code == 1 and f"--output-dir {parent / 'run'}: cannot write in {locked} (Operation not permitted" in line
    assert not (tmp_path / "token-cache").exists()  # refused before the data was read
    assert not list((parent / "run").iterdir())


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_tracker_that_is_not_installed_is_refused(tmp_path, corpus, capsys):
    config = tiny_config(tmp_path, corpus, report_to=["tensorboard", "wandb"], max_steps=2)
    code, err = exit_of(capsys, main, config_flags(config))
    assert code == 2 and "--report-to wandb: not installed (pip install wandb)" in last_line(err)
    assert not (tmp_path / "run").exists() and not (tmp_path / "token-cache").exists()


@pytest.fixture
def small_vocabulary_model(tmp_path):
    from gptlite import GPTLiteConfig, GPTLiteForCausalLM

    config = GPTLiteConfig(vocab_size=1000, context_length=32, emb_dim=32, n_heads=2, n_layers=2)
    GPTLiteForCausalLM(config).save_pretrained(tmp_path / "vocab-1000")
    return tmp_path / "vocab-1000"


def test_init_from_a_model_without_gpt2s_vocabulary_is_refused_naming_it(tmp_path, corpus, capsys,
                                                                         small_vocabulary_model):
    config = tiny_config(tmp_path, corpus, max_steps=2, init_from=str(small_vocabulary_model))  # sizes that agree
    code, err = exit_of(capsys, main, config_flags(config))
    line = last_line(err)
    assert code == 2 and f"--init-from {small_vocabulary_model} has a vocabulary of 1000 tokens" in line
    assert "GPT-2's 50257" in line and not (tmp_path / "token-cache").exists()
    code, err = exit_of(capsys, eval_main, [str(small_vocabulary_model), "--data", str(corpus)])
    assert code == 2 and f"the model {small_vocabulary_model} has a vocabulary of 1000 tokens" in last_line(err)


# -- the culprit named: data too short for one window names its file, and says which is empty --------------------


@pytest.mark.parametrize("layout", ["one empty file", "a folder with an empty file"])
def test_data_too_short_for_a_window_names_the_files(tmp_path, capsys, layout):
    if layout == "one empty file":
        data, empty = tmp_path / "empty.txt", tmp_path / "empty.txt"
        data.write_text("")
        named = f"(the training data: {empty} (an empty file))"
    else:
        data = tmp_path / "docs"
        data.mkdir()
        empty = data / "b.txt"
        (data / "a.txt").write_text("a few words")
        empty.write_text("")
        named = f"(the training data: 2 files ({data / 'a.txt'}, ...), of which {empty} is empty)"
    code, err = exit_of(capsys, main, config_flags(tiny_config(tmp_path, data, max_steps=1)))
    assert code == 2 and "training split has" in last_line(err) and named in last_line(err)
