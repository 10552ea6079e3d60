"""The README's CPU benchmarks stay runnable: each one, at its smallest settings, prints the ratios it exists for.

Speed is not judged here (a timed test on a shared machine proves nothing); only that each script runs to
the end offline and prints its figures. bench_int8 needs torchao and bench_book runs the book's 124M model
for minutes, so neither is here; benchmarks/gpu.py has its own dry run (test_gpu_dry_run.py).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

RATIO = r"\d+\.\d+x"
BENCHMARKS = {
    "bench_generate": (
        ["--new-tokens", "2", "--rounds", "1", "--batch-sizes", "1"],
        [rf"float32 batch 1: gptlite / transformers = {RATIO} .*identical tokens",
         r"float32 batch 1 weight-read bound: [\d.]+ tokens/s; reached: transformers \d+%, gptlite \d+%"],
    ),
    "bench_train": (
        ["--batch-sizes", "1", "--rounds", "1", "--warmup", "0", "--context-length", "32", "--no-end-to-end"],
        [rf"batch 1: gptlite best / transformers best = {RATIO}", r"gptlite fp32 b1 .* MFU [\d.]+%"],
    ),
    "bench_tokenize": (
        ["--sizes-mb", "2", "1", "--rounds", "1", "--no-step"],
        [rf"2 MB: per-core speed {RATIO} tiktoken raw", r"2\.0\d* bytes/token",
         r"loader, context 256 batch 8: [\d.]+ ms per batch = [\d.]+% of a 124M A100 step"],
    ),
    "bench_convert": ([], [r"wall time : [\d.]+ s", r"peak RSS  : \d+ MiB = [\d.]+x the checkpoint"]),
    "bench_compile": (
        ["--rounds", "1"],
        [rf"training step, compiled / eager speed: {RATIO}",
         rf"static-cache greedy decoding, compiled / eager speed: {RATIO}"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_runs_offline_and_prints_its_ratios(name, tmp_path):
    flags, expected = BENCHMARKS[name]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for pattern in expected:
        assert re.search(pattern, done.stdout), (pattern, done.stdout[-3000:])
