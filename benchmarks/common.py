"""Shared helpers for the side-by-side benchmarks: identical models, timers, peak memory, matmul peak."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gptlite import GPTLiteConfig, GPTLiteForCausalLM


def gpt124m_pair(context_length: int = 256, drop_rate: float = 0.1) -> tuple[GPTLiteForCausalLM, GPT2LMHeadModel]:
    """gptlite and transformers' GPT-2 at the book's 124M shape (tied head, q/k/v biases).

    Speed does not depend on the values, so each side keeps its own random initialisation.
    """
    config = GPTLiteConfig(context_length=context_length, drop_rate=drop_rate, qkv_bias=True, tie_word_embeddings=True)
    ours = GPTLiteForCausalLM(config)
    theirs = GPT2LMHeadModel(
        GPT2Config(n_positions=context_length, resid_pdrop=drop_rate, embd_pdrop=drop_rate, attn_pdrop=drop_rate)
    )
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    return ours, theirs


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated, ~100x slower."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def peak_rss():
    """Sample the process RSS every 2 ms; yields a dict whose 'delta' is the peak above the start."""
    result = {"start": rss_bytes(), "peak": rss_bytes()}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            result["peak"] = max(result["peak"], rss_bytes())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result["delta"] = result["peak"] - result["start"]


def matmul_peak_flops(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """Best sustained FLOP/s of an n×n×n matmul in `dtype` on this machine, measured now."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def training_flops_per_token(n_params_no_emb: int, n_layers: int, emb_dim: int, context: int, vocab: int) -> float:
    """Model FLOPs per trained token (PaLM appendix B): 6·N for the weights incl. the vocabulary projection,
    plus 12·L·d·T for attention scores and values."""
    return 6 * (n_params_no_emb + vocab * emb_dim) + 12 * n_layers * emb_dim * context


@dataclass
class Measurement:
    name: str
    tokens_per_s: float
    peak_mb: float
    extra: str = ""

    def row(self) -> str:
        return f"{self.name:<44} {self.tokens_per_s:>10.1f} tok/s {self.peak_mb:>9.0f} MB  {self.extra}"
