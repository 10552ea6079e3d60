"""Shared pieces of the training-loop tests: a generated corpus, tiny settings, subprocess helpers."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gptlite.training.config import TrainConfig

WORDS = (
    "the for statement is used to iterate over elements of a sequence such as string tuple or list "
    "while loop repeats body as long as expression true break continue else clause executed when"
).split()


def write_corpus(path: Path, n_words: int = 3000, seed: int = 0) -> Path:
    """A plain-text file of ``n_words`` words drawn from a small vocabulary (about 1.1 tokens per word)."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(n_words // 12)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_config(tmp_path: Path, corpus: Path, **overrides) -> TrainConfig:
    """A 2-layer, 32-wide model on 32-token windows: a step takes milliseconds."""
    settings = {
        "data": [str(corpus)],
        "cache_dir": str(tmp_path / "token-cache"),
        "output_dir": str(tmp_path / "run"),
        "emb_dim": 32,
        "n_layers": 2,
        "n_heads": 2,
        "context_length": 32,
        "batch_size": 4,
        "epochs": 1,
        "eval_freq": 5,
        "eval_iter": 2,
        "drop_rate": 0.0,
        "start_context": "the for",
        "sample_tokens": 5,
        "peak_lr": 5e-3,
    }
    return TrainConfig.from_flat({**settings, **overrides})


def config_flags(config: TrainConfig) -> list[str]:
    """The ``gptlite-train`` flags that reproduce ``config``."""
    flags = []
    for name, value in config.to_dict().items():
        option = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(option if value else f"--no-{name.replace('_', '-')}")
        elif isinstance(value, list):
            if value:
                flags += [option, *map(str, value)]
        elif value is not None:
            flags += [option, str(value)]
    return flags


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    """Environment for child processes: offline, one thread each (the machine has two cores), repo importable."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        HF_HOME=str(tmp_path / "hf-home"),
        PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")]),
    )
    return env


def train_command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "gptlite.training", *flags]


def run(cmd: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def max_abs_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def tree_hashes(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative paths), leaving out paths starting with ``skip``."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not str(p.relative_to(folder)).startswith(skip)}


def folder_logits(folder: Path) -> torch.Tensor:
    """The logits a saved model gives on a fixed input, loaded from ``folder`` as a user would."""
    from gptlite.modeling_gptlite import GPTLiteForCausalLM

    model = GPTLiteForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(torch.arange(8).unsqueeze(0)).logits


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Autouse in the modules that import it: each run starts as a new program would, on one thread."""
    # Accelerate keeps process-wide singletons (AcceleratorState, GradientState): reset them after each test.
    from accelerate.state import AcceleratorState, GradientState

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is as fast and immune to a busy machine
    yield
    torch.set_num_threads(threads)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
