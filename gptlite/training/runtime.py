"""What a training run sets up before its first step: the Accelerator, process-wide settings, seeding, model, optimizer.

Both loops (:mod:`gptlite.training.loop` and the book-exact :mod:`gptlite.training.book_exact`) and
``gptlite-eval`` build on these, so none of them imports another.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed

from gptlite._libc import libc
from gptlite.loading import load_model
from gptlite.modeling_gptlite import GPTLiteForCausalLM
from gptlite.speedups import speed_up
from gptlite.training.config import OptimSettings, TrainConfig
from gptlite.training.throughput import cpu_has_native_bf16

__all__ = ["build_model", "build_optimizer", "keep_freed_memory", "make_accelerator", "seed_everything", "use_tf32"]


def _has_accelerator() -> bool:
    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def make_accelerator(
    mixed_precision: str | None = None,
    grad_accum: int = 1,
    report_to: list[str] | None = None,
    output_dir: str | Path | None = None,
):
    """An ``Accelerator`` for gptlite's loop.

    Without a GPU it is built with ``cpu=True``: then ``accelerate launch --multi_gpu --num_processes N``
    on a CPU-only machine starts ``N`` processes that form a gloo group (``accelerate launch --cpu``
    starts only one, accelerate issue 2741). The scheduler is stepped by the loop once per optimizer
    step (Accelerate would otherwise step it once per process), and gradients synchronise every
    ``grad_accum`` batches regardless of where the loader stands (the loop fetches a step's batches first).
    """

    on_cpu = not _has_accelerator()
    if on_cpu and mixed_precision == "fp16":
        raise ValueError("--mixed-precision fp16 needs a GPU; on CPU use bf16 or no")
    if on_cpu and mixed_precision == "bf16" and not cpu_has_native_bf16():
        warnings.warn("--mixed-precision bf16: this CPU has no AVX512-BF16 or AMX, so bf16 matrix multiplies are "
                      "emulated and much slower than fp32; --mixed-precision no is faster here", stacklevel=2)
    project = None
    if output_dir is not None:
        project = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(Path(output_dir) / "logs"))
    accelerator = Accelerator(
        cpu=on_cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=grad_accum, sync_with_dataloader=False),
        log_with=list(report_to) if report_to else None,
        project_config=project,
        step_scheduler_with_optimizer=False,
    )
    # accelerate (1.15) turns an FSDP config into FSDP only on GPU-like devices: on CPU it trains with plain
    # DDP without a word (torch's own fully_shard does work on CPU with gloo; accelerate does not route to it).
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and accelerator.distributed_type != "FSDP":
        raise ValueError(f"the accelerate config asks for FSDP, but accelerate runs it as "
                         f"{accelerator.distributed_type.value} here (it shards only on GPUs); on CPU launch with "
                         "--multi_gpu (DDP) instead")
    return accelerator


def keep_freed_memory(device: torch.device) -> None:
    """On CPU under glibc, stop ``free`` from handing large blocks back to the OS (a process-wide setting).

    Every step allocates and frees vocabulary-sized logits (hundreds of MB). glibc serves blocks that
    large with ``mmap`` and unmaps them on free, so each step page-faults them in again: a third of the
    CPU time went to the kernel, and keeping the memory made steps about 1.5x faster on two cores.
    """
    mallopt = getattr(libc(), "mallopt", None) if device.type == "cpu" else None
    if mallopt is None:  # not Linux with glibc (e.g. musl): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, 1 << 30)
    mallopt(m_trim_threshold, (1 << 31) - 1)


def use_tf32(device: torch.device, enabled: bool = True) -> None:
    """On CUDA, let fp32 matmuls run on TF32 tensor cores (a process-wide setting); CPU matmuls stay exact."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if enabled else "highest")


def seed_everything(seed: int) -> None:
    """The run's only global seeding: Python's, NumPy's and torch's generators (model init, dropout)."""

    set_seed(seed)


def build_model(config: TrainConfig, notice: Callable[[str], None] | None = None):
    """A fresh model with ``config``'s architecture, or the ``--init-from`` model with its dropout and attention,
    sped up for training (:func:`gptlite.speedups.speed_up`: fast dropout, compiled GELU, fused loss).

    ``notice`` receives the one line saying that a plain GPT-2 ``--init-from`` was converted (None: stderr).
    """

    settings = config.model
    if settings.init_from is None:
        model = GPTLiteForCausalLM(config.model_config())
        model.set_attn_implementation(settings.attn_implementation)
    else:

        model = load_model(
            settings.init_from,
            dtype=torch.float32,
            overrides={"drop_rate": settings.drop_rate},
            attn_implementation=settings.attn_implementation,
            notice=notice,
        )
        if config.data.context_length > model.config.context_length:
            raise ValueError(
                f"--context-length {config.data.context_length} exceeds the context_length "
                f"{model.config.context_length} of --init-from {settings.init_from}"
            )
    return speed_up(model.train(), training=True, fast_dropout=settings.fast_dropout, fused_gelu=settings.fused_gelu)


def build_optimizer(model: torch.nn.Module, optim: OptimSettings, fused: bool = True) -> torch.optim.AdamW:
    """The book's AdamW (weight decay on every parameter), with the fused kernel unless ``fused=False`` (the
    book's own default implementation, which book-exact runs keep).

    torch has fused AdamW for CUDA and CPU: one pass over each parameter instead of a dozen elementwise
    kernels, 6-8x faster on this project's 2-core CPU at 124M parameters (the for-each version's passes are
    memory-bound).
    """
    device_type = next(model.parameters()).device.type
    fused = fused and device_type in ("cuda", "cpu")
    return torch.optim.AdamW(
        model.parameters(), lr=optim.peak_lr, weight_decay=optim.weight_decay, fused=fused or None
    )
