"""Past one machine: two `accelerate launch` "machines" on this one train like one process with --grad-accum 2,
and their checkpoint resumes in one process; an FSDP config on CPU is refused instead of silently run as DDP."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gptlite.training.checkpointing import (
    TrainerState,
    check_resumable,
    list_checkpoints,
    load_trainer_state,
    model_architecture,
)
from gptlite.training.loop import train
from gptlite.training.runtime import make_accelerator
from tests.training.conftest import (
    config_flags,
    free_port,
    max_abs_difference,
    subprocess_env,
    tiny_config,
    weights,
    write_corpus,
)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def launch_two_machines(config, env) -> list[subprocess.CompletedProcess]:
    """`accelerate launch` once per "machine" (one process each), both rendezvousing on 127.0.0.1."""
    port = free_port()
    procs = []
    for rank in (0, 1):
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch",
            # --multi_gpu without GPUs: CPU processes in a gloo group; --num_processes counts all machines'.
            "--multi_gpu", "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
            "--mixed_precision", "no", "--dynamo_backend", "no",
            "-m", "gptlite.training", *config_flags(config),
        ]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    done = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def assert_same_run(history: dict, other, from_step: int = 0) -> None:
    for key in ("step_loss", "lr"):
        assert history[key][from_step:] == pytest.approx(getattr(other, key)[from_step:], abs=1e-4), key
    assert history["train_loss"] == pytest.approx(other.train_loss, abs=1e-4)
    assert history["val_loss"] == pytest.approx(other.val_loss, abs=1e-4)
    assert history["tokens_seen"] == other.tokens_seen


@pytest.mark.slow
def test_two_machines_equal_one_process_and_their_checkpoint_resumes_on_one(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", n_words=900)
    # Two epochs of 7 optimizer steps, a checkpoint every 3: step 3 is inside the first epoch.
    settings = {"batch_size": 2, "epochs": 2, "eval_freq": 4, "eval_iter": 4, "drop_rate": 0.0}
    two = tiny_config(tmp_path / "two", corpus, grad_accum=1, checkpoint_every=3, keep_checkpoints=10, **settings)
    for machine in launch_two_machines(two, subprocess_env(tmp_path)):
        assert machine.returncode == 0, machine.stderr[-3000:]
    checkpoints = list_checkpoints(tmp_path / "two" / "run")
    final = load_trainer_state(checkpoints[-1])
    assert final.num_processes == 2 and final.global_step == 2 * final.steps_per_epoch == 14

    one = train(tiny_config(tmp_path / "one", corpus, grad_accum=2, **settings))
    assert_same_run(final.history, one.history)
    assert max_abs_difference(weights(tmp_path / "two" / "run"), weights(tmp_path / "one" / "run")) < 1e-4

    # The two machines' step-3 checkpoint, resumed by one process with --grad-accum doubled.
    at_3 = next(c for c in checkpoints if load_trainer_state(c).global_step == 3)
    resumed = train(tiny_config(tmp_path / "resumed", corpus, grad_accum=2, resume_from=str(at_3), **settings))
    assert resumed.resumed_from == at_3 and resumed.global_step == 14
    assert_same_run(final.history, resumed.history)
    diff = max_abs_difference(weights(tmp_path / "two" / "run"), weights(tmp_path / "resumed" / "run"))
    assert diff < 1e-4, diff


def test_resume_keeps_batches_per_step_and_says_which_grad_accum(tmp_path):
    config = tiny_config(tmp_path, tmp_path / "corpus.txt", grad_accum=1, batch_size=2)
    architecture = model_architecture(config.model_config())
    saved = TrainerState(steps_per_epoch=7, total_steps=14, num_processes=2, config=config.to_dict(),
                         architecture=architecture)

    def now(processes: int, grad_accum: int) -> TrainerState:
        settings = {**config.to_dict(), "grad_accum": grad_accum}
        return TrainerState(steps_per_epoch=7, total_steps=14, num_processes=processes, config=settings,
                            architecture=architecture)

    with pytest.raises(ValueError, match=r"written by 2 process\(es\) with --grad-accum 1 \(2 batches per optimizer "
                                         r"step\), this run has 1 process\(es\) with --grad-accum 1 \(1\); continue "
                                         r"it with --grad-accum 2"):
        check_resumable(saved, now(1, 1), tmp_path)
    check_resumable(saved, now(1, 2), tmp_path)  # 1 process x 2 = 2 processes x 1: the same run
    with pytest.raises(ValueError, match=r"\(6\)$"):  # 2 batches per step cannot be split over 3: no hint
        check_resumable(saved, now(3, 2), tmp_path)


def test_fsdp_config_on_cpu_is_refused_not_run_as_ddp(monkeypatch):
    # What `accelerate launch --config_file` with `distributed_type: FSDP` sets; accelerate 1.15 would run DDP.
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(ValueError, match=r"asks for FSDP, but accelerate runs it as NO here .*--multi_gpu"):
        make_accelerator("no")
