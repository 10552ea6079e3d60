"""Book-exact training: the book's own loops, chapter 5's ``train_model_simple`` and appendix D's ``train_model``
(section D.4), random draw for random draw, in one code path.

:func:`~gptlite.training.loop.train` runs :class:`BookLoop` over the shared set-up when ``book_exact`` is set
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
The set-up is gptlite's (:mod:`gptlite.training.session`), with the book's loader order and plain AdamW;
Accelerate provides the device, the output writing and the trackers, but prepares nothing: wrapping the
loader would change its draws. So book-exact runs in one process only, and keeps no checkpoints (the
final model, history and plots are written as for any run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gptlite.training.config import TrainConfig
from gptlite.training.divergence import check_finite
from gptlite.training.evaluation import sample_text
from gptlite.training.outputs import TrainResult, save_outputs
from gptlite.training.schedule import should_clip
from gptlite.training.session import Session, start

__all__ = ["BookLoop", "book_calc_loss_batch", "book_calc_loss_loader", "book_listing", "check_book_exact"]


def book_listing(config: TrainConfig) -> str:
    """Which of the book's loops ``config`` runs: chapter 5's (constant LR, no clipping) or appendix D's."""
    optim = config.optim
    return "chapter 5" if optim.schedule == "constant" and optim.grad_clip is None else "appendix D"


def check_book_exact(config: TrainConfig, num_processes: int = 1) -> None:
    """Refuse settings the book's loop has no counterpart for, naming them."""
    data, model, optim, run = config.data, config.model, config.optim, config.run
    problems = []
    if num_processes != 1:
        problems.append(f"{num_processes} processes (the book trains in one)")
    if optim.grad_accum != 1:
        problems.append(f"--grad-accum {optim.grad_accum} (the book has none)")
    if data.streaming:
        problems.append("--streaming")
    if optim.max_steps is not None:
        problems.append(f"--max-steps {optim.max_steps}")
    if run.mixed_precision not in (None, "no"):
        problems.append(f"--mixed-precision {run.mixed_precision}")
    if run.resume_from is not None or run.checkpoint_every is not None:
        problems.append("--resume-from / --checkpoint-every (book-exact keeps no checkpoints)")
    if model.init_from is not None:
        problems.append(f"--init-from {model.init_from}")
    if model.initializer != "book":
        problems.append(f"--initializer {model.initializer} (the book keeps PyTorch's default initialisation)")
    if model.attn_implementation != "eager":
        problems.append(f"--attn-implementation {model.attn_implementation} (its dropout draws differently)")
    if model.fast_dropout:
        problems.append("--fast-dropout (it draws other random numbers than torch's F.dropout)")
    if run.compile:
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


@dataclass
class BookLoop:
    """The book's loop over a :class:`~gptlite.training.session.Session`, in the order its listing runs."""

    session: Session
    tokens_seen: int = 0
    global_step: int = -1  # the book's: 0-based, -1 before the first step

    def __post_init__(self) -> None:
        start(self.session)

    def losses(self) -> tuple[float, float | None]:
        """The book's ``evaluate_model``: training and validation loss over the first --eval-iter batches."""
        session = self.session
        model, device, eval_iter = session.model, session.accelerator.device, session.config.eval.eval_iter
        model.eval()
        with torch.no_grad():
            train_loss = book_calc_loss_loader(session.train_loader, model, device, num_batches=eval_iter)
            val_loss = (None if session.val_loader is None
                        else book_calc_loss_loader(session.val_loader, model, device, num_batches=eval_iter))
        model.train()
        return train_loss, val_loss

    def where(self) -> dict:
        """What a divergence error says besides the step (book-exact keeps no checkpoints)."""
        schedule = self.session.schedule
        return {"total_steps": schedule.total_steps, "lr": schedule.lr(self.global_step), "peak_lr": schedule.peak_lr}

    def evaluate(self, epoch: int, step_in_epoch: int) -> None:
        """The listing's periodic evaluation: recorded, and printed as its own line."""
        session = self.session
        train_loss, val_loss = self.losses()
        for what, value in (("the training loss", train_loss), ("the validation loss", val_loss)):
            check_finite(f"{what} of the evaluation", value, self.global_step + 1, self.where, after=True)
        word = "Step" if book_listing(session.config) == "chapter 5" else "Iter"
        session.history.record_eval(self.global_step, epoch + step_in_epoch / len(session.train_loader),
                                    self.tokens_seen, train_loss, val_loss)
        session.progress.evaluation(epoch, self.global_step, self.tokens_seen, train_loss, val_loss, word=word,
                                    with_perplexity=False)

    def fit(self) -> None:
        """The listing's epochs: its steps and evaluations, then the greedy sample."""
        session, config = self.session, self.session.config
        for epoch in range(config.optim.epochs):
            session.model.train()
            for step_in_epoch, (input_batch, target_batch) in enumerate(session.train_loader, start=1):
                self.step(input_batch, target_batch)
                if self.global_step % config.eval.eval_freq == 0:
                    self.evaluate(epoch, step_in_epoch)
            sample = sample_text(session.model, session.tokenizer, config.eval.start_context, config.eval.sample_tokens)
            session.progress.write(sample)
        session.progress.close()

    def step(self, input_batch: torch.Tensor, target_batch: torch.Tensor) -> None:
        session, optim = self.session, self.session.config.optim
        model, optimizer, device = session.model, session.optimizer, session.accelerator.device
        session.progress.start_step()
        input_batch, target_batch = input_batch.to(device), target_batch.to(device)
        optimizer.zero_grad()
        self.global_step += 1
        lr = session.schedule.lr(self.global_step)
        for param_group in optimizer.param_groups:  # D.4 sets the rate before each step
            param_group["lr"] = lr
        loss = book_calc_loss_batch(model, input_batch, target_batch)
        loss.backward()
        if optim.grad_clip is not None and should_clip(self.global_step, session.schedule.warmup_steps,
                                                       optim.clip_mode):
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=optim.grad_clip)
        optimizer.step()
        self.tokens_seen += input_batch.numel()
        check_finite("the training loss", loss.item(), self.global_step + 1, self.where)
        session.history.record_step(lr, loss.item())
        session.progress.end_step(self.global_step + 1, session.history.step_loss[-1], lr, input_batch.numel())

    def finish(self, started: float) -> TrainResult:
        """Save the model; the summary's losses are the saved model's, not an earlier evaluation's."""
        session, config = self.session, self.session.config
        accelerator, history, eval_iter = session.accelerator, session.history, config.eval.eval_iter
        final = None
        if history.step[-1:] != [self.global_step]:  # the listing evaluates every --eval-freq steps only
            final = (self.global_step, *self.losses())  # after training: its draws change nothing trained
        split = "training" if session.val_loader is None else "validation"
        evaluated_on = (f"on the first {eval_iter} {split} batch(es) of --batch-size {config.optim.batch_size} "
                        f"(--eval-iter {eval_iter})")
        save_outputs(accelerator, session.model, config, history, session.folder, session.dataset, evaluated_on,
                     self.global_step + 1, final)
        minutes, seconds = divmod(time.perf_counter() - started, 60)
        accelerator.print(f"{self.global_step + 1} optimizer steps, {self.tokens_seen:,} tokens seen; this book-exact "
                          f"run of {book_listing(config)}'s loop took {int(minutes)}m{seconds:04.1f}s, training at "
                          f"{session.progress.tokens_per_second:,.0f} tokens/s")
        accelerator.end_training()
        return TrainResult(session.folder.path, history, self.global_step + 1, self.tokens_seen,
                           session.progress.tokens_per_second, None)
