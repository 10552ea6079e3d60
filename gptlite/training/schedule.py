"""Learning-rate schedules and the gradient-clipping policy, as pure functions of the optimizer step.

Two schedules:

* ``"cosine"``: linear warmup then cosine decay, as in appendix D of the book. At optimizer step ``s``
  (0-based) of ``total`` steps with ``warmup`` warmup steps::

      s <  warmup: initial_lr + s * (peak_lr - initial_lr) / warmup
      s >= warmup: min_lr + (peak_lr - min_lr) * 0.5 * (1 + cos(pi * (s - warmup) / (total - warmup)))

  so the last step (``total - 1``) ends just above ``min_lr``, exactly as the book's loop does.
* ``"constant"``: ``peak_lr`` at every step, as chapter 5 trains.

:func:`build_scheduler` wraps a schedule as a ``torch.optim.lr_scheduler.LambdaLR`` whose factor is a
picklable :class:`LRSchedule`, so ``state_dict()``/``load_state_dict()`` (and Accelerate's
``save_state``/``load_state``) round-trip it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "CLIP_MODES",
    "SCHEDULES",
    "ClipMode",
    "LRSchedule",
    "ScheduleName",
    "build_scheduler",
    "constant_lr",
    "resolve_warmup",
    "should_clip",
    "warmup_cosine_lr",
]

ScheduleName = Literal["cosine", "constant"]
ClipMode = Literal["after-warmup", "always", "never", "book-d4"]
SCHEDULES: tuple[str, ...] = ("cosine", "constant")
CLIP_MODES: tuple[str, ...] = ("after-warmup", "always", "never", "book-d4")


def resolve_warmup(total_steps: int, warmup_steps: int | None = None, warmup_ratio: float = 0.2) -> int:
    """Return the number of warmup steps.

    ``warmup_steps`` wins when given; otherwise ``int(warmup_ratio * total_steps)``, the book's
    ``int(0.2 * total_steps)`` ("20% warmup") by default.

    Raises:
        ValueError: if ``total_steps`` is negative, ``warmup_ratio`` is outside [0, 1] or the warmup
            does not fit in ``total_steps``.
    """
    if total_steps < 0:
        raise ValueError(f"total_steps must be >= 0, got {total_steps}")
    if warmup_steps is None:
        if not 0.0 <= warmup_ratio <= 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1], got {warmup_ratio}")
        return int(warmup_ratio * total_steps)
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    return warmup_steps


def warmup_cosine_lr(
    step: int,
    total_steps: int,
    warmup_steps: int,
    peak_lr: float,
    initial_lr: float = 1e-5,
    min_lr: float = 1e-5,
) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warmup, then cosine decay (appendix D).

    The defaults ``initial_lr = min_lr = 1e-5`` are the values the book trains with in appendix D.
    With ``total_steps == warmup_steps`` there is no decay phase; any later step gets ``min_lr``.
    Steps past ``total_steps`` stay at ``min_lr`` instead of climbing the cosine back up.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        # The book's association, initial_lr + step * lr_increment, so book-exact runs get its very floats.
        return initial_lr + step * ((peak_lr - initial_lr) / warmup_steps)
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return min_lr
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def constant_lr(step: int, peak_lr: float) -> float:
    """Learning rate at optimizer step ``step`` of the constant schedule (chapter 5): always ``peak_lr``."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return peak_lr


@dataclass
class LRSchedule:
    """A learning-rate schedule; calling it gives ``LambdaLR``'s multiplicative factor ``lr(step) / peak_lr``.

    It is a plain dataclass (not a lambda), so ``LambdaLR.state_dict()`` saves its fields and
    ``load_state_dict()`` restores them.
    """

    name: str = "cosine"
    """``"cosine"`` (warmup + cosine decay, appendix D) or ``"constant"`` (chapter 5)."""
    total_steps: int = 0
    """Number of optimizer steps in the whole run."""
    warmup_steps: int = 0
    """Linear-warmup steps (cosine only); see :func:`resolve_warmup`."""
    peak_lr: float = 5e-4
    """Learning rate at the end of warmup (cosine) or throughout (constant)."""
    initial_lr: float = 1e-5
    """Learning rate at step 0 of the warmup (cosine only)."""
    min_lr: float = 1e-5
    """Floor that the cosine decays towards (cosine only)."""

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; choose one of {', '.join(SCHEDULES)}")
        if self.peak_lr <= 0:
            raise ValueError(f"peak_lr must be > 0, got {self.peak_lr}")
        resolve_warmup(self.total_steps, self.warmup_steps)

    def lr(self, step: int) -> float:
        """Learning rate at optimizer step ``step`` (0-based)."""
        if self.name == "constant":
            return constant_lr(step, self.peak_lr)
        return warmup_cosine_lr(step, self.total_steps, self.warmup_steps, self.peak_lr, self.initial_lr, self.min_lr)

    def __call__(self, step: int) -> float:
        return self.lr(step) / self.peak_lr


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: LRSchedule) -> torch.optim.lr_scheduler.LambdaLR:
    """Wrap ``schedule`` as a ``LambdaLR`` on ``optimizer``; call ``scheduler.step()`` after each optimizer step.

    Every param group's lr is first set to ``schedule.peak_lr``: ``LambdaLR`` multiplies the group's
    base lr by the factor, and the book's appendix-D listing built ``AdamW`` without ``lr=`` and so
    silently peaked at AdamW's default 1e-3. Right after this call the optimizer's lr is
    ``schedule.lr(0)``.
    """
    for group in optimizer.param_groups:
        group["lr"] = schedule.peak_lr
        group["initial_lr"] = schedule.peak_lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=schedule)


def should_clip(step: int, warmup_steps: int, mode: str = "after-warmup") -> bool:
    """Whether to clip gradients at optimizer step ``step`` (0-based).

    ``"after-warmup"`` clips from step ``warmup_steps`` on, as the book intends (the book's
    ``global_step > warmup_steps`` also skipped the first post-warmup step; ``>=`` does not).
    ``"always"`` clips from step 0; ``"never"`` never clips. ``"book-d4"`` is the listing as printed in
    section D.4, ``step > warmup_steps`` (the book-exact appendix-D run uses it).
    """
    if mode == "after-warmup":
        return step >= warmup_steps
    if mode == "book-d4":
        return step > warmup_steps
    if mode == "always":
        return True
    if mode == "never":
        return False
    raise ValueError(f"unknown clip mode {mode!r}; choose one of {', '.join(CLIP_MODES)}")
