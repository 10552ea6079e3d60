"""Signals while the token cache is written: the tokenizing workers die quietly (no traceback of theirs), the command
prints its one line, and the hidden folder of a writer killed with SIGKILL is removed by the next run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from gptlite.training.data import DataConfig, load_token_splits
from tests.training.conftest import subprocess_env, write_corpus

pytestmark = pytest.mark.slow  # each test starts a fresh gptlite-train process: ~4 s of imports

# gptlite-train with tasks of one small file each, two workers, and tasks slow enough to be signalled mid-way.
SLOW_TOKENIZING = """
import pathlib, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal, however pytest was started
import gptlite.training.token_cache as token_cache
token_cache.TASK_BYTES, token_cache.usable_cores = 64, lambda: 2
encode = token_cache._encode_task
def slow_task(task):
    pathlib.Path(sys.argv[1]).touch()
    time.sleep(0.4)
    return encode(task)
token_cache._encode_task = slow_task
from gptlite.training.cli import main
main(sys.argv[2:])
"""


def start(tmp_path, *extra: str) -> subprocess.Popen:
    folder = tmp_path / "corpus"
    folder.mkdir(exist_ok=True)
    for i in range(16):
        write_corpus(folder / f"part-{i:02d}.txt", n_words=240, seed=i)
    flags = ["--data", str(folder), "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(tmp_path / "run"),
             "--emb-dim", "32", "--n-layers", "1", "--n-heads", "2", "--context-length", "32", "--max-steps", "1",
             "--eval-iter", "1", "--sample-tokens", "1", *extra]
    # Its own process group, as a shell job: a terminal's Ctrl-C or a scheduler's SIGTERM reaches every process.
    return subprocess.Popen([sys.executable, "-c", SLOW_TOKENIZING, str(tmp_path / "tokenizing"), *flags],
                            env=subprocess_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def signal_while_tokenizing(tmp_path, child: subprocess.Popen, signum: int) -> tuple[int, str]:
    deadline = time.monotonic() + 120
    while not (tmp_path / "tokenizing").exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.poll() is None, child.communicate()[1][-3000:]
    time.sleep(0.2)  # both workers inside a task
    os.killpg(child.pid, signum)
    _, err = child.communicate(timeout=120)
    return child.returncode, err


def hidden_writers(cache) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith(".")) if cache.is_dir() else []


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_tokenizing_prints_one_line_and_no_worker_traceback(tmp_path, signum, status):
    code, err = signal_while_tokenizing(tmp_path, start(tmp_path), signum)
    assert code == status, err[-3000:]
    assert "Traceback" not in err and "ForkPoolWorker" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith(f"gptlite-train: interrupted by {signal.Signals(signum).name}")
    assert hidden_writers(tmp_path / "cache") == []  # the writer's hidden folder went with it


def test_a_killed_writers_hidden_folder_is_removed_by_the_next_run(tmp_path):
    code, _ = signal_while_tokenizing(tmp_path, start(tmp_path), signal.SIGKILL)
    assert code == -signal.SIGKILL
    left = hidden_writers(tmp_path / "cache")
    assert len(left) == 1 and left[0].endswith(f"-{socket.gethostname()}")
    config = DataConfig(data=[str(tmp_path / "corpus" / "part-00.txt")], cache_dir=str(tmp_path / "cache"),
                        context_length=32)
    load_token_splits(config)  # another corpus, the same cache
    assert hidden_writers(tmp_path / "cache") == []


@pytest.mark.slow
def test_tokenizing_on_two_workers_ends_without_a_worker_traceback(tmp_path):
    # The pool's own SIGTERM to its idle workers at a normal end printed their tracebacks too (a race, often won).
    child = start(tmp_path)
    _, err = child.communicate(timeout=300)
    assert child.returncode == 0 and "Traceback" not in err, err[-3000:]
