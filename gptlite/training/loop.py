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
from torch.utils.data import IterableDataset

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
from gptlite.training.monitoring import History, Progress
from gptlite.training.outputs import TrainResult, push_run, save_outputs
from gptlite.training.preflight import check_trackers
from gptlite.training.run_folder import RunFolder, claim_run_folder, run_settings
from gptlite.training.runtime import (
    build_model,
    build_optimizer,
    keep_freed_memory,
    make_accelerator,
    seed_everything,
    use_tf32,
)
from gptlite.training.schedule import LRSchedule, build_scheduler, should_clip
from gptlite.training.stopping import StopSignals, TrainingStopped
from gptlite.training.throughput import device_peak_flops, model_flops_per_token

__all__ = ["TrainResult", "train"]


def train(config: TrainConfig) -> TrainResult:
    """Train a model as ``config`` says; write the model, tokenizer, history and plots to ``config.output_dir``.

    Raises:
        FolderRefused: the output folder holds another run, or another live process trains in it.
        FolderWriteError: a checkpoint or the final model could not be written (disk full); what was
            there before is intact.
        TrainingStopped: SIGINT or SIGTERM stopped the run after a step; it names the checkpoint to resume.
    """
    check_trackers(config.report_to)  # before anything is written or read
    if config.book_exact:  # the book's chapter-5 loop, draw for draw
        from gptlite.training.book_exact import train_book_exact

        return train_book_exact(config)
    started = time.perf_counter()
    accelerator = make_accelerator(config.mixed_precision, config.grad_accum, config.report_to, config.output_dir)
    run = claim_run_folder(config, accelerator)
    session = None
    try:
        session = _Session.set_up(config, accelerator, run)
        session.restore()
        session.train_steps()
        result = session.finish(started)
        if config.push_to_hub and accelerator.is_main_process:  # with the lock held: the folder cannot change
            push_run(run.path, config, say=accelerator.print)
        return result
    finally:
        if session is not None and session.progress is not None:
            session.progress.close()  # now, or tqdm redraws the bar after the error line at exit
        run.release()


@dataclass
class _Session:
    """One process's share of a run: what :func:`train` sets up, and its named steps."""

    config: TrainConfig
    accelerator: object
    run: RunFolder
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: object
    scheduler: object
    schedule: LRSchedule
    train_ds: object
    val_ds: object
    generator: torch.Generator | None
    streaming: bool
    steps_per_epoch: int
    total_steps: int
    state: TrainerState
    history: History
    progress: Progress | None = None
    evaluated_on: str | None = None  # which batches the last evaluation averaged, for the summary
    saved_step: int | None = None  # the step of the newest checkpoint
    flops_per_token: float = 0.0
    peak_flops: float | None = None
    peak_source: str = ""
    tokenizer: object = None  # for the samples after each epoch

    @classmethod
    def set_up(cls, config: TrainConfig, accelerator, run: RunFolder) -> _Session:
        """Model, data, optimizer and schedule, prepared by Accelerate."""
        from gptlite.tokenization import get_tokenizer
        from gptlite.training.data import build_dataloaders

        if len(get_tokenizer().encode(config.start_context)) >= config.context_length:
            raise ValueError(f"--start-context {config.start_context!r} leaves no room in --context-length")
        keep_freed_memory(accelerator.device)
        use_tf32(accelerator.device, config.tf32)
        seed_everything(config.seed)
        quiet = None if accelerator.is_main_process else (lambda message: None)  # one notice, not one per process
        model = build_model(config, notice=quiet).to(accelerator.device)
        if config.compile:
            # nn.Module.compile compiles in place, not in a wrapper: the state dict, the checkpoints and the
            # saved model keep their names (no `_orig_mod.`), and the evaluations use the compiled forward too.
            model.compile()
        with accelerator.main_process_first():  # the main process tokenizes and caches, the others then read
            train_loader, val_loader = build_dataloaders(config.data_config(), config.batch_size, seed=config.seed)
        generator = train_loader.generator  # also the sampler's; Accelerate keeps it when preparing
        train_ds, val_ds = train_loader.dataset, None if val_loader is None else val_loader.dataset
        optimizer = build_optimizer(model, config)
        model, optimizer, loader = accelerator.prepare(model, optimizer, train_loader)

        streaming = isinstance(train_ds, IterableDataset)
        steps_per_epoch = 0 if streaming else len(loader) // config.grad_accum
        if not streaming and steps_per_epoch == 0:
            raise ValueError(
                f"the training split gives {len(loader)} batch(es) of --batch-size {config.batch_size} per process, "
                f"fewer than one optimizer step of --grad-accum {config.grad_accum}; lower them or add data"
            )
        total_steps = config.max_steps or config.epochs * steps_per_epoch
        schedule = config.lr_schedule(total_steps)
        scheduler = accelerator.prepare(build_scheduler(optimizer, schedule))
        architecture = model_architecture(accelerator.unwrap_model(model).config)
        state = TrainerState(steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                             num_processes=accelerator.num_processes, config=config.to_dict(), run_id=run.run_id,
                             architecture=architecture, data=data_identity(config.data_config(), train_ds, val_ds))
        return cls(config, accelerator, run, model, optimizer, loader, scheduler, schedule, train_ds, val_ds,
                   generator, streaming, steps_per_epoch, total_steps, state, History())

    def restore(self) -> None:
        """Continue from the checkpoint the run resumes from (if any); start the trackers and the progress bar."""
        from gptlite.tokenization import get_hf_tokenizer

        config, accelerator, state, resume = self.config, self.accelerator, self.state, self.run.resume
        if resume is not None:
            saved = load_trainer_state(resume)
            check_resumable(saved, state, resume)
            # Also gives self.schedule (the scheduler's factor, the same object) the checkpoint's fields: a run
            # extended by --epochs / --max-steps keeps its schedule and warmup (which decides clipping).
            load_checkpoint(accelerator, resume, saved.num_processes)
            # load_state restores Accelerate's batch counter, which decides when gradients synchronise: count it
            # in this run's --grad-accum (a checkpoint of N processes resumed on M has another one).
            accelerator.step = saved.global_step * config.grad_accum
            state.global_step, state.epoch, state.step_in_epoch = saved.global_step, saved.epoch, saved.step_in_epoch
            state.tokens_seen, self.history = saved.tokens_seen, History.from_dict(saved.history)
            self.saved_step = state.global_step
        self.run.record_settings(run_settings(config))
        if config.report_to:
            accelerator.init_trackers("gptlite", config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                         for k, v in config.to_dict().items()})
        precision = "fp32" if config.mixed_precision in (None, "no") else config.mixed_precision
        self.peak_flops, self.peak_source = device_peak_flops(accelerator.device, precision)
        self.flops_per_token = model_flops_per_token(accelerator.unwrap_model(self.model), config.context_length)
        self.progress = Progress(accelerator, self.total_steps, state.global_step, self.flops_per_token,
                                 self.peak_flops)
        self.tokenizer = get_hf_tokenizer()
        if resume is not None:
            self.progress.write(f"Resumed from {resume} at optimizer step {state.global_step} of {self.total_steps} "
                                f"(epoch {state.epoch + 1}, step {state.step_in_epoch} of the epoch)")
        elif config.resume_from == "latest":
            self.progress.write(f"--resume-from latest: no checkpoint of this run in {self.run.path / 'checkpoints'} "
                                "yet, starting from scratch")

    def evaluate(self) -> None:
        """The book's evaluation: mean losses over --eval-iter training and validation batches."""
        config, accelerator, state = self.config, self.accelerator, self.state
        step = state.global_step - 1  # 0-based, the book's global_step
        lm = accelerator.unwrap_model(self.model)  # plain forward passes: no DDP hooks, unequal counts are fine
        lm.eval()
        # A fresh random set of training batches at each evaluation, the same whatever the process count.
        shuffled = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        shards = (config.batch_size, config.eval_iter, accelerator.process_index, accelerator.num_processes)
        train_batches = evaluation_batches(self.train_ds, *shards, generator=shuffled, drop_last=True)
        train_loss, n_train = _mean(loss_sums(lm, train_batches, accelerator))
        val_loss, n_val = None, 0
        if self.val_ds is not None:
            val_loss, n_val = _mean(loss_sums(lm, evaluation_batches(self.val_ds, *shards), accelerator))
        lm.train()
        for what, loss, n in (("the training loss", train_loss, n_train), ("the validation loss", val_loss, n_val)):
            if n:  # no batches: no measurement (NaN by convention), not a divergence
                check_finite(f"{what} of the evaluation", loss, state.global_step, self.diverged_where, after=True)
        epoch = state.epoch + (state.step_in_epoch / self.steps_per_epoch if self.steps_per_epoch else 0)
        self.history.record_eval(step, epoch, state.tokens_seen, train_loss, val_loss)
        self.progress.evaluation(state.epoch, step, state.tokens_seen, train_loss, val_loss)
        split, n = ("validation", n_val) if self.val_ds is not None else ("training", n_train)
        every = "all" if n < config.eval_iter else "the first"
        self.evaluated_on = (f"on {every} {n} {split} batch(es) of --batch-size {config.batch_size} "
                             f"(--eval-iter {config.eval_iter})")

    def diverged_where(self, lr: float | None = None) -> dict:
        """What a divergence error says besides the step: the run's length, learning rates and kept checkpoint."""
        last = self.run.latest_checkpoint() if self.saved_step is not None else None
        return {"total_steps": self.total_steps, "lr": lr, "last_checkpoint": last or self.run.resume,
                "peak_lr": self.config.peak_lr}

    def checkpoint(self) -> None:
        # Never a checkpoint of NaN weights: it would resume into garbage (and prune a good one).
        check_finite_weights(self.model, self.state.global_step, self.accelerator, self.diverged_where)
        self.state.history = self.history.to_dict()
        path = self.run.save_checkpoint(self.accelerator, self.state, self.config.keep_checkpoints)
        self.saved_step = self.state.global_step
        self.progress.write(f"Saved checkpoint {path}")

    def train_step(self, batches: list) -> None:
        """One optimizer step over ``batches`` (--grad-accum of them), the loss a mean over all their tokens."""
        accelerator, config, state, model = self.accelerator, self.config, self.state, self.model
        world, accum = accelerator.num_processes, config.grad_accum
        self.progress.start_step()
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
                    if config.grad_clip is not None and should_clip(state.global_step, self.schedule.warmup_steps,
                                                                    config.clip_mode):
                        norm = clip_grad_norm(accelerator, model.parameters(), config.grad_clip)
                        # Before the step: NaN gradients would make every weight NaN. (fp16's loss scaler expects
                        # overflowing gradients now and then: it skips that step and lowers its scale.)
                        if accelerator.scaler is None:
                            check_finite("the gradient norm", norm, state.global_step + 1,
                                         lambda: self.diverged_where(lr))
                    self.optimizer.step()
                    if not accelerator.optimizer_step_was_skipped:
                        self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            raise RuntimeError("gradients did not synchronise at the end of an optimizer step")
        loss = accelerator.reduce(loss_total, reduction="sum").item() / max(n_targets, 1)
        # The loss is all-reduced: every process sees the same value and stops at the same step.
        check_finite("the training loss", loss, state.global_step + 1, lambda: self.diverged_where(lr))
        state.global_step += 1
        state.step_in_epoch += 1
        state.tokens_seen += n_inputs
        self.history.record_step(lr, loss)
        self.progress.end_step(state.global_step, loss, lr, n_inputs)

    def train_steps(self) -> None:
        """Epochs of optimizer steps up to the run's last, with evaluations, samples and checkpoints.

        A SIGINT/SIGTERM ends the step in progress (and its evaluation and epoch end, if due), writes a
        checkpoint and raises :class:`TrainingStopped`.
        """
        config, accelerator, state = self.config, self.accelerator, self.state
        accum, steps_per_epoch, total_steps = config.grad_accum, self.steps_per_epoch, self.total_steps
        self.model.train()
        epoch, start = state.epoch, state.step_in_epoch
        if steps_per_epoch and start >= steps_per_epoch:
            epoch, start = epoch + 1, 0
        stopping = None
        with StopSignals() as signals:
            while state.global_step < total_steps and stopping is None:
                state.epoch, state.step_in_epoch = epoch, start
                if self.generator is not None:
                    self.generator.manual_seed(config.seed + epoch)
                epoch_loader = accelerator.skip_first_batches(self.loader, start * accum) if start else self.loader
                epoch_loader.set_epoch(epoch)  # a stream's shuffle buffer is seeded by the epoch
                batches, stream_ended = iter(epoch_loader), False
                while state.global_step < total_steps and (self.streaming or state.step_in_epoch < steps_per_epoch):
                    step_batches = list(islice(batches, accum))
                    if len(step_batches) < accum:  # only a stream runs dry: its epoch is over
                        stream_ended = True
                        break
                    self.train_step(step_batches)
                    # The last step is evaluated too: the final losses reported are the saved model's.
                    if (state.global_step - 1) % config.eval_freq == 0 or state.global_step == total_steps:
                        self.evaluate()
                    epoch_done = not self.streaming and state.step_in_epoch == steps_per_epoch
                    if config.checkpoint_every and state.global_step % config.checkpoint_every == 0 and not epoch_done:
                        self.checkpoint()
                    stopping = signals.agreed(accelerator)
                    if stopping is not None:
                        break
                del batches
                if stream_ended and state.step_in_epoch == 0:
                    raise ValueError(f"the training stream gave fewer than --grad-accum {accum} batch(es) in an epoch")
                if stream_ended or (not self.streaming and state.step_in_epoch == steps_per_epoch):
                    self.end_epoch(epoch)
                epoch, start = epoch + 1, 0
            if self.saved_step != state.global_step:  # stopped by --max-steps or a signal inside an epoch
                self.checkpoint()
        self.progress.close()
        if stopping is not None:
            self.finish_trackers()
            raise TrainingStopped(stopping, state.global_step, total_steps, self.run.path / "checkpoints"
                                  / f"checkpoint-{state.global_step}")

    def end_epoch(self, epoch: int) -> None:
        """The book's greedy sample, then the epoch's checkpoint."""
        if self.accelerator.is_main_process:
            lm = self.accelerator.unwrap_model(self.model)
            self.progress.write(sample_text(lm, self.tokenizer, self.config.start_context,
                                            self.config.sample_tokens))
        self.state.epoch, self.state.step_in_epoch = epoch + 1, 0
        self.checkpoint()

    def finish_trackers(self) -> None:
        # Before the final save: the folder is swapped whole, so nothing may still be writing logs/ into it.
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers = []

    def finish(self, started: float) -> TrainResult:
        """Write the final model folder whole, print the summary, end the trackers."""
        accelerator, state, config = self.accelerator, self.state, self.config
        self.finish_trackers()
        evaluated_on = self.evaluated_on or f"on up to --eval-iter {config.eval_iter} batches"
        save_outputs(accelerator, self.model, config, self.history, self.run, evaluated_on, self.total_steps)
        minutes, seconds = divmod(time.perf_counter() - started, 60)
        progress = self.progress
        speed = f", training at {progress.tokens_per_second:,.0f} tokens/s" if progress.steps_timed else ""
        accelerator.print(f"{state.global_step} optimizer steps, {state.tokens_seen:,} tokens seen; this run took "
                          f"{int(minutes)}m{seconds:04.1f}s{speed}")
        if progress.mfu is not None:
            accelerator.print(f"model FLOP utilisation {progress.mfu:.1%} per device ({self.flops_per_token / 1e9:.2f}"
                              f" GFLOP per token; peak {self.peak_flops / 1e12:.2f} TFLOP/s, {self.peak_source})")
        accelerator.end_training()
        return TrainResult(self.run.path, self.history, state.global_step, state.tokens_seen,
                           progress.tokens_per_second, self.run.resume)


def _mean(sums: tuple[float, int, int]) -> tuple[float, int]:
    total, count, n_batches = sums
    return (total / count if count > 0 else float("nan")), n_batches
