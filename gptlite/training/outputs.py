"""What a finished run leaves in its folder, and what :func:`~gptlite.training.loop.train` returns.

The final model folder (config, weights, tokenizer, remote code, ``history.json``, ``loss.png``,
``lr.png``, ``train_config.json``) is written by :func:`save_outputs` through
:meth:`RunFolder.save_final <gptlite.training.run_folder.RunFolder.save_final>`: it appears whole or
not at all. Both loops (the Accelerate one and the book-exact one) end here; with ``--push-to-hub``,
:func:`push_run` then uploads the saved folder's model, tokenizer and card.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gptlite.errors import one_line
from gptlite.folders import usual_weight_modes
from gptlite.hub import push_to_hub
from gptlite.modeling_gptlite import GPTLiteForCausalLM
from gptlite.tokenization import save_tokenizer
from gptlite.training.checkpointing import latest_checkpoint
from gptlite.training.config import TrainConfig
from gptlite.training.divergence import check_finite_weights
from gptlite.training.monitoring import History
from gptlite.training.plots import matplotlib_missing, plot_losses, plot_lr
from gptlite.training.run_folder import run_settings

__all__ = ["PushFailed", "TrainResult", "push_run", "save_outputs", "write_model_folder"]


@dataclass
class TrainResult:
    """What :func:`~gptlite.training.loop.train` returns (on every process)."""

    output_dir: Path
    history: History
    global_step: int
    tokens_seen: int
    tokens_per_second: float
    resumed_from: Path | None


def write_model_folder(folder: Path, model, config: TrainConfig, history: History, dataset: str,
                       say: Callable[[str], None] = print) -> None:
    """Write the run's final model and records into ``folder`` (an empty, not yet visible folder); ``dataset``
    describes the training data in words, as the run resolved it. Without matplotlib, ``say`` tells in one line
    that the figures are left out."""

    model.save_pretrained(folder)  # config.json, model.safetensors, generation_config.json, the model's code
    usual_weight_modes(folder)
    save_tokenizer(folder, model_max_length=model.config.context_length)
    history.save(folder / "history.json", dataset=dataset)
    # run.json's settings (no --overwrite: a --config of this file must not replace a run).
    (folder / "train_config.json").write_text(json.dumps(run_settings(config), indent=1), encoding="utf-8")
    missing = matplotlib_missing()
    if missing:
        say(f"Not drawing loss.png and lr.png: {missing} (pip install matplotlib draws them)")
        return
    if history.step:
        plot_losses(history, folder / "loss.png")
    plot_lr(history, folder / "lr.png")


def save_outputs(accelerator, model, config: TrainConfig, history: History, run, dataset: str,
                 evaluated_on: str | None = None, total_steps: int | None = None,
                 final: tuple[int, float, float | None] | None = None) -> None:
    """Every process: the main one writes the final model folder whole (``run`` is the run's
    :class:`~gptlite.training.run_folder.RunFolder`) and prints where, with the final losses.

    ``evaluated_on`` says which batches the last evaluation averaged (printed in the summary). ``final`` is
    ``(step, train loss, validation loss)`` of the saved model when the history's last evaluation is an earlier
    step's (book-exact runs evaluate every --eval-freq steps only).
    """
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    unwrapped = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    # A final model of NaN weights would load and generate garbage without a word: refuse it, whichever loop ran.
    check_finite_weights(unwrapped, len(history.lr), where=lambda: {"total_steps": total_steps,
                                                                    "last_checkpoint": run.latest_checkpoint()})
    say = accelerator.print
    run.save_final(lambda folder: write_model_folder(folder, unwrapped, config, history, dataset, say), say=say)
    records = ", ".join(name for name in ("history.json", "loss.png", "lr.png") if (run.path / name).exists())
    if final is None and history.step:
        final = (history.step[-1], history.train_loss[-1], history.val_loss[-1])
    say(f"Saved the model, tokenizer and {records} in {run.path}" + _final_losses(final, evaluated_on, total_steps))


def _final_losses(final: tuple[int, float, float | None] | None, evaluated_on: str | None,
                  total_steps: int | None) -> str:
    if final is None:
        return ""
    step, train_loss, val_loss = final
    at = f"after optimizer step {step + 1}" + (f" of {total_steps}" if total_steps else "")
    on = f", {evaluated_on}" if evaluated_on else ""
    if val_loss is not None and math.isfinite(val_loss):
        return f" (final validation loss {val_loss:.3f}, perplexity {math.exp(val_loss):.1f}, {at}{on})"
    return f" (final training loss {train_loss:.3f}, {at}{on})"


class PushFailed(OSError):
    """The upload of a saved run failed (offline, no login, refused): a run-time failure, exit status 1."""


def push_run(folder: str | Path, config: TrainConfig, say=print) -> None:
    """Main process: upload the model saved in ``folder``, its tokenizer and a model card (with the run's final
    losses from ``history.json``) to ``config.run.push_to_hub``, through :func:`gptlite.hub.push_to_hub`.

    Raises:
        PushFailed: in one line naming the repository and the cause; the saved run is left as it is.
    """

    folder, repo_id = Path(folder), config.run.push_to_hub
    model = GPTLiteForCausalLM.from_pretrained(folder)  # the saved files, exactly: what a download gives back
    try:
        commit = push_to_hub(model, repo_id, training_dir=folder, dataset=config.data.dataset,
                             commit_message="Upload a model trained with gptlite-train")
    except Exception as err:  # noqa: BLE001 - network, login and Hub refusals alike: one line, the run kept
        raise PushFailed(f"--push-to-hub {repo_id}: {one_line(err)}; the run is saved in {folder}: "
                         f"{_push_later(folder, repo_id)}") from None
    say(f"Pushed the model, tokenizer and model card of {folder} to {repo_id}: {commit.commit_url}")


def _push_later(folder: Path, repo_id: str) -> str:

    if latest_checkpoint(folder) is not None:  # resuming a finished run only pushes it
        return f"push it with gptlite-train --resume-from latest --output-dir {folder} --push-to-hub {repo_id}"
    return (f"push it with python -c \"import gptlite; gptlite.push_to_hub(gptlite.GPTLiteForCausalLM."
            f"from_pretrained('{folder}'), '{repo_id}')\"")
