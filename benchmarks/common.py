"""Shared helpers for the side-by-side benchmarks: identical models, timers, peak memory, matmul peak."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading
import time
from dataclasses import dataclass

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gptlite import GPTLiteConfig, GPTLiteForCausalLM
from gptlite.training.throughput import training_flops_per_token

__all__ = ["Measurement", "gpt124m_pair", "matmul_peak_flops", "native_bf16", "peak_memory", "training_flops_per_token"]


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


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_in_use_reader():
    """Bytes that malloc has handed out and not taken back (glibc's mallinfo2), or None elsewhere.

    Unlike RSS, this falls when tensors are freed even though the process keeps the memory (see
    keep_freed_memory), so two models measured one after the other in one process each get their own peak.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2

    def read() -> int:
        info = mallinfo2()
        return info.uordblks + info.hblkhd  # in use from the heap arenas + in use as separate mmaps

    return read


_heap_in_use = _heap_in_use_reader()


@contextlib.contextmanager
def peak_memory():
    """Sample every 2 ms; yields a dict whose 'peak' is the most memory in use above the start, in bytes.

    Memory in use is malloc's allocated bytes where glibc tells them, else the process RSS.
    """
    read = _heap_in_use or rss_bytes
    result = {"start": read(), "peak": read()}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            result["peak"] = max(result["peak"], read())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result["peak"] = max(result["peak"], read()) - result["start"]


def matmul_peak_flops(dtype: torch.dtype, repeats: int = 10) -> float:
    """Best sustained FLOP/s of matrix multiplies in `dtype` on this machine, measured now.

    The best over a square 2048 product and the 124M model's own training shapes, each timed `repeats`
    times after warm-up: one slow run (a neighbour's burst, a cold cache) must not lower the peak.
    """
    shapes = [(2048, 2048, 2048), (2048, 768, 3072), (2048, 3072, 768), (2048, 768, 768)]
    best = 0.0
    for m, k, n in shapes:
        generator = torch.Generator().manual_seed(0)  # leaves the global generator to the models
        a, b = torch.randn(m, k, dtype=dtype, generator=generator), torch.randn(k, n, dtype=dtype, generator=generator)
        for _ in range(3):
            a @ b
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - start))
    return best


@dataclass
class Measurement:
    name: str
    tokens_per_s: float
    peak_mb: float
    extra: str = ""

    def row(self) -> str:
        memory = "" if self.peak_mb != self.peak_mb else f"{self.peak_mb:.0f} MB peak"  # NaN: not measured
        return f"{self.name:<44} {self.tokens_per_s:>10.1f} tok/s {memory:>14}  {self.extra}"
