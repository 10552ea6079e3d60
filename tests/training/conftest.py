"""Shared pieces of the training tests: a generated corpus, tiny settings, subprocess helpers, and the fixtures
several modules use (the corpus, the uninterrupted reference run, terminal signal handlers, a fresh Accelerate).

Tests import the plain helpers as ``from tests.training.conftest import ...``; fixtures need no import."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gptlite.tokenization import EOT_ID, get_tokenizer
from gptlite.training.config import TrainConfig
from gptlite.training.loop import train
from tests.conftest import reset_accelerate

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


def generated_text(n_words: int, seed: int = 0) -> str:
    """Sentences of the-verdict's words with punctuation: text whose tokenization is not one token per word."""
    rng = random.Random(seed)
    words = ["the", "painter", "said", "quietly", "Gisburn", "villa", "sketch", "--", "and", "never", "again"]
    lines = []
    for _ in range(n_words // 12):
        lines.append(" ".join(rng.choice(words) for _ in range(12)) + rng.choice([".", "!", "?", ","]))
    return "\n".join(lines) + "\n"


def joined(docs: list[str]) -> list[int]:
    """The token ids of ``docs`` joined by <|endoftext|>, as one list in memory (the pre-cache way)."""
    enc = get_tokenizer()
    out: list[int] = []
    for i, doc in enumerate(docs):
        out += ([] if i == 0 else [EOT_ID]) + enc.encode(doc, disallowed_special=())
    return out


@pytest.fixture
def fresh_accelerate_state():
    """Each run starts as a new program would. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")``."""
    yield
    reset_accelerate()


@pytest.fixture
def terminal_signal_handlers():
    """SIGINT and SIGTERM as a terminal starts a program, whatever launched pytest (a script's `pytest &`
    ignores SIGINT, which gptlite then leaves ignored). Opt in with ``usefixtures``."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@pytest.fixture(scope="module")
def corpus_words() -> int:
    """How many words the module's ``corpus`` has; a module overrides this fixture to change it."""
    return 2400


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, corpus_words):
    """One generated corpus per module: its runs share the token cache's input."""
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt", n_words=corpus_words)


@pytest.fixture(scope="module")
def uninterrupted_settings() -> dict:
    """``tiny_config`` overrides of the module's ``uninterrupted`` run; a module overrides this fixture."""
    return {}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus, uninterrupted_settings):
    """The reference a stopped and resumed run must equal: the same run, never stopped.
    (result, weights of the saved model, the folder holding ``run/``)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    result = train(tiny_config(folder, corpus, **uninterrupted_settings))
    reset_accelerate()
    return result, weights(folder / "run"), folder
