"""Shared helpers for the side-by-side benchmarks: identical models, timers, peak memory."""

from __future__ import annotations

import contextlib
import ctypes
import os
import statistics
import threading
import time
from dataclasses import dataclass

from transformers import GPT2Config, GPT2LMHeadModel

from gptlite import GPTLiteConfig, GPTLiteForCausalLM
from gptlite._libc import libc

__all__ = ["Measurement", "gpt124m_pair", "gpt_pair", "peak_memory", "ratio_text", "rotated"]


def gpt124m_pair(context_length: int = 256, drop_rate: float = 0.1) -> tuple[GPTLiteForCausalLM, GPT2LMHeadModel]:
    """gptlite and transformers' GPT-2 at the book's 124M shape (tied head, q/k/v biases)."""
    return gpt_pair(context_length, drop_rate)


def gpt_pair(
    context_length: int = 256, drop_rate: float = 0.1, emb_dim: int = 768, n_layers: int = 12, n_heads: int = 12
) -> tuple[GPTLiteForCausalLM, GPT2LMHeadModel]:
    """gptlite and transformers' GPT-2 of one shape (GPT-2's vocabulary, tied head, q/k/v biases).

    Speed does not depend on the values, so each side keeps its own random initialisation.
    """
    config = GPTLiteConfig(context_length=context_length, drop_rate=drop_rate, qkv_bias=True, tie_word_embeddings=True,
                           emb_dim=emb_dim, n_layers=n_layers, n_heads=n_heads)
    ours = GPTLiteForCausalLM(config)
    theirs = GPT2LMHeadModel(GPT2Config(n_positions=context_length, n_embd=emb_dim, n_layer=n_layers, n_head=n_heads,
                                        resid_pdrop=drop_rate, embd_pdrop=drop_rate, attn_pdrop=drop_rate))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    return ours, theirs


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
    mallinfo2 = getattr(libc(), "mallinfo2", None)
    if mallinfo2 is None:
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


@dataclass
class Measurement:
    name: str
    tokens_per_s: float
    peak_mb: float
    extra: str = ""

    def row(self) -> str:
        memory = "" if self.peak_mb != self.peak_mb else f"{self.peak_mb:.0f} MB peak"  # NaN: not measured
        return f"{self.name:<44} {self.tokens_per_s:>10.1f} tok/s {memory:>14}  {self.extra}"


def rotated(names: list[str], round_index: int) -> list[str]:
    """The sides' order in one round: each round starts one side later, so no side always runs first."""
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def ratio_text(ours: list[float], theirs: list[float]) -> str:
    """gptlite's speed over transformers' from their times per round: the ratio of the medians, and its range."""
    pairs = [t / o for o, t in zip(ours, theirs)]
    return f"{statistics.median(theirs) / statistics.median(ours):.2f}x (rounds {min(pairs):.2f}-{max(pairs):.2f}x)"
