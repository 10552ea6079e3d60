"""What a run reports while it trains: the history of losses, a progress bar, console lines and trackers."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

__all__ = ["History", "Progress", "perplexity"]


def perplexity(loss: float | None) -> float | None:
    """``exp(loss)``, capped to ``inf`` instead of overflowing; None stays None."""
    if loss is None or math.isnan(loss):
        return loss
    return math.exp(loss) if loss < 700 else math.inf


@dataclass
class History:
    """The run's record, saved as ``history.json``: one entry per evaluation, and per optimizer step for ``lr``."""

    step: list[int] = field(default_factory=list)
    """0-based optimizer step after which each evaluation ran (the book's ``global_step``)."""
    epoch: list[float] = field(default_factory=list)
    """Epochs done at each evaluation (fractional: 1.5 is halfway through the second epoch)."""
    tokens_seen: list[int] = field(default_factory=list)
    """Input tokens trained on by then, over all processes."""
    train_loss: list[float] = field(default_factory=list)
    """Mean loss per token over --eval-iter training batches."""
    val_loss: list[float | None] = field(default_factory=list)
    """Mean loss per token over --eval-iter validation batches (None without validation data)."""
    lr: list[float] = field(default_factory=list)
    """Learning rate of every optimizer step."""
    step_loss: list[float] = field(default_factory=list)
    """Training loss of every optimizer step (mean per token over all its batches and processes)."""

    def record_step(self, lr: float, loss: float) -> None:
        self.lr.append(lr)
        self.step_loss.append(loss)

    def record_eval(
        self, step: int, epoch: float, tokens_seen: int, train_loss: float, val_loss: float | None
    ) -> None:
        self.step.append(step)
        self.epoch.append(epoch)
        self.tokens_seen.append(tokens_seen)
        self.train_loss.append(train_loss)
        self.val_loss.append(val_loss)

    def to_dict(self) -> dict[str, list]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> History:
        """The lists of ``values`` (a saved history; other keys are ignored)."""
        return cls(**{key: list(values.get(key, [])) for key in cls.__dataclass_fields__})

    def save(self, path: str | os.PathLike[str], **extra: str | float) -> Path:
        """Write the history as JSON (NaN losses as null, so any JSON reader accepts it).

        ``extra`` scalars are written beside the lists, e.g. ``dataset=`` (which model cards show).
        """
        values: dict = {
            key: [None if isinstance(v, float) and not math.isfinite(v) else v for v in seq]
            for key, seq in self.to_dict().items()
        }
        values |= extra
        path = Path(path)
        path.write_text(json.dumps(values, indent=1), encoding="utf-8")
        return path


class Progress:
    """A tqdm bar on the main process (loss, lr, tokens/s), the book's evaluation lines, and tracker logging.

    tokens/s counts training time only: evaluation, sampling and checkpointing are left out. Given the
    model's FLOPs per token and one device's peak FLOP/s, the bar also shows the model FLOP utilisation.
    """

    def __init__(
        self,
        accelerator,
        total_steps: int,
        initial_step: int = 0,
        flops_per_token: float | None = None,
        peak_flops: float | None = None,
        peak_source: str = "",
    ) -> None:

        self.accelerator = accelerator
        self.bar = tqdm(
            total=total_steps,
            initial=initial_step,
            desc="training",
            unit="step",
            dynamic_ncols=True,
            disable=not accelerator.is_main_process,
        )
        self.train_seconds = 0.0
        self.train_tokens = 0
        # After the first step, which pays for warm-up (allocations, kernel selection): the steady state.
        self.steady_seconds = 0.0
        self.steady_tokens = 0
        self.steps_timed = 0
        self.flops_per_token, self.peak_flops, self.peak_source = flops_per_token, peak_flops, peak_source
        self._started: float | None = None

    def start_step(self) -> None:
        self._started = time.perf_counter()

    def end_step(self, global_step: int, loss: float, lr: float, tokens: int) -> None:
        """Account one optimizer step of ``tokens`` input tokens (all processes) and refresh the bar."""
        if self._started is not None:
            seconds = time.perf_counter() - self._started
            self.train_seconds += seconds
            if self.steps_timed:
                self.steady_seconds += seconds
                self.steady_tokens += tokens
            self.steps_timed += 1
            self._started = None
        self.train_tokens += tokens
        self.bar.update(1)
        postfix = {"loss": f"{loss:.3f}", "lr": f"{lr:.2e}", "tok_s": f"{self.tokens_per_second:,.0f}"}
        logged = {"train/step_loss": loss, "lr": lr, "tokens_per_second": self.tokens_per_second}
        if self.mfu is not None:
            postfix["mfu"] = f"{self.mfu:.0%}"
            logged["mfu"] = self.mfu
        self.bar.set_postfix(postfix, refresh=False)
        self.accelerator.log(logged, step=global_step)

    @property
    def tokens_per_second(self) -> float:
        """Training tokens per second over all processes, steady state once there is one."""
        if self.steady_seconds > 0:
            return self.steady_tokens / self.steady_seconds
        return self.train_tokens / self.train_seconds if self.train_seconds > 0 else 0.0

    @property
    def mfu(self) -> float | None:
        """Model FLOP utilisation of each device: the model's FLOPs per second over the device's peak."""
        if not self.flops_per_token or not self.peak_flops or not self.tokens_per_second:
            return None
        per_device = self.tokens_per_second / self.accelerator.num_processes
        return per_device * self.flops_per_token / self.peak_flops

    def evaluation(
        self, epoch: int, step: int, tokens_seen: int, train_loss: float, val_loss: float | None,
        word: str = "Step", with_perplexity: bool = True,
    ) -> None:
        """Print the book's line ``Ep 1 (Step 000000): Train loss ..., Val loss ...`` and log the numbers.

        ``word`` is ``"Iter"`` in appendix D's listing; without ``with_perplexity`` the line is the book's to
        the letter.
        """
        line = f"Ep {epoch + 1} ({word} {step:06d}): Train loss {train_loss:.3f}"
        values = {"train/loss": train_loss, "train/perplexity": perplexity(train_loss), "tokens_seen": tokens_seen}
        if val_loss is not None:
            line += f", Val loss {val_loss:.3f}"
            if with_perplexity:
                line += f", Val perplexity {perplexity(val_loss):.1f}"
            values |= {"val/loss": val_loss, "val/perplexity": perplexity(val_loss)}
        self.write(line)
        self.accelerator.log(values, step=step + 1)

    def write(self, message: str) -> None:
        """Print a line on the main process without breaking the bar."""
        if self.accelerator.is_main_process:
            self.bar.write(message)

    def close(self) -> None:
        self.bar.close()
