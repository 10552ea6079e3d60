"""Checkpoints: atomic writes, pruning, ``latest``, and resuming after SIGKILL or a crash inside a save."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from gptlite.training.checkpointing import (
    TRAINER_STATE_NAME,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
    prune_checkpoints,
    remove_partial_checkpoints,
    resolve_resume,
)
from gptlite.training.cli import main
from gptlite.training.loop import train
from tests.conftest import run_in_process
from tests.training.conftest import (
    config_flags,
    max_abs_difference,
    subprocess_env,
    tiny_config,
    train_command,
    tree_hashes,
    weights,
    write_corpus,
)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

# Dropout on and checkpoints every 2 steps of 18-step epochs: a kill lands inside an epoch.
SETTINGS = {"epochs": 2, "drop_rate": 0.1, "checkpoint_every": 2, "keep_checkpoints": 3, "eval_freq": 5}


@pytest.fixture(scope="module")
def uninterrupted_settings():
    return SETTINGS


def fake_checkpoint(root, name, complete=True):
    path = root / "checkpoints" / name
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"")
    if complete:
        (path / TRAINER_STATE_NAME).write_text("{}")
    return path


def test_a_resume_may_lengthen_the_run_but_not_end_it_before_the_steps_done(tmp_path):
    from gptlite.training.checkpointing import TrainerState, check_resumable

    same = {"config": {"batch_size": 4, "seed": 1, "grad_accum": 1}, "architecture": {"emb_dim": 8}}
    saved = TrainerState(global_step=12, steps_per_epoch=6, total_steps=12, **same)
    check_resumable(saved, TrainerState(steps_per_epoch=6, total_steps=18, **same), tmp_path)  # --epochs 3
    check_resumable(saved, TrainerState(steps_per_epoch=6, total_steps=12, **same), tmp_path)
    with pytest.raises(ValueError, match="the checkpoint is at optimizer step 12, past the 10 steps of this run"):
        check_resumable(saved, TrainerState(steps_per_epoch=6, total_steps=10, **same), tmp_path)


def test_latest_ignores_partial_and_unfinished_checkpoints_and_prune_keeps_the_newest(tmp_path):
    assert latest_checkpoint(tmp_path) is None and resolve_resume("latest", tmp_path) is None
    for step in (2, 10, 4):
        fake_checkpoint(tmp_path, f"checkpoint-{step}")
    fake_checkpoint(tmp_path, ".tmp-checkpoint-12", complete=False)  # a save killed before its rename
    fake_checkpoint(tmp_path, "checkpoint-14", complete=False)  # no trainer_state.json: not a checkpoint
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4", "checkpoint-10"]
    assert resolve_resume("latest", tmp_path).name == "checkpoint-10"
    assert [p.name for p in remove_partial_checkpoints(tmp_path)] == [".tmp-checkpoint-12"]
    assert [p.name for p in prune_checkpoints(tmp_path, keep=2)] == ["checkpoint-2"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-10"]
    with pytest.raises(FileNotFoundError, match="--resume-from .*checkpoint-14 has no trainer_state.json"):
        resolve_resume(str(tmp_path / "checkpoints" / "checkpoint-14"), tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_resume(str(tmp_path / "missing"), tmp_path)


def assert_same_run(resumed, out, uninterrupted) -> None:
    reference, reference_weights = uninterrupted[:2]
    for key, values in reference.history.to_dict().items():
        assert resumed.history.to_dict()[key] == pytest.approx(values), key
    diff = max_abs_difference(reference_weights, weights(out))
    assert diff <= 1e-6, diff


def test_a_crash_inside_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, corpus, uninterrupted, monkeypatch):
    from accelerate import Accelerator

    save_state, calls = Accelerator.save_state, []

    def dies_while_saving(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:  # the second checkpoint: write half of it, then die
            save_state(self, output_dir, **kwargs)
            os.remove(os.path.join(output_dir, "optimizer.bin"))
            raise KeyboardInterrupt("killed while saving")
        return save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", dies_while_saving)
    config = tiny_config(tmp_path, corpus, **SETTINGS)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(Accelerator, "save_state", save_state)
    out = tmp_path / "run"
    assert (out / "checkpoints" / ".tmp-checkpoint-4" / "model.safetensors").is_file()
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]

    config.run.resume_from = "latest"
    resumed = train(config)
    assert resumed.resumed_from.name == "checkpoint-2"
    assert not (out / "checkpoints" / ".tmp-checkpoint-4").exists()
    assert_same_run(resumed, out, uninterrupted)


@pytest.mark.slow
def test_sigkill_inside_an_epoch_then_resume_latest_ends_like_an_uninterrupted_run(tmp_path, corpus, uninterrupted):
    config = tiny_config(tmp_path, corpus, **SETTINGS)
    out = tmp_path / "run"
    env = subprocess_env(tmp_path)
    child = subprocess.Popen(train_command(*config_flags(config)), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list_checkpoints(out) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert child.poll() is None, f"training ended before a checkpoint appeared: {child.stderr.read()[-2000:]}"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    latest = latest_checkpoint(out)
    state = load_trainer_state(latest)
    assert 0 < state.step_in_epoch < state.steps_per_epoch and state.epoch == 0  # killed inside the first epoch
    assert not (out / "history.json").exists()

    config.run.resume_from = "latest"
    resumed = train(config)
    assert resumed.resumed_from == latest
    assert_same_run(resumed, out, uninterrupted)


def test_a_tied_head_checkpoints_without_accelerates_shared_tensor_warning(tmp_path, corpus, caplog):
    import logging

    config = tiny_config(tmp_path, corpus, tie_word_embeddings=True, max_steps=2, checkpoint_every=1)
    with caplog.at_level(logging.WARNING):
        train(config)
    assert len(list_checkpoints(tmp_path / "run")) == 2
    assert not [r for r in caplog.records if "Removed shared tensor" in r.getMessage()]
    # Only gptlite's own tie is silenced: any other tensor accelerate drops is still reported.
    with caplog.at_level(logging.WARNING):
        logging.getLogger("accelerate.utils.other").warning("Removed shared tensor {'x.weight'} while saving.")
    assert [r for r in caplog.records if "{'x.weight'}" in r.getMessage()]


# -- damaged checkpoints: checked before resuming, `latest` falls back, RNG states restored or refused ------------


def exit_of(capsys, argv) -> tuple[int, str]:
    """(exit status, stderr) of gptlite-train in this process, asserting that no traceback was printed."""
    code, _, err = run_in_process(capsys, main, *argv)
    return code, err


def copy_of_the_run(tmp_path, uninterrupted_folder):
    """A copy of the finished reference run (checkpoints 32, 34 and 36), its config resuming `latest`."""
    import shutil

    shutil.copytree(uninterrupted_folder, tmp_path, dirs_exist_ok=True)
    return tmp_path / "run" / "checkpoints"


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


DAMAGES = {
    "optimizer-truncated": ("optimizer.bin", truncate, "optimizer.bin is truncated or overwritten"),
    "scheduler-truncated": ("scheduler.bin", truncate, "scheduler.bin is truncated or overwritten"),
    "weights-truncated": ("model.safetensors", truncate, "model.safetensors is truncated or overwritten"),
    "rng-truncated": ("random_states_0.pkl", truncate, "random_states_0.pkl is truncated or overwritten"),
    "optimizer-deleted": ("optimizer.bin", lambda path: path.unlink(), "optimizer.bin is missing"),
    "state-garbled": ("trainer_state.json", lambda path: truncate(path, 0.3), "trainer_state.json is not a gptlite"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_latest_falls_back_to_the_newest_intact_checkpoint_and_resumes_bit_identically(
        tmp_path, corpus, uninterrupted, capsys, damage):
    name, spoil, message = DAMAGES[damage]
    checkpoints = copy_of_the_run(tmp_path, uninterrupted[2])
    spoil(checkpoints / "checkpoint-36" / name)
    code, err = exit_of(capsys, config_flags(tiny_config(tmp_path, corpus, **SETTINGS, resume_from="latest")))
    assert code == 0, err
    notice = next(line for line in err.splitlines() if line.startswith("--resume-from latest:"))
    assert message in notice and "resuming from checkpoint-34 instead" in notice and "checkpoint-36.damaged" in notice
    assert (checkpoints / "checkpoint-36.damaged").is_dir() and (checkpoints / "checkpoint-36").is_dir()  # redone
    reference, reference_weights = uninterrupted[:2]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["train_loss"] == pytest.approx(reference.history.train_loss)
    assert history["lr"] == reference.history.lr
    assert max_abs_difference(reference_weights, weights(tmp_path / "run")) == 0.0


@pytest.mark.parametrize("damage", ["optimizer-truncated", "optimizer-deleted"])
def test_a_damaged_checkpoint_named_by_path_is_refused_naming_the_file_and_the_previous_one(
        tmp_path, corpus, uninterrupted, capsys, damage):
    name, spoil, message = DAMAGES[damage]
    checkpoints = copy_of_the_run(tmp_path, uninterrupted[2])
    spoil(checkpoints / "checkpoint-36" / name)
    before = tree_hashes(tmp_path / "run")
    config = tiny_config(tmp_path, corpus, **SETTINGS, resume_from=str(checkpoints / "checkpoint-36"))
    code, err = exit_of(capsys, config_flags(config))
    assert code == 1 and f"{checkpoints / 'checkpoint-36' / message}" in err  # a broken file: 1, not 2
    assert f"resume from the previous intact checkpoint instead: --resume-from {checkpoints / 'checkpoint-34'}" in err
    assert tree_hashes(tmp_path / "run") == before  # nothing was touched


def test_when_every_checkpoint_is_damaged_latest_is_refused(tmp_path, corpus, uninterrupted, capsys):
    checkpoints = copy_of_the_run(tmp_path, uninterrupted[2])
    for path in checkpoints.glob("checkpoint-*/scheduler.bin"):
        path.unlink()
    code, err = exit_of(capsys, config_flags(tiny_config(tmp_path, corpus, **SETTINGS, resume_from="latest")))
    assert code == 1 and "no checkpoint of this run can be resumed; the newest:" in err
    assert f"{checkpoints / 'checkpoint-36' / 'scheduler.bin'} is missing" in err


def test_random_states_that_do_not_restore_fail_loudly(tmp_path, corpus, uninterrupted, capsys):
    checkpoints = copy_of_the_run(tmp_path, uninterrupted[2])
    rng = checkpoints / "checkpoint-36" / "random_states_0.pkl"
    states = torch.load(rng, weights_only=False)
    torch.save(states | {"torch_manual_seed": states["torch_manual_seed"][:100]}, rng)  # a whole file, wrong state
    state_file = checkpoints / "checkpoint-36" / TRAINER_STATE_NAME
    state = json.loads(state_file.read_text())
    state["files"]["random_states_0.pkl"] = rng.stat().st_size  # as if written so: only the restore can tell
    state_file.write_text(json.dumps(state))
    # Extended by an epoch: a finished run is only reported finished, this one must restore its state.
    extended = {**SETTINGS, "epochs": SETTINGS["epochs"] + 1}
    code, err = exit_of(capsys, config_flags(tiny_config(tmp_path, corpus, **extended, resume_from="latest")))
    assert code == 1 and f"{rng}: the random number generators were not restored from it" in err


# -- a resume continues the same run: other data is refused, naming both ------------------------------------------


def test_a_resume_on_other_data_is_refused_naming_both(tmp_path, capsys):
    import shutil

    first = write_corpus(tmp_path / "first.txt", n_words=1200, seed=0)
    other = write_corpus(tmp_path / "other.txt", n_words=1200, seed=1)  # as many steps per epoch, other text
    settings = {"max_steps": 3, "checkpoint_every": 2, "eval_freq": 100}
    assert exit_of(capsys, config_flags(tiny_config(tmp_path, first, **settings)))[0] == 0
    code, err = exit_of(capsys, config_flags(tiny_config(tmp_path, other, **settings, resume_from="latest")))
    # Refused as a flag that contradicts the run being resumed, naming both corpora.
    assert code == 2 and str(first) in err and str(other) in err
    shutil.copy(other, first)  # the same path, other content
    extended = {**settings, "max_steps": 5}  # continued, not just reported finished: the checkpoint is loaded
    code, err = exit_of(capsys, config_flags(tiny_config(tmp_path, first, **extended, resume_from="latest")))
    assert code == 2 and "whose content changed since the checkpoint was written" in err
    write_corpus(first, n_words=1200, seed=0)  # the same text again, with a new modification time: the same data
    code, err = exit_of(capsys, config_flags(tiny_config(tmp_path, first, **extended, resume_from="latest")))
    assert code == 0, err
