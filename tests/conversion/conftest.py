"""Tiny random models and checks shared by the conversion tests (no network, no downloads).

Tests import them as ``from tests.conversion.conftest import ...``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, PreTrainedModel

import gptlite  # noqa: F401  (registers gptlite with the Auto classes)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OPENAI_TINY = FIXTURES / "openai-tiny"
ATOL = 1e-5


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial values everywhere: default init leaves LayerNorms at 1/0 and biases at 0, which
    would hide a swapped or dropped tensor."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator)
        is_gain = name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight", ".scale"))
        param.copy_(1.0 + 0.1 * noise if is_gain else 0.2 * noise)
    return model


def tiny_gpt2(
    *, tied: bool = True, vocab: int = 100, positions: int = 24, embd: int = 32, heads: int = 4,
    layers: int = 2, **overrides,
) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=vocab, n_positions=positions, n_embd=embd, n_head=heads, n_layer=layers,
        tie_word_embeddings=tied, bos_token_id=vocab - 1, eos_token_id=vocab - 1, **overrides,
    )
    return randomize_(GPT2LMHeadModel(config)).eval()


def tokens(vocab: int, length: int = 12, batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def max_diff(a: PreTrainedModel, b: PreTrainedModel, ids: torch.Tensor) -> float:
    return (a(ids).logits - b(ids).logits).abs().max().item()


@torch.no_grad()
def greedy(model: PreTrainedModel, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    pad = model.config.eos_token_id
    return model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)


def safetensors_keys(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    with safe_open(path, framework="pt") as f:
        return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}


def tree_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@torch.no_grad()
def folder_logits(folder: Path) -> torch.Tensor:
    """Logits of the model saved in `folder` (gptlite or plain GPT-2), loaded as a user would."""
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return model(tokens(model.config.vocab_size, length=8, batch=1)).logits


def snapshot(folder: Path) -> tuple[dict[str, str], torch.Tensor]:
    return tree_hashes(folder), folder_logits(folder)


def assert_intact(folder: Path, before: tuple[dict[str, str], torch.Tensor]) -> None:
    """`folder` is byte-identical to `before`, still loads, and computes the same logits; no sibling is left."""
    assert tree_hashes(folder) == before[0]
    assert torch.equal(folder_logits(folder), before[1])
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")] == []
