"""Book-exact training: the book's own loops, chapter 5's ``train_model_simple`` and appendix D's ``train_model``
(section D.4), random draw for random draw, in one code path.

:func:`~gptlite.training.loop.train` hands over to :func:`train_book_exact` when ``book_exact`` is set
(the ``book-ch5`` recipe sets it; ``--recipe book-appendix-d --book-exact`` asks for it). The two
listings differ only in what happens around ``loss.backward()``, and neither draws a random number
there, so one loop runs both: with a constant schedule and no clipping it is chapter 5's, otherwise
appendix D's (the learning rate set in every param group before each step from the warmup/cosine
formula, the gradients clipped with ``torch.nn.utils.clip_grad_norm_`` when ``--clip-mode`` says so;
D.4 as printed is ``book-d4``, ``global_step > warmup_steps``). The run then draws exactly the random
numbers the book's listing draws, in the same order, from the global torch generator:

* ``torch.manual_seed(seed)`` right before the model is built, with PyTorch's default initialisation
  (``initializer="book"``) drawn in the book's construction order;
* the training DataLoader is the book's plain ``DataLoader(shuffle=True, drop_last=True)`` without a
  generator of its own: each time it is iterated (every epoch, and every evaluation, which takes its
  first ``eval_iter`` batches) it draws a base seed and a sampler seed from the global generator;
* dropout in the book's order (eager attention: SDPA's fused dropout draws differently);
* evaluation is the book's ``evaluate_model``: ``model.eval()``, ``torch.no_grad()``, the mean of
  per-batch mean losses over the first ``eval_iter`` batches of the shuffled training loader, then of
  the validation loader; the greedy sample after each epoch draws nothing;
* AdamW with PyTorch's default (for-loop) implementation on CPU, no gradient accumulation; the loss is
  the book's ``calc_loss_batch`` (mean cross-entropy).

Each evaluation prints the listing's own line (chapter 5: ``Ep 1 (Step 000000): Train loss 9.897, Val
loss 9.933``; D.4: ``Ep 1 (Iter 000000): ...``) and each epoch ends with the sample, as the book prints.
Accelerate provides the device, the output writing and the trackers, but prepares nothing: wrapping the
loader would change its draws. So book-exact runs in one process only, and keeps no checkpoints (the
final model, history and plots are written as for any run).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gptlite.training.config import TrainConfig
from gptlite.training.divergence import check_finite

__all__ = ["book_calc_loss_batch", "book_calc_loss_loader", "book_listing", "check_book_exact", "train_book_exact"]


def book_listing(config: TrainConfig) -> str:
    """Which of the book's loops ``config`` runs: chapter 5's (constant LR, no clipping) or appendix D's."""
    return "chapter 5" if config.schedule == "constant" and config.grad_clip is None else "appendix D"


def check_book_exact(config: TrainConfig, num_processes: int = 1) -> None:
    """Refuse settings the book's loop has no counterpart for, naming them."""
    problems = []
    if num_processes != 1:
        problems.append(f"{num_processes} processes (the book trains in one)")
    if config.grad_accum != 1:
        problems.append(f"--grad-accum {config.grad_accum} (the book has none)")
    if config.streaming:
        problems.append("--streaming")
    if config.max_steps is not None:
        problems.append(f"--max-steps {config.max_steps}")
    if config.mixed_precision not in (None, "no"):
        problems.append(f"--mixed-precision {config.mixed_precision}")
    if config.resume_from is not None or config.checkpoint_every is not None:
        problems.append("--resume-from / --checkpoint-every (book-exact keeps no checkpoints)")
    if config.init_from is not None:
        problems.append(f"--init-from {config.init_from}")
    if config.initializer != "book":
        problems.append(f"--initializer {config.initializer} (the book keeps PyTorch's default initialisation)")
    if config.attn_implementation != "eager":
        problems.append(f"--attn-implementation {config.attn_implementation} (its dropout draws differently)")
    if config.fast_dropout:
        problems.append("--fast-dropout (it draws other random numbers than torch's F.dropout)")
    if config.compile:
        problems.append("--compile (compiled kernels round differently from the book's eager ones)")
    if problems:
        raise ValueError("--book-exact reproduces the book's single-process loop and cannot run with "
                         + "; ".join(problems) + ". Drop these settings or pass --no-book-exact.")


def book_calc_loss_batch(model, input_batch: torch.Tensor, target_batch: torch.Tensor) -> torch.Tensor:
    """The book's ``calc_loss_batch``: mean cross-entropy of the flattened logits against the targets."""
    logits = model(input_ids=input_batch, use_cache=False).logits
    return F.cross_entropy(logits.flatten(0, 1), target_batch.flatten())


def book_calc_loss_loader(data_loader, model, device, num_batches: int | None = None) -> float:
    """The book's ``calc_loss_loader``: the mean of per-batch mean losses over the first ``num_batches``."""
    if data_loader is None or len(data_loader) == 0:
        return float("nan")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    total_loss = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):  # iterating draws, as in the book
        if i >= num_batches:
            break
        total_loss += book_calc_loss_batch(model, input_batch.to(device), target_batch.to(device)).item()
    return total_loss / num_batches


def train_book_exact(config: TrainConfig):
    """Run the book's chapter-5 or appendix-D loop; write what :func:`~gptlite.training.loop.train` writes."""
    from gptlite.tokenization import get_tokenizer
    from gptlite.training.run_folder import claim_run_folder
    from gptlite.training.runtime import make_accelerator

    started = time.perf_counter()
    accelerator = make_accelerator(config.mixed_precision, config.grad_accum, config.report_to, config.output_dir)
    check_book_exact(config, accelerator.num_processes)
    if len(get_tokenizer().encode(config.start_context)) >= config.context_length:
        raise ValueError(f"--start-context {config.start_context!r} leaves no room in --context-length")
    run = claim_run_folder(config, accelerator)
    try:  # a start that fails (a missing file, offline) leaves no lock behind, nor a folder it made
        book = _BookRun.set_up(config, accelerator, run)
        book.train()
        return book.finish(started)
    finally:
        run.release()


@dataclass
class _BookRun:
    """The book's loop and what it holds, in the order the listing builds it."""

    config: TrainConfig
    accelerator: object
    run: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: object
    val_loader: object
    schedule: object
    history: object
    progress: object
    tokenizer: object
    tokens_seen: int = 0
    global_step: int = -1  # the book's: 0-based, -1 before the first step

    @classmethod
    def set_up(cls, config: TrainConfig, accelerator, run) -> _BookRun:
        from gptlite.tokenization import get_hf_tokenizer
        from gptlite.training.data import build_dataloaders
        from gptlite.training.monitoring import History, Progress
        from gptlite.training.run_folder import run_settings
        from gptlite.training.runtime import build_model, keep_freed_memory

        keep_freed_memory(accelerator.device)
        # The book's loaders: building them draws nothing; the training one shuffles from the global generator.
        train_loader, val_loader = build_dataloaders(config.data_config(), config.batch_size, seed=None)
        # Appendix D: warmup_steps = int(0.2 * total_steps), lr = initial_lr + global_step * lr_increment, then
        # the cosine; chapter 5: peak_lr at every step, which is what AdamW holds anyway.
        total_steps = config.epochs * len(train_loader)
        schedule = config.lr_schedule(total_steps)
        # torch.manual_seed(123); model = GPTModel(GPT_CONFIG_124M); model.to(device); AdamW(...)
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)
        torch.manual_seed(config.seed)
        model = build_model(config).to(accelerator.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.peak_lr, weight_decay=config.weight_decay)
        if config.report_to:
            accelerator.init_trackers("gptlite", config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                         for k, v in config.to_dict().items()})
        run.record_settings(run_settings(config))
        return cls(config, accelerator, run, model, optimizer, train_loader, val_loader, schedule, History(),
                   Progress(accelerator, total_steps), get_hf_tokenizer())

    def losses(self) -> tuple[float, float | None]:
        """The book's ``evaluate_model``: training and validation loss over the first --eval-iter batches."""
        config, model, device = self.config, self.model, self.accelerator.device
        model.eval()
        with torch.no_grad():
            train_loss = book_calc_loss_loader(self.train_loader, model, device, num_batches=config.eval_iter)
            val_loss = (None if self.val_loader is None
                        else book_calc_loss_loader(self.val_loader, model, device, num_batches=config.eval_iter))
        model.train()
        return train_loss, val_loss

    def where(self) -> dict:
        """What a divergence error says besides the step (book-exact keeps no checkpoints)."""
        return {"total_steps": self.schedule.total_steps, "lr": self.schedule.lr(self.global_step),
                "peak_lr": self.config.peak_lr}

    def evaluate(self, epoch: int, step_in_epoch: int) -> None:
        """The listing's periodic evaluation: recorded, and printed as its own line."""
        train_loss, val_loss = self.losses()
        for what, value in (("the training loss", train_loss), ("the validation loss", val_loss)):
            check_finite(f"{what} of the evaluation", value, self.global_step + 1, self.where, after=True)
        word = "Step" if book_listing(self.config) == "chapter 5" else "Iter"
        self.history.record_eval(self.global_step, epoch + step_in_epoch / len(self.train_loader), self.tokens_seen,
                                 train_loss, val_loss)
        self.progress.evaluation(epoch, self.global_step, self.tokens_seen, train_loss, val_loss, word=word,
                                 with_perplexity=False)

    def train(self) -> None:
        """The listing's epochs: its steps and evaluations, then the greedy sample."""
        from gptlite.training.evaluation import sample_text

        config = self.config
        for epoch in range(config.epochs):
            self.model.train()
            for step_in_epoch, (input_batch, target_batch) in enumerate(self.train_loader, start=1):
                self.step(input_batch, target_batch)
                if self.global_step % config.eval_freq == 0:
                    self.evaluate(epoch, step_in_epoch)
            self.progress.write(sample_text(self.model, self.tokenizer, config.start_context, config.sample_tokens))
        self.progress.close()

    def step(self, input_batch: torch.Tensor, target_batch: torch.Tensor) -> None:
        from gptlite.training.schedule import should_clip

        config, model, optimizer, device = self.config, self.model, self.optimizer, self.accelerator.device
        self.progress.start_step()
        input_batch, target_batch = input_batch.to(device), target_batch.to(device)
        optimizer.zero_grad()
        self.global_step += 1
        lr = self.schedule.lr(self.global_step)
        for param_group in optimizer.param_groups:  # D.4 sets the rate before each step
            param_group["lr"] = lr
        loss = book_calc_loss_batch(model, input_batch, target_batch)
        loss.backward()
        if config.grad_clip is not None and should_clip(self.global_step, self.schedule.warmup_steps, config.clip_mode):
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=config.grad_clip)
        optimizer.step()
        self.tokens_seen += input_batch.numel()
        check_finite("the training loss", loss.item(), self.global_step + 1, self.where)
        self.history.record_step(lr, loss.item())
        self.progress.end_step(self.global_step + 1, self.history.step_loss[-1], lr, input_batch.numel())

    def finish(self, started: float):
        """Save (and push) the model; the summary's losses are the saved model's, not an earlier evaluation's."""
        from gptlite.training.outputs import TrainResult, push_run, save_outputs

        config, accelerator, history = self.config, self.accelerator, self.history
        final = None
        if history.step[-1:] != [self.global_step]:  # the listing evaluates every --eval-freq steps only
            final = (self.global_step, *self.losses())  # after training: its draws change nothing trained
        evaluated_on = (f"on the first {config.eval_iter} {'training' if self.val_loader is None else 'validation'} "
                        f"batch(es) of --batch-size {config.batch_size} (--eval-iter {config.eval_iter})")
        save_outputs(accelerator, self.model, config, history, self.run, evaluated_on, self.global_step + 1, final)
        if config.push_to_hub:  # one process: book-exact runs in one
            push_run(self.run.path, config, say=accelerator.print)
        minutes, seconds = divmod(time.perf_counter() - started, 60)
        accelerator.print(f"{self.global_step + 1} optimizer steps, {self.tokens_seen:,} tokens seen; this book-exact "
                          f"run of {book_listing(config)}'s loop took {int(minutes)}m{seconds:04.1f}s, training at "
                          f"{self.progress.tokens_per_second:,.0f} tokens/s")
        accelerator.end_training()
        return TrainResult(self.run.path, history, self.global_step + 1, self.tokens_seen,
                           self.progress.tokens_per_second, None)
