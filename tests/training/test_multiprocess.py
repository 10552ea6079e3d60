"""Two real CPU processes (``accelerate launch --multi_gpu``) train exactly like one process with --grad-accum 2."""

from __future__ import annotations

import sys

import pytest

from gptlite.training.checkpointing import list_checkpoints, load_trainer_state
from gptlite.training.loop import train
from tests.training.conftest import (
    config_flags,
    free_port,
    max_abs_difference,
    run,
    subprocess_env,
    tiny_config,
    weights,
    write_corpus,
)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def two_processes(*train_flags: str) -> list[str]:
    """`accelerate launch` of gptlite-train with `train_flags` in two CPU processes on this machine."""
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        # --multi_gpu on a machine without GPUs: two CPU processes in a gloo group (--cpu would start one).
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "-m", "gptlite.training", *train_flags,
    ]  # fmt: skip


@pytest.mark.slow
def test_two_processes_equal_one_process_with_accumulation(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", n_words=900)
    # Two epochs of 6 optimizer steps: crosses an epoch end (sample on the main process only, epoch checkpoint).
    settings = {"batch_size": 2, "epochs": 2, "eval_freq": 4, "eval_iter": 4, "drop_rate": 0.0}
    two = tiny_config(tmp_path / "two", corpus, grad_accum=1, **settings)
    done = run(two_processes(*config_flags(two)), subprocess_env(tmp_path), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    one = train(tiny_config(tmp_path / "one", corpus, grad_accum=2, **settings))

    last = list_checkpoints(tmp_path / "two" / "run")[-1]
    state = load_trainer_state(last)
    assert state.num_processes == 2  # two processes ran, each wrote its RNG states
    assert (last / "random_states_0.pkl").is_file() and (last / "random_states_1.pkl").is_file()
    assert state.global_step == one.global_step == 2 * state.steps_per_epoch

    history = state.history
    for key in ("step_loss", "train_loss", "val_loss"):
        assert history[key] == pytest.approx(getattr(one.history, key), abs=1e-4), key
    assert history["tokens_seen"] == one.history.tokens_seen and history["lr"] == pytest.approx(one.history.lr)
    diff = max_abs_difference(weights(tmp_path / "two" / "run"), weights(tmp_path / "one" / "run"))
    assert diff < 1e-4, diff


@pytest.mark.slow
def test_a_gpt2_init_from_is_announced_once_not_once_per_process(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_positions=32, n_embd=32, n_layer=2, n_head=2)).save_pretrained(tmp_path / "gpt2")
    corpus = write_corpus(tmp_path / "corpus.txt", n_words=600)
    flags = [
        "--init-from", str(tmp_path / "gpt2"), "--data", str(corpus), "--cache-dir", str(tmp_path / "cache"),
        "--output-dir", str(tmp_path / "run"), "--max-steps", "1", "--batch-size", "2", "--context-length", "16",
        "--eval-freq", "1", "--eval-iter", "1",
    ]  # fmt: skip
    done = run(two_processes(*flags), subprocess_env(tmp_path), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # Both processes load the model; only the main one says that it converted a GPT-2 folder.
    assert done.stderr.count("is a GPT-2 folder (model_type gpt2): converted to gptlite in memory") == 1
    assert (tmp_path / "run" / "model.safetensors").is_file()
