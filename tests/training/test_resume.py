"""Resuming by the folder alone: ``gptlite-train --resume-from latest --output-dir DIR`` takes every setting from
the run (run.json); contradicting flags are refused by name; a finished run says so; a longer run extends it."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from gptlite.training.checkpointing import latest_checkpoint, load_trainer_state
from gptlite.training.cli import main
from gptlite.training.monitoring import Progress
from gptlite.training.run_folder import read_run_record
from tests.conftest import run_in_process
from tests.training.conftest import (
    config_flags,
    tiny_config,
    tree_hashes,
    weights,
)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state", "terminal_signal_handlers")

# Every size away from the defaults and from tiny_config's, so that a resume falling back to either shows.
SIZES = {"emb_dim": 36, "n_layers": 3, "n_heads": 3, "context_length": 24, "batch_size": 3, "grad_accum": 2,
         "drop_rate": 0.1, "seed": 5, "epochs": 2, "eval_freq": 4, "eval_iter": 1, "peak_lr": 4e-3,
         "warmup_steps": 3, "keep_checkpoints": 1}


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    return run_in_process(capsys, main, *argv)


def gptlite_lines(text: str) -> list[str]:
    return [line[line.index("gptlite-train:"):] for line in text.splitlines() if "gptlite-train:" in line]


@pytest.fixture(scope="module")
def corpus_words():
    return 1500


@pytest.fixture(scope="module")
def uninterrupted_settings():
    return SIZES


@pytest.fixture(scope="module")
def finished_run(uninterrupted):
    """The folder of the run with SIZES, trained to its end in one go."""
    return uninterrupted[2] / "run"


def test_a_run_stopped_mid_way_resumes_from_its_folder_alone_bit_identically(tmp_path, corpus, finished_run,
                                                                              capsys, monkeypatch):
    end_step = Progress.end_step

    def sigterm_during_step_7(self, global_step, *args, **kwargs):
        if global_step == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        end_step(self, global_step, *args, **kwargs)

    monkeypatch.setattr(Progress, "end_step", sigterm_during_step_7)
    code, _, err = cli(capsys, *config_flags(tiny_config(tmp_path, corpus, **SIZES)))
    monkeypatch.undo()
    out = tmp_path / "run"
    assert code == 143 and latest_checkpoint(out).name == "checkpoint-7"
    assert gptlite_lines(err)[0].endswith(f"continue with: gptlite-train --resume-from latest --output-dir {out}")

    code, printed, err = cli(capsys, "--resume-from", "latest", "--output-dir", str(out))
    assert code == 0, err[-2000:]
    assert f"Resumed from {out}/checkpoints/checkpoint-7 at optimizer step 7 of " in printed
    reference, resumed = weights(finished_run), weights(out)
    assert reference.keys() == resumed.keys() and all(torch.equal(reference[k], resumed[k]) for k in reference)
    assert history(out) == history(finished_run)


def history(folder: Path) -> dict:
    return json.loads((folder / "history.json").read_text(encoding="utf-8"))


def test_resuming_a_finished_run_says_so_in_one_line_and_changes_nothing(finished_run, capsys):
    before = tree_hashes(finished_run)
    total = load_trainer_state(latest_checkpoint(finished_run)).global_step
    code, printed, err = cli(capsys, "--resume-from", "latest", "--output-dir", str(finished_run))
    assert code == 0 and err == ""
    assert printed == (f"gptlite-train: {finished_run} holds a finished run (--epochs 2: {total} of {total} optimizer "
                       f"steps done, its model saved); to train it further, resume with a larger --epochs or a "
                       f"--max-steps above {total}\n")
    assert tree_hashes(finished_run) == before


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["--emb-dim", "64"], "--emb-dim 64 contradicts the run being resumed, which has emb_dim 36 ({record})"),
        (["--qkv-bias"], "--qkv-bias contradicts the run being resumed, which has qkv_bias False ({record})"),
        (["--recipe", "book-ch5"], "--recipe book-ch5 (emb_dim 768) contradicts the run being resumed, which has "
                                   "emb_dim 36 ({record})"),
        (["--config", "{tmp}/seed.yaml"], "seed 9 in --config file {tmp}/seed.yaml contradicts the run being "
                                          "resumed, which has seed 5 ({record})"),
    ],
    ids=["flag", "bool-flag", "recipe", "config-file"],
)
def test_a_setting_that_contradicts_the_resumed_run_is_refused_by_name(finished_run, tmp_path, capsys, given,
                                                                       message):
    (tmp_path / "seed.yaml").write_text("seed: 9\neval_freq: 2\n")
    before = tree_hashes(finished_run)
    argv = [arg.format(tmp=tmp_path) for arg in given]
    code, _, err = cli(capsys, "--resume-from", "latest", "--output-dir", str(finished_run), *argv)
    [line] = gptlite_lines(err)
    assert code == 2 and message.format(tmp=tmp_path, record=finished_run / "run.json") in line
    assert "may change only --epochs, --max-steps, --eval-freq" in line
    assert tree_hashes(finished_run) == before


def test_flags_that_repeat_the_run_or_are_safe_to_change_are_accepted(finished_run, capsys):
    argv = ["--resume-from", "latest", "--output-dir", str(finished_run), "--emb-dim", "36", "--no-qkv-bias",
            "--seed", "5", "--eval-freq", "2", "--keep-checkpoints", "3", "--sample-tokens", "4"]
    code, printed, err = cli(capsys, *argv, "--print-config")
    settings = json.loads(printed)
    assert code == 0 and (settings["n_layers"], settings["batch_size"], settings["grad_accum"]) == (3, 3, 2)
    assert (settings["eval_freq"], settings["keep_checkpoints"], settings["resume_from"]) == (2, 3, "latest")
    code, printed, _ = cli(capsys, *argv)
    assert code == 0 and "holds a finished run" in printed


def test_a_larger_epochs_extends_the_run_at_its_last_learning_rate(finished_run, tmp_path, capsys):
    moved = tmp_path / "moved"  # a copied folder resumes too: --output-dir is the one place that names it
    shutil.copytree(finished_run, moved)
    done = load_trainer_state(latest_checkpoint(moved))
    code, printed, err = cli(capsys, "--resume-from", "latest", "--output-dir", str(moved), "--epochs", "3")
    assert code == 0, err[-2000:]
    lr, total = history(moved)["lr"], 3 * done.steps_per_epoch
    assert len(lr) == total and lr[: done.global_step] == history(finished_run)["lr"]
    assert lr[done.global_step:] == pytest.approx([1e-5] * (total - done.global_step))  # the cosine's floor
    assert read_run_record(moved)["settings"]["epochs"] == 3  # the next resume by the folder alone keeps it
    code, printed, _ = cli(capsys, "--resume-from", "latest", "--output-dir", str(moved))
    assert code == 0 and f"(--epochs 3: {total} of {total} optimizer steps done, its model saved)" in printed

    code, _, err = cli(capsys, "--resume-from", "latest", "--output-dir", str(moved), "--max-steps", "3")
    [line] = gptlite_lines(err)
    assert code == 2 and line == (f"gptlite-train: error: --max-steps 3 makes 3 optimizer steps, fewer than the "
                                  f"{total} that {moved}/checkpoints/checkpoint-{total} has done; give at least as "
                                  "many to resume it")
