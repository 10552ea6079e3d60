"""What a training run sets up before its first step, for gptlite's loop and the book's alike: :func:`set_up`
builds a :class:`Session` (model, data, optimizer, schedule) and :func:`start` opens its records (``run.json``,
the trackers, the progress bar).

The book-exact loop shares all of it and differs only where the book's listing does: its training loader
shuffles from the global generator instead of its own, its AdamW is the plain one, and Accelerate prepares
nothing (wrapping the loader would change its draws).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from gptlite.tokenization import get_hf_tokenizer, get_tokenizer
from gptlite.training.config import TrainConfig
from gptlite.training.data import build_dataloaders, train_source
from gptlite.training.monitoring import History, Progress
from gptlite.training.run_folder import RunFolder, run_settings
from gptlite.training.runtime import build_model, build_optimizer, keep_freed_memory, seed_everything, use_tf32
from gptlite.training.schedule import LRSchedule
from gptlite.training.throughput import device_peak_flops, model_flops_per_token

__all__ = ["Session", "check_start_context", "set_up", "start"]


@dataclass
class Session:
    """One process's share of a run: what both loops train with."""

    config: TrainConfig
    accelerator: Accelerator
    folder: RunFolder
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader
    val_loader: DataLoader | None
    schedule: LRSchedule
    steps_per_epoch: int
    """Optimizer steps in one epoch (0 for a stream, whose length is unknown)."""
    total_steps: int
    dataset: str
    """The training data in words, as the run resolved it (the final save does not resolve it again)."""
    tokenizer: PreTrainedTokenizerBase
    history: History = field(default_factory=History)
    progress: Progress | None = None

    @property
    def streaming(self) -> bool:
        """A stream of windows, whose length is unknown (--streaming)."""
        return self.config.data.streaming


def check_start_context(config: TrainConfig) -> None:
    """Refuse a sample prompt that fills the window, before anything is written."""
    if len(get_tokenizer().encode(config.eval.start_context)) >= config.data.context_length:
        raise ValueError(f"--start-context {config.eval.start_context!r} leaves no room in --context-length")


def set_up(config: TrainConfig, accelerator: Accelerator, folder: RunFolder) -> Session:
    """Model, data, optimizer and schedule (prepared by Accelerate unless the run is book-exact)."""
    book = config.run.book_exact
    keep_freed_memory(accelerator.device)
    use_tf32(accelerator.device, config.run.tf32)
    seed_everything(config.run.seed)  # the book: torch.manual_seed(123) right before GPTModel(...)
    quiet = None if accelerator.is_main_process else (lambda message: None)  # one notice, not one per process
    model = build_model(config, notice=quiet).to(accelerator.device)
    if config.run.compile:
        # nn.Module.compile compiles in place, not in a wrapper: the state dict, the checkpoints and the
        # saved model keep their names (no `_orig_mod.`), and the evaluations use the compiled forward too.
        model.compile()
    with accelerator.main_process_first():  # the main process tokenizes and caches, the others then read
        # The book's loader shuffles from the global generator (seed None); building it draws nothing.
        train_loader, val_loader = build_dataloaders(config.data, config.optim.batch_size,
                                                     seed=None if book else config.run.seed)
    optimizer = build_optimizer(model, config.optim, fused=not book)
    if not book:
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    streaming = config.data.streaming
    steps_per_epoch = 0 if streaming else len(train_loader) // config.optim.grad_accum
    if not streaming and steps_per_epoch == 0:
        raise ValueError(
            f"the training split gives {len(train_loader)} batch(es) of --batch-size {config.optim.batch_size} per "
            f"process, fewer than one optimizer step of --grad-accum {config.optim.grad_accum}; lower them or add data"
        )
    total_steps = config.optim.max_steps or config.optim.epochs * steps_per_epoch
    return Session(config, accelerator, folder, model, optimizer, train_loader, val_loader,
                   config.optim.lr_schedule(total_steps), steps_per_epoch, total_steps,
                   train_source(config.data).describe(), get_hf_tokenizer())


def start(session: Session, global_step: int = 0) -> None:
    """Record the run's settings, start the trackers and the progress bar (at ``global_step`` when resuming)."""
    config, accelerator = session.config, session.accelerator
    session.folder.record_settings(run_settings(config))
    if config.eval.report_to:
        accelerator.init_trackers("gptlite", config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                     for k, v in config.to_dict().items()})
    precision = "fp32" if config.run.mixed_precision in (None, "no") else config.run.mixed_precision
    peak_flops, peak_source = device_peak_flops(accelerator.device, precision)
    flops_per_token = model_flops_per_token(accelerator.unwrap_model(session.model), config.data.context_length)
    session.progress = Progress(accelerator, session.total_steps, global_step, flops_per_token, peak_flops,
                                peak_source)
