"""SIGINT / SIGTERM: the step finishes, a checkpoint is written, one line says how to resume, exit 130 / 143;
a second signal stops at once. Resuming is bit-identical to a run never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from gptlite.training.checkpointing import latest_checkpoint, list_checkpoints, load_trainer_state
from gptlite.training.cli import main
from gptlite.training.loop import train
from gptlite.training.monitoring import Progress
from tests.conftest import run_in_process
from tests.training.conftest import (
    config_flags,
    free_port,
    max_abs_difference,
    run,
    subprocess_env,
    tiny_config,
    train_command,
    weights,
    write_corpus,
)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state", "terminal_signal_handlers")

SETTINGS = {"epochs": 2, "drop_rate": 0.1, "checkpoint_every": 4, "keep_checkpoints": 3, "eval_freq": 5}


@pytest.fixture(scope="module")
def uninterrupted_settings():
    return SETTINGS


def cli(capsys, *argv: str) -> tuple[int, str]:
    code, _, err = run_in_process(capsys, main, *argv)
    return code, err


def the_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line[line.index("gptlite-train:"):] for line in err.splitlines() if "gptlite-train:" in line]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def assert_same_run(resumed, out, uninterrupted) -> None:
    reference, reference_weights = uninterrupted[:2]
    for key, values in reference.history.to_dict().items():
        assert resumed.history.to_dict()[key] == pytest.approx(values), key
    assert max_abs_difference(reference_weights, weights(out)) <= 1e-6


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_finishes_the_step_saves_and_resumes_bit_identically(
    tmp_path, corpus, uninterrupted, capsys, monkeypatch, signum, code
):
    end_step = Progress.end_step

    def signalled_during_step_7(self, global_step, *args, **kwargs):
        if global_step == 7:  # arrives before the step's end: the step still completes
            os.kill(os.getpid(), signum)
        end_step(self, global_step, *args, **kwargs)

    monkeypatch.setattr(Progress, "end_step", signalled_during_step_7)
    config = tiny_config(tmp_path, corpus, **SETTINGS)
    flags = config_flags(config)
    exit_code, err = cli(capsys, *flags)
    monkeypatch.undo()
    out = tmp_path / "run"
    stopped = out / "checkpoints" / "checkpoint-7"
    assert exit_code == code
    # The folder records every setting: it alone continues the run (and never with --overwrite).
    assert the_line(err) == (f"gptlite-train: stopped by {signal.Signals(signum).name} after optimizer step 7 of 36 "
                             f"and saved {stopped}; continue with: gptlite-train --resume-from latest --output-dir "
                             f"{out}")
    assert latest_checkpoint(out) == stopped and load_trainer_state(stopped).step_in_epoch == 7
    assert not (out / "model.safetensors").exists() and not (out / "run.lock").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored

    config.run.resume_from = "latest"
    resumed = train(config)
    assert resumed.resumed_from == stopped
    assert_same_run(resumed, out, uninterrupted)


def test_a_sigint_the_launcher_ignores_stays_ignored(tmp_path, corpus, capsys, monkeypatch):
    """Under nohup or a script's `gptlite-train &`, Ctrl-C in the terminal must not stop the background run."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    end_step = Progress.end_step

    def signalled_during_step_7(self, global_step, *args, **kwargs):
        if global_step == 7:
            os.kill(os.getpid(), signal.SIGINT)
        end_step(self, global_step, *args, **kwargs)

    monkeypatch.setattr(Progress, "end_step", signalled_during_step_7)
    config = tiny_config(tmp_path, corpus, **SETTINGS)
    exit_code, _ = cli(capsys, *config_flags(config))
    assert exit_code == 0
    assert (tmp_path / "run" / "model.safetensors").exists()  # ran to the end
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_second_signal_stops_at_once_and_the_last_complete_checkpoint_still_resumes(
    tmp_path, corpus, uninterrupted, capsys, monkeypatch
):
    from accelerate import Accelerator

    end_step, save_state = Progress.end_step, Accelerator.save_state

    def first_signal_at_step_6(self, global_step, *args, **kwargs):
        end_step(self, global_step, *args, **kwargs)
        if global_step == 6:
            os.kill(os.getpid(), signal.SIGINT)

    def second_signal_while_saving(self, output_dir=None, **kwargs):
        if output_dir.endswith("checkpoint-6"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the handler runs here
        return save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Progress, "end_step", first_signal_at_step_6)
    monkeypatch.setattr(Accelerator, "save_state", second_signal_while_saving)
    config = tiny_config(tmp_path, corpus, **SETTINGS)
    exit_code, err = cli(capsys, *config_flags(config))
    monkeypatch.undo()
    out = tmp_path / "run"
    assert exit_code == 130
    line = the_line(err)
    assert line.startswith("gptlite-train: interrupted by SIGINT; its newest checkpoint is ")
    assert line.endswith(f"--resume-from latest --output-dir {out}") and "checkpoint-4" in line
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4"]

    config.run.resume_from = "latest"
    assert_same_run(train(config), out, uninterrupted)


@pytest.mark.slow
def test_sigterm_to_a_real_process_then_resume_ends_like_an_uninterrupted_run(tmp_path, corpus, uninterrupted):
    config = tiny_config(tmp_path, corpus, **SETTINGS)
    out = tmp_path / "run"
    child = subprocess.Popen(train_command(*config_flags(config)), env=subprocess_env(tmp_path),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list_checkpoints(out) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert child.poll() is None, child.stderr.read()[-2000:]
        child.send_signal(signal.SIGTERM)
        err = child.communicate(timeout=120)[1]
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 143, err[-2000:]
    line = the_line(err)
    assert "stopped by SIGTERM after optimizer step" in line
    assert line.endswith(f"--resume-from latest --output-dir {out}")
    state = load_trainer_state(latest_checkpoint(out))
    assert state.epoch == 0 and 0 < state.step_in_epoch < state.steps_per_epoch

    config.run.resume_from = "latest"
    assert_same_run(train(config), out, uninterrupted)


def _rank_pids(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the worker processes under an ``accelerate launch`` process."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = open(f"/proc/{entry}/environ", "rb").read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        ranks = [v[5:] for v in environ if v.startswith(b"RANK=")]
        if ranks and parent != 0 and _descends_from(int(entry), launcher_pid):
            found[int(ranks[0])] = int(entry)
    return found


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
    return False


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", n_words=2400)
    settings = {"batch_size": 2, "epochs": 1, "eval_freq": 4, "eval_iter": 2, "checkpoint_every": 2}
    config = tiny_config(tmp_path / "two", corpus, **settings)
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), "-m", "gptlite.training", *config_flags(config),
    ]  # fmt: skip
    env = subprocess_env(tmp_path)
    out = tmp_path / "two" / "run"
    launcher = subprocess.Popen(launch, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 400
        while not list_checkpoints(out) and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        ranks = _rank_pids(launcher.pid)
        assert launcher.poll() is None and sorted(ranks) == [0, 1], launcher.stderr.read()[-3000:]
        os.kill(ranks[1], signal.SIGTERM)  # the other rank learns of it through the all-reduced flag
        err = launcher.communicate(timeout=300)[1]
    finally:
        launcher.kill()
        launcher.wait()
    assert "stopped by SIGTERM after optimizer step" in err, err[-3000:]
    stopped = latest_checkpoint(out)
    state = load_trainer_state(stopped)
    assert 0 < state.global_step < state.total_steps and state.num_processes == 2
    assert (stopped / "random_states_0.pkl").is_file() and (stopped / "random_states_1.pkl").is_file()

    resumed = run([*launch[:launch.index("--main_process_port") + 1], str(free_port()),
                   *launch[launch.index("-m", 4):], "--resume-from", "latest"], env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    one = train(tiny_config(tmp_path / "one", corpus, grad_accum=2, **settings))
    assert max_abs_difference(weights(out), weights(tmp_path / "one" / "run")) < 1e-4
    final = load_trainer_state(latest_checkpoint(out)).history
    assert final["step_loss"] == pytest.approx(one.history.step_loss, abs=1e-4)
