"""A run that diverges stops: a loss, gradient norm or weight that is not a finite number ends training at once.

A NaN or infinite loss means the weights are, or are about to be, NaN: every step after it trains nothing, and a
checkpoint or final model saved from them generates garbage while looking like a trained model. So the loop checks
each optimizer step's loss, each evaluation's losses and the gradient norm it clips with (all of them numbers it
already has), and the weights before anything is saved. The first non-finite one raises :class:`TrainingDiverged`
(exit status 1) naming the step and what to change; the checkpoints already written, all from finite weights, stay.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from gptlite.errors import RunFailure
from gptlite.loading import first_non_finite

__all__ = ["TrainingDiverged", "check_finite", "check_finite_weights", "first_non_finite"]


class TrainingDiverged(RunFailure):
    """Training produced a loss, gradient norm or weight that is not finite; nothing from that step on was saved."""


def _diverged(what: str, step: int, total_steps: int | None = None, lr: float | None = None,
              last_checkpoint: Path | None = None, peak_lr: float | None = None) -> TrainingDiverged:
    # `what` ends where the step goes: "the training loss of" / "the validation loss after".
    of = f" of {total_steps}" if total_steps else ""
    at_lr = f", at learning rate {lr:.3g}" if lr is not None else ""
    now = f" ({peak_lr:g})" if peak_lr is not None else ""
    kept = (f"the last good checkpoint, {last_checkpoint}, is kept" if last_checkpoint is not None
            else "no checkpoint or model was saved")
    return TrainingDiverged(f"training diverged: {what} optimizer step {step}{of}{at_lr}; the learning rate is "
                            f"likely too high: lower --peak-lr{now} or set --grad-clip; {kept}")


Where = Callable[[], dict]
"""Called only when a check fails: the keyword arguments of the message (total_steps, lr, last_checkpoint, peak_lr)."""


def check_finite(what: str, value: float | None, step: int, where: Where = dict, after: bool = False) -> None:
    """Raise :class:`TrainingDiverged` if ``value`` (a loss or a gradient norm, None: not measured) is not finite.

    ``what`` names the quantity ("the training loss"), ``step`` the optimizer step (1-based) it belongs to, or
    that it was measured after (``after``: an evaluation).
    """
    if value is not None and not math.isfinite(value):
        raise _diverged(f"{what} is {value} {'after' if after else 'in'}", step, **where())


def check_finite_weights(model: torch.nn.Module, step: int, accelerator=None, where: Where = dict) -> None:
    """Refuse to save ``model`` when a weight is not finite (every process must call it when ``accelerator`` is
    given: they agree through one all-reduce, so all of them stop together). ``where`` as for :func:`check_finite`."""
    name = first_non_finite(model)
    if accelerator is not None and accelerator.num_processes > 1:
        flag = torch.tensor([0.0 if name is None else 1.0], device=accelerator.device)
        if accelerator.reduce(flag, reduction="sum").item() == 0:
            return
        name = name or "a weight on another process"
    if name is not None:
        raise _diverged(f"tensor {name} holds NaN or infinite values after", step, **where())
