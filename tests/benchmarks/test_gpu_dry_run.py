"""benchmarks/gpu.py stays runnable: its --dry-run (tiny sizes, CPU) goes through every section."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_benchmark_dry_run(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for expected in ("gptlite torch.compile", "gptlite best / transformers best", "gptlite-train eager",
                     "bfloat16 batch 8: gptlite / transformers", "float32 batch 1: gptlite / transformers",
                     "refuses the FSDP config (accelerate would run DDP): yes", "all checks passed"):
        assert expected in out, expected
    assert "float32 batch 1: gptlite / transformers" in out and "identical tokens" in out
