"""Dropout with cheaper masks on CPU: the same distribution as `F.dropout`, drawn in fewer passes over memory.

torch's CPU dropout draws a Bernoulli variate per element, about 7 ns each on two cores: a fifth of a 124M bf16
training step. `FastDropout` draws 15-bit uniform integers instead, four from each 64-bit draw of torch's generator
(or, for large masks, from the compiled counter-based generator of `gptlite.speedups.kernels`), so the rate is
rounded to a multiple of 2^-15 (0.1 becomes 0.100006) and kept values are scaled by the exact 1/keep of that rate.
The masks come from torch's default generator, so `torch.manual_seed` and resumed checkpoints repeat them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import compiled_available, hashed_dropout


def _keep_mask(shape: torch.Size, p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1 where an element is kept, 0 where dropped (with probability p rounded to a multiple of 2^-15), in `dtype`.

    torch's CPU dropout draws a Bernoulli variate per element, about 7 ns each on two cores: a fifth of a 124M
    training step. Here one 64-bit draw serves four elements, 15 random bits each, compared as integers.
    """
    dropped = round(p * 32768)  # of 32768 equally likely values, this many drop the element
    n = math.prod(shape)
    # random_() fills int64 with 63 random bits (15% cheaper per bit than int32's 31); each 16-bit quarter
    # keeps 15 of them.
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_()
    uniform15 = bits.view(torch.int16).bitwise_and_(0x7FFF)[:n].view(shape)
    # The comparison writes straight into `dtype`: converting a bool tensor afterwards costs 4x more on CPU.
    return torch.ge(uniform15, dropped, out=torch.empty(shape, dtype=dtype, device=device))


def keep_scale(p: float) -> float:
    """1 / the keep probability that _keep_mask really uses: kept values are scaled by it to stay unbiased."""
    dropped = round(p * 32768)
    return 32768 / (32768 - dropped)


class _MaskedDropout(torch.autograd.Function):
    """Dropout with _keep_mask's masks (0.1 becomes 0.100006): one multiply each way by the scaled mask."""

    @staticmethod
    def forward(ctx, x, p):
        mask = _keep_mask(x.shape, p, x.dtype, x.device).mul_(keep_scale(p))  # 0 or the scale
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad_output):
        (mask,) = ctx.saved_tensors
        return grad_output * mask, None


# From this many elements on, a mask is drawn by the compiled kernel of kernels.py (a 124M model's smallest mask
# has 1.6M at batch 8); smaller ones, as in tiny models, are not worth compiling it for.
COMPILED_MASK_ELEMENTS = 1 << 18


def drop(x: torch.Tensor, p: float, scale: bool) -> torch.Tensor:
    """x with elements dropped at rate p (a multiple of 2^-15) on CPU, the others scaled by 1/keep if `scale`."""
    kept_scale = keep_scale(p) if scale else 1.0
    if x.numel() >= COMPILED_MASK_ELEMENTS and compiled_available() and not torch.compiler.is_compiling():
        return hashed_dropout(x, round(p * 32768), kept_scale)
    if scale:
        return _MaskedDropout.apply(x, p)
    return x * _keep_mask(x.shape, p, x.dtype, x.device)


def apply_dropout(x: torch.Tensor, p: float, training: bool, fast: bool = False) -> torch.Tensor:
    """`F.dropout`, or with `fast` on CPU the same in distribution with cheaper masks (_keep_mask, kernels.py)."""
    if not training or p == 0.0:
        return x
    if fast and x.device.type == "cpu" and 0.0 < p < 1.0:
        return drop(x, p, scale=True)
    return F.dropout(x, p=p, training=True)


class FastDropout(nn.Dropout):
    """`nn.Dropout` whose masks are drawn the fast way on CPU (elsewhere it is `nn.Dropout`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_dropout(x, self.p, self.training, fast=True)


__all__ = ["FastDropout", "apply_dropout", "drop", "keep_scale"]
