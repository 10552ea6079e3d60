"""What a finished run leaves in its folder, and what :func:`~gptlite.training.loop.train` returns.

The final model folder (config, weights, tokenizer, remote code, ``history.json``, ``loss.png``,
``lr.png``, ``train_config.json``) is written by :func:`save_outputs` through
:meth:`RunFolder.save_final <gptlite.training.run_folder.RunFolder.save_final>`: it appears whole or
not at all. Both loops (the Accelerate one and the book-exact one) end here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from gptlite.training.config import TrainConfig
from gptlite.training.monitoring import History

__all__ = ["TrainResult", "save_outputs", "write_model_folder"]


@dataclass
class TrainResult:
    """What :func:`~gptlite.training.loop.train` returns (on every process)."""

    output_dir: Path
    history: History
    global_step: int
    tokens_seen: int
    tokens_per_second: float
    resumed_from: Path | None


def write_model_folder(folder: Path, model, config: TrainConfig, history: History) -> None:
    """Write the run's final model and records into ``folder`` (an empty, not yet visible folder)."""
    from gptlite.tokenization import save_tokenizer
    from gptlite.training.data import train_source
    from gptlite.training.plots import plot_losses, plot_lr
    from gptlite.training.run_folder import run_settings

    # fast_dropout is a training-speed choice of this run: the published config keeps torch's dropout.
    fast_dropout, model.config.fast_dropout = model.config.fast_dropout, False
    try:
        model.save_pretrained(folder)  # config.json, model.safetensors, generation_config.json, the model's code
    finally:
        model.config.fast_dropout = fast_dropout
    save_tokenizer(folder, model_max_length=model.config.context_length)
    history.save(folder / "history.json", dataset=train_source(config.data_config()).describe())
    # run.json's settings (no --overwrite: a --config of this file must not replace a run).
    (folder / "train_config.json").write_text(json.dumps(run_settings(config), indent=1), encoding="utf-8")
    if history.step:
        plot_losses(history, folder / "loss.png")
    plot_lr(history, folder / "lr.png")


def save_outputs(accelerator, model, config: TrainConfig, history: History, run, evaluated_on: str | None = None,
                 total_steps: int | None = None) -> None:
    """Every process: the main one writes the final model folder whole (``run`` is the run's
    :class:`~gptlite.training.run_folder.RunFolder`) and prints where, with the final losses.

    ``evaluated_on`` says which batches the last evaluation averaged (printed in the summary).
    """
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    unwrapped = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    run.save_final(lambda folder: write_model_folder(folder, unwrapped, config, history), say=accelerator.print)
    summary = f"Saved the model, tokenizer, history.json, loss.png and lr.png in {run.path}"
    accelerator.print(summary + _final_losses(history, evaluated_on, total_steps))


def _final_losses(history: History, evaluated_on: str | None, total_steps: int | None) -> str:
    if not history.step:
        return ""
    step, train_loss, val_loss = history.step[-1], history.train_loss[-1], history.val_loss[-1]
    at = f"after optimizer step {step + 1}" + (f" of {total_steps}" if total_steps else "")
    on = f", {evaluated_on}" if evaluated_on else ""
    if val_loss is not None and math.isfinite(val_loss):
        return f" (final validation loss {val_loss:.3f}, perplexity {math.exp(val_loss):.1f}, {at}{on})"
    return f" (final training loss {train_loss:.3f}, {at}{on})"
