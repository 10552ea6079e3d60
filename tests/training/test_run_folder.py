"""The run folder's life: one run per folder, the lock, pruning, the whole-or-nothing final save, disk full.

Every refusal and failure is driven through ``gptlite-train``'s ``main`` and checked for its exit code,
its one line naming the culprit, no traceback, and, where something could be lost, the previous folder
byte-identical (hashes) and still loading with the same logits.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from gptlite.training.checkpointing import list_checkpoints, load_trainer_state
from gptlite.training.cli import main
from gptlite.training.loop import train
from gptlite.training.run_folder import LOCK_FILE, RUN_FILE, read_run_record, run_settings
from tests.conftest import run_in_process
from tests.training.conftest import (
    config_flags,
    folder_logits,
    run,
    subprocess_env,
    tiny_config,
    train_command,
    tree_hashes,
)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def corpus_words():
    return 1200


def cli(capsys, config, *extra: str) -> tuple[int, str, str]:
    """Run ``gptlite-train`` in this process with ``config``'s flags; (exit code, stdout, stderr)."""
    return run_in_process(capsys, main, *config_flags(config), *extra)


def one_line_error(err: str) -> str:
    """The one ``gptlite-train:`` line of stderr (the progress bar may precede it on its line)."""
    assert "Traceback" not in err
    lines = [line[line.index("gptlite-train:"):] for line in err.splitlines() if "gptlite-train:" in line]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def finished_run(tmp_path, corpus, **overrides):
    config = tiny_config(tmp_path, corpus, **{"max_steps": 2, "checkpoint_every": 1, **overrides})
    train(config)
    return config, tmp_path / "run"


def test_weights_get_the_mode_of_any_new_file_under_the_umask(tmp_path, corpus):
    previous = os.umask(0o027)
    try:
        _, out = finished_run(tmp_path, corpus)
        (tmp_path / "plain").write_text("")
    finally:
        os.umask(previous)
    modes = {path.relative_to(out).as_posix(): oct(path.stat().st_mode & 0o777) for path in out.rglob("*.safetensors")}
    assert modes == {"model.safetensors": "0o640", "checkpoints/checkpoint-1/model.safetensors": "0o640",
                     "checkpoints/checkpoint-2/model.safetensors": "0o640"}  # safetensors itself writes 0o600
    assert oct((tmp_path / "plain").stat().st_mode & 0o777) == "0o640"


# -- one run per folder -------------------------------------------------------------------------


def test_a_new_run_on_a_folder_with_another_run_is_refused_and_changes_nothing(tmp_path, corpus, capsys):
    config, out = finished_run(tmp_path, corpus)
    record = read_run_record(out)
    assert record["settings"]["max_steps"] == 2 and load_trainer_state(out / "checkpoints" / "checkpoint-2").run_id \
        == record["run_id"]
    before, logits = tree_hashes(out), folder_logits(out)
    code, _, err = cli(capsys, tiny_config(tmp_path, corpus, max_steps=3, seed=7))
    line = one_line_error(err)
    assert code == 2
    assert f"--output-dir {out} holds run {record['run_id']}" in line and "checkpoint-2" in line
    assert "--resume-from latest" in line and "--overwrite" in line and "another --output-dir" in line
    assert tree_hashes(out) == before and torch.equal(folder_logits(out), logits)


def test_a_folder_of_other_files_is_refused_and_overwrite_keeps_them(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, tiny_config(tmp_path, corpus, max_steps=1))
    assert code == 2 and "notes.txt" in one_line_error(err) and "holds no gptlite run" in err
    code, _, err = cli(capsys, tiny_config(tmp_path, corpus, max_steps=1), "--overwrite")
    assert code == 0, err[-2000:]
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").is_file()


def test_overwrite_replaces_the_old_run_whose_checkpoints_can_no_longer_be_pruned_into_or_resumed(
    tmp_path, corpus, capsys
):
    # The case: an old run with later checkpoints than the new run writes.
    _, out = finished_run(tmp_path, corpus, max_steps=6, keep_checkpoints=2)
    old_id = read_run_record(out)["run_id"]
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-5", "checkpoint-6"]
    code, _, err = cli(capsys, tiny_config(tmp_path, corpus, max_steps=2, checkpoint_every=1, seed=5), "--overwrite")
    assert code == 0, err[-2000:]
    new_id = read_run_record(out)["run_id"]
    assert new_id != old_id
    kept = list_checkpoints(out)
    assert [p.name for p in kept] == ["checkpoint-1", "checkpoint-2"]
    assert {load_trainer_state(p).run_id for p in kept} == {new_id}
    assert json.loads((out / "train_config.json").read_text())["seed"] == 5
    assert "overwrite" not in json.loads((out / "train_config.json").read_text())  # a --config of it replaces nothing


def test_resume_latest_takes_only_this_runs_checkpoints_and_pruning_leaves_others_alone(tmp_path, corpus, capsys):
    from gptlite.training.monitoring import Progress

    # A foreign checkpoint with more steps (copied in from another run) must neither resume nor be pruned.
    _, other = finished_run(tmp_path / "other", corpus, max_steps=4, checkpoint_every=4)
    end_step, config = Progress.end_step, tiny_config(tmp_path, corpus, max_steps=6, checkpoint_every=1,
                                                      keep_checkpoints=2)

    def crash_after_step_3(self, global_step, *args, **kwargs):
        end_step(self, global_step, *args, **kwargs)
        if global_step == 3:
            raise KeyboardInterrupt

    Progress.end_step = crash_after_step_3
    try:
        code, _, err = cli(capsys, config)
    finally:
        Progress.end_step = end_step
    out = tmp_path / "run"
    assert code == 130 and "interrupted by SIGINT" in one_line_error(err) and "checkpoint-2" in err
    assert "--resume-from latest" in err and not (out / LOCK_FILE).exists()
    foreign = out / "checkpoints" / "checkpoint-40"
    subprocess.run(["cp", "-r", str(other / "checkpoints" / "checkpoint-4"), str(foreign)], check=True)
    foreign_hashes = tree_hashes(foreign)

    code, printed, err = cli(capsys, config, "--resume-from", "latest")
    assert code == 0, err[-2000:]
    assert "Resumed from" in printed and "checkpoint-2 at optimizer step 2" in printed
    assert [p.name for p in list_checkpoints(out, read_run_record(out)["run_id"])] == ["checkpoint-5", "checkpoint-6"]
    assert tree_hashes(foreign) == foreign_hashes  # kept by pruning and by the final save


# -- the lock -----------------------------------------------------------------------------------


# Takes OUT's lock as a training run does, says so, and holds it until killed.
_HOLD_THE_LOCK = ("import sys, time; from pathlib import Path; from gptlite.training.run_folder import _acquire_lock; "
                  "_acquire_lock(Path(sys.argv[1]), []); print('held', flush=True); time.sleep(120)")


@pytest.mark.slow  # a fresh Python process: ~4 s of imports
def test_a_second_live_process_is_refused_and_a_killed_ones_lock_is_taken_over(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_THE_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        code, _, err = cli(capsys, tiny_config(tmp_path, corpus, max_steps=1))
        line = one_line_error(err)
        assert code == 2 and f"in use by process {holder.pid}" in line and str(out / LOCK_FILE) in line
        assert not (out / "model.safetensors").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # kill -9: no chance to release the lock or remove its file
        holder.wait()
        holder.stdout.close()
    assert (out / LOCK_FILE).exists()
    code, _, err = cli(capsys, tiny_config(tmp_path, corpus, max_steps=1))  # the OS freed its lock
    assert code == 0, err[-2000:]
    assert f"Took over {out / LOCK_FILE} from process {holder.pid}" in err
    assert (out / "model.safetensors").is_file() and not (out / LOCK_FILE).exists()


@pytest.mark.slow
def test_two_real_processes_on_one_folder_the_second_is_refused(tmp_path, corpus):
    config = tiny_config(tmp_path, corpus, max_steps=400, eval_freq=1000)
    env = subprocess_env(tmp_path)
    first = subprocess.Popen(train_command(*config_flags(config)), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        out = tmp_path / "run"
        import time

        deadline = time.monotonic() + 300
        while not (out / LOCK_FILE).exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None
        second = run(train_command(*config_flags(config), "--overwrite"), env)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"in use by process {first.pid}" in second.stderr
    finally:
        first.terminate()
        first.wait(timeout=120)


# -- resume checks the architecture ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "field", "before", "after"),
    [
        (["--n-heads", "4"], "n_heads", "2", "4"),  # would split the same weights into other heads, silently
        (["--emb-dim", "64"], "emb_dim", "32", "64"),  # was a state_dict size-mismatch traceback
        (["--n-layers", "3"], "n_layers", "2", "3"),
        (["--context-length", "16"], "context_length", "32", "16"),
        (["--qkv-bias"], "qkv_bias", "False", "True"),
        (["--tie-word-embeddings"], "tie_word_embeddings", "False", "True"),
    ],
)
def test_resume_with_another_architecture_names_the_field_and_both_values(
    tmp_path, corpus, capsys, flags, field, before, after
):
    config, out = finished_run(tmp_path, corpus)
    hashes = tree_hashes(out)
    code, _, err = cli(capsys, config, "--resume-from", "latest", *flags)
    line = one_line_error(err)
    assert code == 2  # the command line is checked against run.json
    assert f"{' '.join(flags)} contradicts the run being resumed, which has {field} {before}" in line
    assert tree_hashes(out) == hashes
    value = after == "True" if after in ("True", "False") else int(after)
    with pytest.raises(ValueError, match=f"the checkpoint's model has {field} {before}, this run would build {after}"):
        train(config.replace(resume_from="latest", **{field: value}))  # the Python API: the checkpoint's
    assert read_run_record(out)["settings"] == run_settings(config)


# -- the final model: whole or not at all -----------------------------------------------------------


def _fail_with(error, target: str | None = None):
    """A stand-in that raises ``error``; with ``target``, only when writing the final model's hidden sibling
    (``.run.tmp-PID``) and otherwise calling the real ``target``."""
    import importlib

    real = None
    if target is not None:
        module, name = target.rsplit(".", 1)
        real = getattr(importlib.import_module(module), name)

    def fail(*args, **kwargs):
        if real is not None and not any(".run.tmp-" in str(a) for a in args):
            return real(*args, **kwargs)
        raise error

    return fail


_ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
# Each file of the final model folder, and the flush before the swap: a failure at any of them.
_FINAL_WRITES = [
    ("transformers.PreTrainedModel.save_pretrained", _ENOSPC),
    ("gptlite.training.outputs.save_tokenizer", _ENOSPC),
    ("gptlite.training.monitoring.History.save", _ENOSPC),
    ("gptlite.training.outputs.plot_losses", _ENOSPC),
    ("gptlite.training.outputs.plot_lr", _ENOSPC),
    ("gptlite.folders.fsync_tree", _ENOSPC),  # also flushes checkpoints: fails only on the final folder
    ("gptlite.training.run_folder._link_tree", _ENOSPC),
    ("gptlite.training.outputs.plot_lr", KeyboardInterrupt()),  # Ctrl-C during the save
]


@pytest.mark.parametrize(("target", "error"), _FINAL_WRITES, ids=[f"{t.rsplit('.', 1)[-1]}-{type(e).__name__}"
                                                                    for t, e in _FINAL_WRITES])
def test_a_failed_final_save_leaves_the_previous_model_byte_identical(tmp_path, corpus, capsys, monkeypatch,
                                                                      target, error):
    _, out = finished_run(tmp_path, corpus)
    model_files = ("checkpoints", RUN_FILE)  # --overwrite replaces the old run's checkpoints and record at once
    before, logits = tree_hashes(out, skip=model_files), folder_logits(out)
    new_run = tiny_config(tmp_path, corpus, max_steps=3, checkpoint_every=1, seed=9)
    monkeypatch.setattr(target, _fail_with(error, target if target.endswith("fsync_tree") else None))
    code, _, err = cli(capsys, new_run, "--overwrite")
    monkeypatch.undo()
    line = one_line_error(err)
    if isinstance(error, KeyboardInterrupt):
        assert code == 130 and "interrupted by SIGINT" in line
    else:
        assert code == 1
        assert line == f"gptlite-train: error: No space left on device while writing {out}; {out} is intact"
    assert tree_hashes(out, skip=model_files) == before and torch.equal(folder_logits(out), logits)
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []  # no temporary folder left
    # The new run's last checkpoint is whole: resuming it writes the final model.
    code, _, err = cli(capsys, new_run, "--resume-from", "latest")
    assert code == 0, err[-2000:]
    assert not torch.equal(folder_logits(out), logits)
    assert json.loads((out / "train_config.json").read_text())["seed"] == 9


def test_a_failed_checkpoint_write_says_the_previous_one_is_intact_and_it_resumes(tmp_path, corpus, capsys,
                                                                                   monkeypatch):
    from accelerate import Accelerator

    save_state, calls = Accelerator.save_state, []

    def full_on_the_second(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:  # half the files written, then the disk is full
            save_state(self, output_dir, **kwargs)
            inner = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4480 vs 4416") from inner
        return save_state(self, output_dir, **kwargs)

    config = tiny_config(tmp_path, corpus, max_steps=4, checkpoint_every=2)
    out = tmp_path / "run"
    monkeypatch.setattr(Accelerator, "save_state", full_on_the_second)
    code, _, err = cli(capsys, config)
    monkeypatch.undo()
    line = one_line_error(err)
    first, second = out / "checkpoints" / "checkpoint-2", out / "checkpoints" / "checkpoint-4"
    assert code == 1
    assert line == f"gptlite-train: error: No space left on device while writing {second}; {first} is intact"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-2"]  # the partial one is gone
    code, printed, err = cli(capsys, config, "--resume-from", "latest")
    assert code == 0 and "Resumed from" in printed, err[-2000:]


def _tiny_sizes(tmp_path, corpus):
    """Bytes of one checkpoint and of the final model of the tiny run (measured, not guessed)."""
    _, out = finished_run(tmp_path / "measure", corpus, max_steps=1)
    checkpoint = sum(p.stat().st_size for p in (out / "checkpoints").rglob("*") if p.is_file())
    return checkpoint, (out / "model.safetensors").stat().st_size


def test_a_real_full_disk_during_a_checkpoint_keeps_the_previous_checkpoint(tmp_path, corpus, capsys, tmpfs):
    checkpoint, _ = _tiny_sizes(tmp_path, corpus)
    disk = tmpfs(f"{int(checkpoint * 1.5) // 1024}k")  # room for one checkpoint, not two
    config = tiny_config(tmp_path, corpus, max_steps=4, checkpoint_every=2, output_dir=str(disk / "run"))
    code, _, err = cli(capsys, config)
    first, second = disk / "run" / "checkpoints" / "checkpoint-2", disk / "run" / "checkpoints" / "checkpoint-4"
    assert code == 1
    assert one_line_error(err) == (f"gptlite-train: error: No space left on device while writing {second}; "
                                   f"{first} is intact")
    assert [p.name for p in first.parent.iterdir()] == ["checkpoint-2"]
    assert load_trainer_state(first).global_step == 2
    # Resumable: continue it into a folder with room.
    moved = tiny_config(tmp_path, corpus, max_steps=4, checkpoint_every=2, output_dir=str(tmp_path / "roomy"))
    code, printed, err = cli(capsys, moved, "--resume-from", str(first))
    assert code == 0 and f"Resumed from {first}" in printed, err[-2000:]


def test_a_real_full_disk_during_the_final_save_keeps_the_previous_model(tmp_path, corpus, capsys, tmpfs):
    checkpoint, model = _tiny_sizes(tmp_path, corpus)
    # The old model and the new run's checkpoint fit; the new model beside them does not.
    disk = tmpfs(f"{(model + checkpoint + model // 2) // 1024}k")
    config = tiny_config(tmp_path, corpus, max_steps=1, keep_checkpoints=1, output_dir=str(disk / "run"))
    code, _, err = cli(capsys, config)
    assert code == 0, err[-2000:]
    out = disk / "run"
    before, logits = tree_hashes(out, skip=("checkpoints", RUN_FILE)), folder_logits(out)
    config.run.seed = 11
    code, _, err = cli(capsys, config, "--overwrite")
    assert code == 1
    assert one_line_error(err) == f"gptlite-train: error: No space left on device while writing {out}; {out} is intact"
    assert tree_hashes(out, skip=("checkpoints", RUN_FILE)) == before and torch.equal(folder_logits(out), logits)
    assert sorted(p.name for p in disk.iterdir()) == ["run"]


# -- interruptions outside the loop, and the final evaluation ---------------------------------------


def test_ctrl_c_while_tokenizing_is_one_line_and_exit_130(tmp_path, corpus, capsys, monkeypatch):
    monkeypatch.setattr("gptlite.training.session.build_dataloaders", _fail_with(KeyboardInterrupt()))
    code, _, err = cli(capsys, tiny_config(tmp_path, corpus, max_steps=1))
    assert code == 130
    assert one_line_error(err) == "gptlite-train: interrupted by SIGINT; nothing of this run was saved"
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_the_final_losses_are_the_saved_models_on_the_batches_the_summary_names(tmp_path, corpus, capsys):
    from gptlite.training.cli import eval_main

    config = tiny_config(tmp_path, corpus, max_steps=5, eval_freq=3, eval_iter=1)  # evaluations at 0, 3 and 4
    code, printed, err = cli(capsys, config)
    assert code == 0, err[-2000:]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["step"] == [0, 3, 4]
    assert ("after optimizer step 5 of 5, on the first 1 validation batch(es) of --batch-size 4 (--eval-iter 1)"
            in printed), printed
    assert f"final validation loss {history['val_loss'][-1]:.3f}" in printed
    eval_main([str(tmp_path / "run"), "--data", str(corpus), "--split", "validation",
               "--cache-dir", config.data.cache_dir, "--batch-size", "4", "--max-batches", "1", "--json"])
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(history["val_loss"][-1], abs=1e-5)


def test_a_folder_from_before_run_ids_resumes_and_its_architecture_is_still_checked(tmp_path, corpus, capsys):
    config, out = finished_run(tmp_path, corpus, max_steps=3, checkpoint_every=2)
    (out / RUN_FILE).unlink()
    for checkpoint in list_checkpoints(out):  # what older gptlite wrote: no run id, no architecture
        state_file = checkpoint / "trainer_state.json"
        state = json.loads(state_file.read_text())
        del state["run_id"], state["architecture"]
        state_file.write_text(json.dumps(state))
    code, _, err = cli(capsys, config, "--resume-from", "latest", "--n-heads", "4")
    assert code == 2
    assert "the checkpoint's model has n_heads 2, this run would build 4 (--n-heads)" in one_line_error(err)
    code, printed, err = cli(capsys, config, "--resume-from", "latest")
    assert code == 0 and "Resumed from" in printed, err[-2000:]
    assert read_run_record(out) is not None  # the folder now records its run
