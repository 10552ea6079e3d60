"""Model FLOP utilisation: the model's training FLOPs per token against the device's matmul peak.

GPUs answer from a table of their datasheet dense peaks; CPUs (and GPUs missing from the table) are
measured: the best of a few matrix multiplies in the training dtype, timed once per process.
"""

from __future__ import annotations

import functools
import time

import torch

__all__ = [
    "DATASHEET_PEAKS",
    "cpu_has_native_bf16",
    "device_peak_flops",
    "measure_matmul_peak",
    "model_flops_per_token",
    "training_flops_per_token",
]

# Dense (no sparsity) tensor-core peaks in FLOP/s from NVIDIA's datasheets: bf16/fp16, and tf32 for fp32 work.
DATASHEET_PEAKS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989e12, "fp32": 494e12},
    "H100 SXM": {"bf16": 989e12, "fp32": 494e12},
    "H100 PCIe": {"bf16": 756e12, "fp32": 378e12},
    "H100 NVL": {"bf16": 835e12, "fp32": 418e12},
    "H100": {"bf16": 989e12, "fp32": 494e12},  # "NVIDIA H100 80GB HBM3" is the SXM part
    "A100": {"bf16": 312e12, "fp32": 156e12},
    "A10G": {"bf16": 70e12, "fp32": 35e12},
    "A10": {"bf16": 125e12, "fp32": 62.5e12},
    "L40S": {"bf16": 362e12, "fp32": 183e12},
    "L40": {"bf16": 181e12, "fp32": 90.5e12},
    "L4": {"bf16": 121e12, "fp32": 60e12},
    "RTX 4090": {"bf16": 165e12, "fp32": 82.6e12},
    "RTX 3090": {"bf16": 71e12, "fp32": 35.6e12},
    "V100": {"bf16": 125e12, "fp32": 15.7e12},  # no bf16 tensor cores: the fp16 figure
    "T4": {"bf16": 65e12, "fp32": 8.1e12},
}


def training_flops_per_token(n_params_no_emb: int, n_layers: int, emb_dim: int, context: int, vocab: int) -> float:
    """Model FLOPs per trained token (PaLM, appendix B): 6·N for the weights including the vocabulary
    projection, plus 12·L·d·T for the attention scores and weighted values."""
    return 6 * (n_params_no_emb + vocab * emb_dim) + 12 * n_layers * emb_dim * context


def model_flops_per_token(model: torch.nn.Module, context: int) -> float:
    """:func:`training_flops_per_token` of a gptlite model at sequence length ``context``."""
    config = model.config
    n_params = sum(p.numel() for p in model.parameters())
    n_no_emb = n_params - model.model.tok_emb.weight.numel() - model.model.pos_emb.weight.numel()
    if not config.tie_word_embeddings:
        n_no_emb -= model.out_head.weight.numel()  # training_flops_per_token adds the head itself
    return training_flops_per_token(n_no_emb, config.n_layers, config.emb_dim, context, config.vocab_size)


def _datasheet_peak(name: str, precision: str) -> float | None:
    # Longest key first, so that "H100 SXM" wins over a shorter key that is also in the name.
    for key in sorted(DATASHEET_PEAKS, key=len, reverse=True):
        if key.lower() in name.lower():
            return DATASHEET_PEAKS[key][precision]
    return None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated, ~100x slower."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def measure_matmul_peak(
    device_type: str,
    dtype: torch.dtype,
    shapes: tuple[tuple[int, int, int], ...] = ((2048, 2048, 2048),),
    repeats: int = 5,
    warmup: int = 2,
) -> float:
    """Best FLOP/s of `(m, k) @ (k, n)` products over `shapes`, each timed `repeats` times after `warmup` runs
    (kernel selection, page faults): one slow run (a neighbour's burst, a cold cache) does not lower it."""
    best = 0.0
    for m, k, n in shapes:
        # A private generator: drawing from the global one would change a training run's dropout masks.
        generator = torch.Generator(device=device_type).manual_seed(0)
        a = torch.randn(m, k, dtype=dtype, device=device_type, generator=generator)
        b = torch.randn(k, n, dtype=dtype, device=device_type, generator=generator)
        for i in range(warmup + repeats):
            if device_type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            a @ b
            if device_type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                best = max(best, 2 * m * k * n / (time.perf_counter() - start))
    return best


@functools.cache
def _measured_peak(device_type: str, dtype: torch.dtype) -> float:
    return measure_matmul_peak(device_type, dtype)


def device_peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """``(FLOP/s, where the figure comes from)`` of dense matrix multiplies on ``device`` in ``precision``
    ("bf16", "fp16" or "fp32")."""
    precision = "bf16" if precision == "fp16" else precision
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = _datasheet_peak(name, precision)
        if peak is not None:
            return peak, f"{name} datasheet"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return _measured_peak(device.type, dtype), f"measured {str(dtype)[6:]} matmul"
