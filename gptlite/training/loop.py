"""The training loop, on Accelerate: one function, :func:`train`, for one process or many.

One optimizer step takes ``grad_accum`` batches on each process. Its loss is the mean over every target
token of those batches on every process: each batch's summed loss is divided by the step's total token
count (all-reduced before the step), and scaled so that Accelerate's division by ``grad_accum`` and
DDP's averaging over processes leave exactly that mean's gradient. ``N`` processes with batch ``B``
therefore train like one process with batch ``B`` and ``grad_accum = N``, and a checkpoint written by
``N`` processes resumes on ``M`` when ``M * grad_accum`` stays the same (e.g. 2 processes with 1 -> 1 with 2).

Randomness is seeded in one place, :func:`seed_everything`. The order of the training windows in
epoch ``e`` is drawn from the training loader's own generator, reseeded with ``seed + e`` as the
epoch starts, so a resumed run sees the same order and skips the batches already trained on.

The run folder (owning, locking, checkpoints, the atomic final save) is :mod:`gptlite.training.run_folder`'s;
SIGINT/SIGTERM stop the run after a complete step with a checkpoint (:mod:`gptlite.training.stopping`).
Every run also evaluates after its last optimizer step, so the final losses reported are the saved model's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import islice

import torch
from torch.optim.lr_scheduler import LRScheduler

from gptlite.training.book_exact import BookLoop, check_book_exact
from gptlite.training.checkpointing import (
    TrainerState,
    check_resumable,
    load_checkpoint,
    load_trainer_state,
    model_architecture,
)
from gptlite.training.clipping import clip_grad_norm
from gptlite.training.config import TrainConfig
from gptlite.training.data_identity import data_identity
from gptlite.training.divergence import check_finite, check_finite_weights
from gptlite.training.evaluation import evaluation_batches, loss_sums, sample_text, token_loss_sum
from gptlite.training.monitoring import History
from gptlite.training.outputs import TrainResult, push_run, save_outputs
from gptlite.training.preflight import check_trackers
from gptlite.training.run_folder import claim_run_folder
from gptlite.training.runtime import make_accelerator
from gptlite.training.schedule import build_scheduler, should_clip
from gptlite.training.session import Session, check_start_context, set_up, start
from gptlite.training.stopping import StopSignals, TrainingStopped

__all__ = ["TrainResult", "train"]


def train(config: TrainConfig) -> TrainResult:
    """Train a model as ``config`` says; write the model, tokenizer, history and plots to its output folder.

    Raises:
        FolderRefused: the output folder holds another run, or another live process trains in it.
        FolderWriteError: a checkpoint or the final model could not be written (disk full); what was
            there before is intact.
        TrainingStopped: SIGINT or SIGTERM stopped the run after a step; it names the checkpoint to resume.
    """
    check_trackers(config.eval.report_to)  # before anything is written or read
    started = time.perf_counter()
    run = config.run
    accelerator = make_accelerator(run.mixed_precision, config.optim.grad_accum, config.eval.report_to,
                                   run.output_dir)
    if run.book_exact:  # the book's chapter-5 or appendix-D loop, draw for draw
        check_book_exact(config, accelerator.num_processes)
    check_start_context(config)
    folder = claim_run_folder(config, accelerator)
    session = None
    try:  # a start that fails (a missing file, offline) leaves no lock behind, nor a folder it made
        session = set_up(config, accelerator, folder)
        loop = BookLoop(session) if run.book_exact else Loop.restore(session)
        loop.fit()
        result = loop.finish(started)
        if run.push_to_hub and accelerator.is_main_process:  # with the lock held: the folder cannot change
            push_run(folder.path, config, say=accelerator.print)
        return result
    finally:
        if session is not None and session.progress is not None:
            session.progress.close()  # now, or tqdm redraws the bar after the error line at exit
        folder.release()


@dataclass
class Loop:
    """gptlite's loop over a :class:`~gptlite.training.session.Session`: its state and its named steps."""

    session: Session
    scheduler: LRScheduler
    state: TrainerState
    generator: torch.Generator | None
    """The training loader's own generator (also its sampler's), reseeded as each epoch starts."""
    evaluated_on: str | None = None  # which batches the last evaluation averaged, for the summary
    saved_step: int | None = None  # the step of the newest checkpoint

    @classmethod
    def restore(cls, session: Session) -> Loop:
        """Continue from the checkpoint the run resumes from (if any); start the records and the progress bar."""
        config, accelerator, folder = session.config, session.accelerator, session.folder
        scheduler = accelerator.prepare(build_scheduler(session.optimizer, session.schedule))
        architecture = model_architecture(accelerator.unwrap_model(session.model).config)
        val_ds = None if session.val_loader is None else session.val_loader.dataset
        state = TrainerState(steps_per_epoch=session.steps_per_epoch, total_steps=session.total_steps,
                             num_processes=accelerator.num_processes, config=config.to_dict(), run_id=folder.run_id,
                             architecture=architecture,
                             data=data_identity(config.data, session.train_loader.dataset, val_ds))
        loop = cls(session, scheduler, state, session.train_loader.generator)
        resume = folder.resume
        if resume is not None:
            saved = load_trainer_state(resume)
            check_resumable(saved, state, resume)
            # Also gives the session's schedule (the scheduler's factor, the same object) the checkpoint's fields:
            # a run extended by --epochs / --max-steps keeps its schedule and warmup (which decides clipping).
            load_checkpoint(accelerator, resume, saved.num_processes)
            # load_state restores Accelerate's batch counter, which decides when gradients synchronise: count it
            # in this run's --grad-accum (a checkpoint of N processes resumed on M has another one).
            accelerator.step = saved.global_step * config.optim.grad_accum
            state.global_step, state.epoch, state.step_in_epoch = saved.global_step, saved.epoch, saved.step_in_epoch
            state.tokens_seen, session.history = saved.tokens_seen, History.from_dict(saved.history)
            loop.saved_step = state.global_step
        start(session, state.global_step)
        if resume is not None:
            session.progress.write(f"Resumed from {resume} at optimizer step {state.global_step} of "
                                   f"{session.total_steps} (epoch {state.epoch + 1}, step {state.step_in_epoch} of "
                                   "the epoch)")
        elif config.run.resume_from == "latest":
            session.progress.write(f"--resume-from latest: no checkpoint of this run in {folder.path / 'checkpoints'} "
                                   "yet, starting from scratch")
        return loop

    def evaluate(self) -> None:
        """The book's evaluation: mean losses over --eval-iter training and validation batches."""
        session, state, every = self.session, self.state, self.session.config.eval
        accelerator, batch_size = session.accelerator, session.config.optim.batch_size
        step = state.global_step - 1  # 0-based, the book's global_step
        lm = accelerator.unwrap_model(session.model)  # plain forward passes: no DDP hooks, unequal counts are fine
        lm.eval()
        # A fresh random set of training batches at each evaluation, the same whatever the process count.
        shuffled = torch.Generator().manual_seed(session.config.run.seed * 1_000_003 + step)
        shards = (batch_size, every.eval_iter, accelerator.process_index, accelerator.num_processes)
        train_batches = evaluation_batches(session.train_loader.dataset, *shards, generator=shuffled, drop_last=True)
        train_loss, n_train = _mean(loss_sums(lm, train_batches, accelerator))
        val_loss, n_val = None, 0
        if session.val_loader is not None:
            val_batches = evaluation_batches(session.val_loader.dataset, *shards)
            val_loss, n_val = _mean(loss_sums(lm, val_batches, accelerator))
        lm.train()
        for what, loss, n in (("the training loss", train_loss, n_train), ("the validation loss", val_loss, n_val)):
            if n:  # no batches: no measurement (NaN by convention), not a divergence
                check_finite(f"{what} of the evaluation", loss, state.global_step, self.diverged_where, after=True)
        per_epoch = session.steps_per_epoch
        epoch = state.epoch + (state.step_in_epoch / per_epoch if per_epoch else 0)
        session.history.record_eval(step, epoch, state.tokens_seen, train_loss, val_loss)
        session.progress.evaluation(state.epoch, step, state.tokens_seen, train_loss, val_loss)
        split, n = ("validation", n_val) if session.val_loader is not None else ("training", n_train)
        which = "all" if n < every.eval_iter else "the first"
        self.evaluated_on = (f"on {which} {n} {split} batch(es) of --batch-size {batch_size} "
                             f"(--eval-iter {every.eval_iter})")

    def diverged_where(self, lr: float | None = None) -> dict:
        """What a divergence error says besides the step: the run's length, learning rates and kept checkpoint."""
        folder = self.session.folder
        last = folder.latest_checkpoint() if self.saved_step is not None else None
        return {"total_steps": self.session.total_steps, "lr": lr, "last_checkpoint": last or folder.resume,
                "peak_lr": self.session.config.optim.peak_lr}

    def checkpoint(self) -> None:
        session = self.session
        # Never a checkpoint of NaN weights: it would resume into garbage (and prune a good one).
        check_finite_weights(session.model, self.state.global_step, session.accelerator, self.diverged_where)
        self.state.history = session.history.to_dict()
        path = session.folder.save_checkpoint(session.accelerator, self.state, session.config.run.keep_checkpoints)
        self.saved_step = self.state.global_step
        session.progress.write(f"Saved checkpoint {path}")

    def train_step(self, batches: list) -> None:
        """One optimizer step over ``batches`` (--grad-accum of them), the loss a mean over all their tokens."""
        session, state, model = self.session, self.state, self.session.model
        accelerator, optim = session.accelerator, session.config.optim
        world, accum = accelerator.num_processes, optim.grad_accum
        session.progress.start_step()
        counts = torch.stack([sum((t != -100).sum() for _, t in batches),
                              torch.tensor(sum(x.numel() for x, _ in batches), device=accelerator.device)])
        n_targets, n_inputs = accelerator.reduce(counts, reduction="sum").tolist()
        lr = self.scheduler.get_last_lr()[0]
        loss_total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        for input_ids, target_ids in batches:
            with accelerator.accumulate(model):
                loss_sum, _ = token_loss_sum(model, input_ids, target_ids)
                # Accelerate divides by grad_accum and DDP averages over processes: undo both, so the
                # gradient is that of (sum of all token losses of the step) / (all its target tokens).
                accelerator.backward(loss_sum * (world * accum / max(n_targets, 1)))
                loss_total += loss_sum.detach().double()
                if accelerator.sync_gradients:
                    self.clip_gradients(lr)
                    session.optimizer.step()
                    if not accelerator.optimizer_step_was_skipped:
                        self.scheduler.step()
                    session.optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            raise RuntimeError("gradients did not synchronise at the end of an optimizer step")
        loss = accelerator.reduce(loss_total, reduction="sum").item() / max(n_targets, 1)
        # The loss is all-reduced: every process sees the same value and stops at the same step.
        check_finite("the training loss", loss, state.global_step + 1, lambda: self.diverged_where(lr))
        state.global_step += 1
        state.step_in_epoch += 1
        state.tokens_seen += n_inputs
        session.history.record_step(lr, loss)
        session.progress.end_step(state.global_step, loss, lr, n_inputs)

    def clip_gradients(self, lr: float) -> None:
        """Clip the gradient norm when --clip-mode says so at this step; refuse a NaN norm before the step."""
        session, optim = self.session, self.session.config.optim
        if optim.grad_clip is None or not should_clip(self.state.global_step, session.schedule.warmup_steps,
                                                      optim.clip_mode):
            return
        norm = clip_grad_norm(session.accelerator, session.model.parameters(), optim.grad_clip)
        # NaN gradients would make every weight NaN. (fp16's loss scaler expects overflowing gradients now and
        # then: it skips that step and lowers its scale.)
        if session.accelerator.scaler is None:
            check_finite("the gradient norm", norm, self.state.global_step + 1, lambda: self.diverged_where(lr))

    def fit(self) -> None:
        """Epochs of optimizer steps up to the run's last, with evaluations, samples and checkpoints.

        A SIGINT/SIGTERM ends the step in progress (and its evaluation and epoch end, if due), writes a
        checkpoint and raises :class:`TrainingStopped`.
        """
        session, state = self.session, self.state
        session.model.train()
        epoch, start_at = state.epoch, state.step_in_epoch
        if session.steps_per_epoch and start_at >= session.steps_per_epoch:
            epoch, start_at = epoch + 1, 0
        stopping = None
        with StopSignals() as signals:
            while state.global_step < session.total_steps and stopping is None:
                stopping = self.train_epoch(epoch, start_at, signals)
                epoch, start_at = epoch + 1, 0
            if self.saved_step != state.global_step:  # stopped by --max-steps or a signal inside an epoch
                self.checkpoint()
        session.progress.close()
        if stopping is not None:
            self.finish_trackers()
            raise TrainingStopped(stopping, state.global_step, session.total_steps, session.folder.path
                                  / "checkpoints" / f"checkpoint-{state.global_step}")

    def train_epoch(self, epoch: int, start_at: int, signals: StopSignals) -> int | None:
        """Epoch ``epoch`` from its step ``start_at``: its steps, evaluations and checkpoints, then its end.
        Returns the signal that stopped it, if one did."""
        session, state, config = self.session, self.state, self.session.config
        accum, per_epoch, total = config.optim.grad_accum, session.steps_per_epoch, session.total_steps
        state.epoch, state.step_in_epoch = epoch, start_at
        if self.generator is not None:
            self.generator.manual_seed(config.run.seed + epoch)
        loader = session.train_loader
        epoch_loader = session.accelerator.skip_first_batches(loader, start_at * accum) if start_at else loader
        epoch_loader.set_epoch(epoch)  # a stream's shuffle buffer is seeded by the epoch
        batches, stream_ended, stopping = iter(epoch_loader), False, None
        while state.global_step < total and (session.streaming or state.step_in_epoch < per_epoch):
            step_batches = list(islice(batches, accum))
            if len(step_batches) < accum:  # only a stream runs dry: its epoch is over
                stream_ended = True
                break
            self.train_step(step_batches)
            # The last step is evaluated too: the final losses reported are the saved model's.
            if (state.global_step - 1) % config.eval.eval_freq == 0 or state.global_step == total:
                self.evaluate()
            epoch_done = not session.streaming and state.step_in_epoch == per_epoch
            every = config.run.checkpoint_every
            if every and state.global_step % every == 0 and not epoch_done:
                self.checkpoint()
            stopping = signals.agreed(session.accelerator)
            if stopping is not None:
                break
        del batches
        if stream_ended and state.step_in_epoch == 0:
            raise ValueError(f"the training stream gave fewer than --grad-accum {accum} batch(es) in an epoch")
        if stream_ended or (not session.streaming and state.step_in_epoch == per_epoch):
            self.end_epoch(epoch)
        return stopping

    def end_epoch(self, epoch: int) -> None:
        """The book's greedy sample, then the epoch's checkpoint."""
        session = self.session
        if session.accelerator.is_main_process:
            lm = session.accelerator.unwrap_model(session.model)
            every = session.config.eval
            session.progress.write(sample_text(lm, session.tokenizer, every.start_context, every.sample_tokens))
        self.state.epoch, self.state.step_in_epoch = epoch + 1, 0
        self.checkpoint()

    def finish_trackers(self) -> None:
        # Before the final save: the folder is swapped whole, so nothing may still be writing logs/ into it.
        accelerator = self.session.accelerator
        for tracker in accelerator.trackers:
            tracker.finish()
        accelerator.trackers = []

    def finish(self, started: float) -> TrainResult:
        """Write the final model folder whole, print the summary, end the trackers."""
        session, state, config = self.session, self.state, self.session.config
        accelerator, progress = session.accelerator, session.progress
        self.finish_trackers()
        evaluated_on = self.evaluated_on or f"on up to --eval-iter {config.eval.eval_iter} batches"
        save_outputs(accelerator, session.model, config, session.history, session.folder, session.dataset,
                     evaluated_on, session.total_steps)
        minutes, seconds = divmod(time.perf_counter() - started, 60)
        speed = f", training at {progress.tokens_per_second:,.0f} tokens/s" if progress.steps_timed else ""
        accelerator.print(f"{state.global_step} optimizer steps, {state.tokens_seen:,} tokens seen; this run took "
                          f"{int(minutes)}m{seconds:04.1f}s{speed}")
        if progress.mfu is not None:
            gflops, peak = progress.flops_per_token / 1e9, progress.peak_flops / 1e12
            accelerator.print(f"model FLOP utilisation {progress.mfu:.1%} per device ({gflops:.2f} GFLOP per token; "
                              f"peak {peak:.2f} TFLOP/s, {progress.peak_source})")
        accelerator.end_training()
        return TrainResult(session.folder.path, session.history, state.global_step, state.tokens_seen,
                           progress.tokens_per_second, session.folder.resume)


def _mean(sums: tuple[float, int, int]) -> tuple[float, int]:
    total, count, n_batches = sums
    return (total / count if count > 0 else float("nan")), n_batches
