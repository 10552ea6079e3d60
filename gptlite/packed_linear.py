"""`Linear`: `nn.Linear` whose CPU inference on a few rows (decoding) reads a weight packed once for the CPU.

Decoding one token multiplies a handful of rows by every weight matrix, so its speed is how fast the weights stream
from memory. A plain bf16 `F.linear` re-lays the weight out for the CPU's matrix units (AMX, AVX-512 BF16) on every
call, and an fp32 matrix-vector product goes through MKL's unpacked path. Here the weight is reordered once, by
oneDNN for bf16 and by MKL's packed GEMM for fp32 (what inductor's CPU freezing does), and reused until the
weight changes. The results are the same numbers: bit for bit in bf16 and for fp32 products of 2 rows or more, and
within fp32's rounding for one row (`tests/test_packed_linear.py`).

The packed copy costs the weight's size again in memory, so it is made only where it pays: eval mode, no gradient
wanted, CPU, bf16 or fp32 weights and inputs, no autocast, not under torch.compile (inductor packs by itself), at
most `MAX_PACKED_ROWS` rows. `train()` drops it, and a changed weight (an optimizer step, `load_state_dict`,
`.to()`) is packed anew on its next use.

This file travels to the Hub with the model (a relative import of `modeling_gptlite.py`): it imports only torch.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

# Above this many rows a product is bound by arithmetic, not by reading the weight: packing would buy nothing.
MAX_PACKED_ROWS = 16


def _backend_supports(dtype: torch.dtype) -> bool:
    if dtype == torch.bfloat16:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if dtype == torch.float32:
        return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")
    return False


_SUPPORTED = {dtype: _backend_supports(dtype) for dtype in (torch.bfloat16, torch.float32)}

# Linear module -> (the weight's identity when packed, packed weight). Kept beside the modules rather than on
# them, so that copying, pickling or saving a model never meets an opaque oneDNN tensor.
_PACKED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, torch.Tensor]] = weakref.WeakKeyDictionary()


def _weight_identity(weight: torch.Tensor) -> tuple | None:
    try:
        version = weight._version  # bumped by every in-place change: optimizer steps, load_state_dict's copy_
    except RuntimeError:  # an inference tensor (weights made under inference_mode) has no version counter
        return None
    return weight.data_ptr(), version, weight.dtype, tuple(weight.shape)


def _wants_packed(module: nn.Module, x: torch.Tensor) -> bool:
    weight = module.weight
    return (
        not module.training
        and x.device.type == "cpu"
        and x.dtype == weight.dtype
        and _SUPPORTED.get(weight.dtype, False)
        and x.numel() <= MAX_PACKED_ROWS * x.shape[-1]
        and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and type(weight) in (nn.Parameter, torch.Tensor)  # not a tensor subclass (quantized, DTensor, ...)
        and weight.layout == torch.strided
        and weight.is_contiguous()
        and (module.bias is None or module.bias.dtype == weight.dtype)
    )


def _packed_weight(module: nn.Module) -> torch.Tensor | None:
    weight = module.weight
    identity = _weight_identity(weight)
    if identity is None:
        return None
    cached = _PACKED.get(module)
    if cached is not None and cached[0] == identity:
        return cached[1]
    with torch.no_grad():
        if weight.dtype == torch.bfloat16:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)
        else:
            packed = torch.ops.mkl._mkl_reorder_linear_weight(weight.detach(), 1)
    _PACKED[module] = (identity, packed)
    return packed


class Linear(nn.Linear):
    """`nn.Linear`, with decoding on a CPU reading its weight packed once for the CPU (see the module's docs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _wants_packed(self, x):
            packed = _packed_weight(self)
            if packed is not None:
                if self.weight.dtype == torch.bfloat16:
                    return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")
                # MKL's packed GEMM takes the rows as a matrix: (..., in) -> (rows, in) -> (..., out)
                out = torch.ops.mkl._mkl_linear(x.reshape(-1, x.shape[-1]), packed, self.weight, self.bias, 1)
                return out.view(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)

    def train(self, mode: bool = True) -> Linear:
        if mode:
            _PACKED.pop(self, None)  # training changes the weight at every step: the copy would only cost memory
        return super().train(mode)


def packed_weight_bytes() -> int:
    """Memory held by packed weights right now, in bytes (for benchmarks and tests)."""
    return sum(packed.numel() * packed.element_size() for _, packed in list(_PACKED.values()))


__all__ = ["MAX_PACKED_ROWS", "Linear", "packed_weight_bytes"]
