"""Compiled elementwise kernels for training on CPU: GPT-2's tanh GELU in bf16, and counter-based dropout masks.

Two elementwise costs dominate a bf16 training step on this project's 2-core machine once the matrix products
are as fast as they go:
- ATen's CPU GELU spends its time in a vectorised tanh (13 ms for the 6.3M activations of one 124M block at
  batch 8, and as long again for the gradient). The same function is x * sigmoid(2z), since
  0.5 * (1 + tanh(z)) = sigmoid(2z), and sigmoid is an exp: compiled, that form and its derivative run 2.2-2.5x
  faster, with results that differ from ATen's bf16 GELU by at most one bf16 rounding.
- torch's CPU generator (a Mersenne Twister) fills one value at a time on one thread. Here each element's
  random bits are SplitMix64's output for its index, from a 64-bit seed that the default generator draws for
  the whole tensor: a few multiplies and shifts that compile to one vectorised loop on all threads, 3-5x
  faster than dropout.py's mask from the Mersenne Twister. The backward pass recomputes the mask from the
  seed instead of keeping it. The seed comes from torch's generator, so `torch.manual_seed` and resumed
  checkpoints give the same masks.

Only these functions are compiled, never the model. Where torch.compile cannot build them (no C++ compiler),
each warns once and runs eagerly: ATen's GELU, and the dropout that asked for `compiled_available()` falls
back to its other masks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

_TWO_ROOT_2_OVER_PI = 2 * math.sqrt(2 / math.pi)  # tanh(z) = 2 sigmoid(2z) - 1, with z = sqrt(2/pi)(x + 0.044715x^3)
_CUBIC = 0.044715


def _sigmoid_2z(x32: torch.Tensor) -> torch.Tensor:
    # 0.5 * (1 + tanh(z)) for GELU's z, from fp32 x
    return torch.sigmoid(_TWO_ROOT_2_OVER_PI * x32 * (1 + _CUBIC * x32 * x32))


def _gelu_forward(x: torch.Tensor) -> torch.Tensor:
    x32 = x.float()
    return (x32 * _sigmoid_2z(x32)).to(x.dtype)


def _gelu_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # d/dx [x sigmoid(u)] = s + x s (1 - s) du/dx, with u = 2z and s = sigmoid(u).
    x32 = x.float()
    s = _sigmoid_2z(x32)
    du_dx = _TWO_ROOT_2_OVER_PI * (1 + 3 * _CUBIC * x32 * x32)
    return (grad.float() * (s + x32 * s * (1 - s) * du_dx)).to(grad.dtype)


# SplitMix64's increment and mixing constants, as int64 (torch multiplies int64 modulo 2^64).
_GAMMA = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX_1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX_2 = 0x94D049BB133111EB - (1 << 64)


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    # A logical shift: `>>` on int64 copies the sign bit in.
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _uniform15(x: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """A uniform integer in [0, 32768) per element of flat x: the top 15 bits of SplitMix64's output at its index."""
    z = (torch.arange(x.numel(), device=x.device) + seed) * _GAMMA
    z = (z ^ _shift_right(z, 30)) * _MIX_1
    z = (z ^ _shift_right(z, 27)) * _MIX_2
    z = z ^ _shift_right(z, 31)
    return _shift_right(z, 49)


def _masked(x: torch.Tensor, seed: torch.Tensor, dropped: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # 0 where dropped, else x * scale rounded once (computed in fp32, as ATen's dropout scales). The rate and the
    # scale are tensors so that one compiled kernel serves every rate.
    keep = _uniform15(x, seed) >= dropped
    return torch.where(keep, x.float() * scale, 0.0).to(x.dtype)


_compiled: dict[Callable, Callable] = {}
_unavailable: list[str] = []  # why torch.compile could not build the kernels, once it has failed


def compiled_available() -> bool:
    """False once torch.compile has failed to build a kernel in this process (then everything runs eagerly)."""
    return not _unavailable


def _flat(x: torch.Tensor) -> torch.Tensor:
    # Flat, detached and not a view: dynamo then guards only on the dtype (not on rank, base or requires_grad).
    return x.contiguous().view(-1).detach()


def _run(fn: Callable, fallback: Callable, *args):
    if not _unavailable:
        try:
            # Dynamic shapes from the start, and every kernel runs on flat tensors: one graph per dtype, far
            # from dynamo's limit of 8 per function (hitting it fails a fullgraph compile).
            if fn not in _compiled:
                _compiled[fn] = torch.compile(fn, fullgraph=True, dynamic=True)
            return _compiled[fn](*args)
        except Exception as error:  # noqa: BLE001 - any failure to build is the toolchain's; the maths is below
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            _unavailable.append(f"{type(error).__name__}: {first_line}")
            warnings.warn(
                f"gptlite: torch.compile could not build its CPU training kernels ({_unavailable[0]}); "
                "running them eagerly instead (same results where it matters, slower)",
                RuntimeWarning,
                stacklevel=4,
            )
    return fallback(*args)


def _aten_gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _aten_gelu_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_backward(grad, x, approximate="tanh")


class _TanhGELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _run(_gelu_forward, _aten_gelu, _flat(x)).view(x.shape)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return _run(_gelu_backward, _aten_gelu_backward, _flat(grad_output), _flat(x)).view(x.shape)


def applies(x: torch.Tensor) -> bool:
    """Whether `tanh_gelu` takes its compiled path for `x`: bf16 on CPU, outside any torch.compile of its own."""
    return x.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.compiler.is_compiling()


def tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    """`F.gelu(x, approximate="tanh")`, through the compiled kernels for bf16 on CPU (see the module docstring)."""
    if not applies(x):
        return F.gelu(x, approximate="tanh")
    return _TanhGELU.apply(x)


class _HashedDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dropped, scale):
        seed = torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64)  # from the default generator
        rate = (torch.tensor(dropped, dtype=torch.int64), torch.tensor(scale, dtype=torch.float32))
        ctx.save_for_backward(seed, *rate)
        return _run(_masked, _masked, _flat(x), seed, *rate).view(x.shape)

    @staticmethod
    def backward(ctx, grad_output):
        # The same seed and indices give the same mask: recomputed rather than kept from the forward pass.
        grad = _run(_masked, _masked, _flat(grad_output), *ctx.saved_tensors)
        return grad.view(grad_output.shape), None, None


def hashed_dropout(x: torch.Tensor, dropped: int, scale: float) -> torch.Tensor:
    """Zero each element of CPU tensor `x` with probability dropped / 32768, multiply the rest by `scale`.

    The mask is SplitMix64's (see the module docstring), from one seed drawn from torch's default generator.
    """
    return _HashedDropout.apply(x, dropped, scale)


class FusedGELU(torch.nn.Module):
    """The book's GELU, through the compiled kernels in bf16 CPU training (`tanh_gelu`); ATen's elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return tanh_gelu(x)
        return F.gelu(x, approximate="tanh")


__all__ = ["FusedGELU", "applies", "compiled_available", "hashed_dropout", "tanh_gelu"]
