"""`DecodingLinear`: `nn.Linear` with the fastest CPU kernel for decoding, where a few rows meet every weight matrix.

Decoding one token multiplies a handful of rows by every weight, so its speed is how fast the kernels stream
the weights. In bf16, torch's default route (oneDNN's AMX matmul) does that poorly for so few rows. Measured over
the 124M model's 73 weight matrices on this project's CPU (2 cores of a Sapphire Rapids Xeon; benchmarks say so
for the whole model):
- one row (batch 1): ATen's own bf16 matrix-vector kernel, reached by bypassing oneDNN for that one product,
  takes 25 ms where oneDNN takes 38 (reading the weights once: 17 ms);
- 2 to 16 rows (a batch of sequences, one new position each): oneDNN with the weight reordered once for the CPU's
  matrix units and reused (what inductor's CPU freezing does) takes 29 ms where the plain call, which reorders
  every time, takes 37; ATen's kernel takes 130.
fp32 keeps `F.linear`: MKL's matrix-vector product already reads the weights as fast as a plain sum does.

Only inference is changed: eval mode, no gradient wanted, CPU, bf16 weights and inputs, no autocast, not under
torch.compile (inductor chooses its own kernels). The packed copy costs the weight's size again in memory, so it
is made only for decoding steps of 2..`MAX_PACKED_ROWS` sequences (inputs of shape (b, 1, in)), dropped by
`train()`, and redone when the weight changes (an optimizer step, `load_state_dict`, `.to()`). Results are bf16
products like `F.linear`'s, fp32-accumulated: the packed route gives the same bits, the one-row route may differ
in the last bit (`tests/speedups/test_decoding.py`).

On a loaded model, `speed_up` puts a `DecodingLinear` in place of every `nn.Linear`, sharing its parameters.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

# Above this many rows a product is bound by arithmetic, not by reading the weight: packing buys nothing.
MAX_PACKED_ROWS = 16

_ONEDNN_BF16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()

# Linear module -> (the weight's identity when packed, packed weight). Kept beside the modules rather than on
# them, so that copying, pickling or saving a model never meets an opaque oneDNN tensor.
_PACKED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, torch.Tensor]] = weakref.WeakKeyDictionary()


def _weight_identity(weight: torch.Tensor) -> tuple | None:
    try:
        version = weight._version  # bumped by every in-place change: optimizer steps, load_state_dict's copy_
    except RuntimeError:  # an inference tensor (weights made under inference_mode) has no version counter
        return None
    return weight.data_ptr(), version, weight.dtype, tuple(weight.shape)


def _bf16_inference(module: nn.Module, x: torch.Tensor) -> bool:
    weight = module.weight
    return (
        _ONEDNN_BF16
        and not module.training
        and weight.dtype == torch.bfloat16
        and x.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and type(weight) in (nn.Parameter, torch.Tensor)  # not a tensor subclass (quantized, DTensor, ...)
        and weight.layout == torch.strided
        and weight.is_contiguous()
        and (module.bias is None or module.bias.dtype == torch.bfloat16)
    )


def _one_row(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # ATen's matrix-vector kernel; torch would hand a bf16 product to oneDNN whenever oneDNN is enabled.
    # The switch is process-wide but only chooses among correct kernels, so a concurrent product elsewhere
    # is at worst slower for these microseconds.
    # (F.linear reaches it as a transposed GEMM with one row; torch.addmv's bf16 bias path is 15x slower.)
    enabled = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        return F.linear(x, module.weight, module.bias)
    finally:
        torch._C._set_mkldnn_enabled(enabled)


def _packed_weight(module: nn.Module) -> torch.Tensor | None:
    weight = module.weight
    identity = _weight_identity(weight)
    if identity is None:
        return None
    cached = _PACKED.get(module)
    if cached is not None and cached[0] == identity:
        return cached[1]
    with torch.no_grad():
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), MAX_PACKED_ROWS)
    _PACKED[module] = (identity, packed)
    return packed


class DecodingLinear(nn.Linear):
    """`nn.Linear`, with bf16 decoding on a CPU through the kernels measured fastest (see the module's docs)."""

    @classmethod
    def sharing(cls, linear: nn.Linear) -> DecodingLinear:
        """A DecodingLinear holding `linear`'s own parameters (ties and optimizer references stay intact)."""
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        module.weight, module.bias = linear.weight, linear.bias
        module.train(linear.training)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _bf16_inference(self, x):
            rows = x.numel() // x.shape[-1]
            if rows == 1:
                return _one_row(self, x)
            # Only decoding steps (one new position per sequence) pack: a prompt runs once per generate call,
            # so a packed copy made for it would cost memory without being reused.
            if rows <= MAX_PACKED_ROWS and x.dim() == 3 and x.shape[1] == 1:
                packed = _packed_weight(self)
                if packed is not None:
                    return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def train(self, mode: bool = True) -> DecodingLinear:
        if mode:
            _PACKED.pop(self, None)  # training changes the weight at every step: the copy would only cost memory
        return super().train(mode)


def packed_weight_bytes() -> int:
    """Memory held by packed weights right now, in bytes (for benchmarks and tests)."""
    return sum(packed.numel() * packed.element_size() for _, packed in list(_PACKED.values()))


__all__ = ["MAX_PACKED_ROWS", "DecodingLinear", "packed_weight_bytes"]
