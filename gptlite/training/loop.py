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
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from torch.utils.data import IterableDataset

from gptlite._libc import libc
from gptlite.training.checkpointing import (
    TrainerState,
    load_trainer_state,
    remove_partial_checkpoints,
    resolve_resume,
    save_checkpoint,
)
from gptlite.training.clipping import clip_grad_norm
from gptlite.training.config import TrainConfig
from gptlite.training.evaluation import evaluation_batches, mean_loss, sample_text, token_loss_sum
from gptlite.training.monitoring import History, Progress
from gptlite.training.schedule import build_scheduler, should_clip
from gptlite.training.throughput import cpu_has_native_bf16, device_peak_flops, model_flops_per_token

__all__ = [
    "TrainResult",
    "build_model",
    "build_optimizer",
    "keep_freed_memory",
    "make_accelerator",
    "seed_everything",
    "train",
    "use_tf32",
]


@dataclass
class TrainResult:
    """What :func:`train` returns (on every process)."""

    output_dir: Path
    history: History
    global_step: int
    tokens_seen: int
    tokens_per_second: float
    resumed_from: Path | None


def _has_accelerator() -> bool:
    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def make_accelerator(
    mixed_precision: str | None = None,
    grad_accum: int = 1,
    report_to: list[str] | None = None,
    output_dir: str | Path | None = None,
):
    """An ``Accelerator`` for gptlite's loop.

    Without a GPU it is built with ``cpu=True``: then ``accelerate launch --multi_gpu --num_processes N``
    on a CPU-only machine starts ``N`` processes that form a gloo group (``accelerate launch --cpu``
    starts only one, accelerate issue 2741). The scheduler is stepped by the loop once per optimizer
    step (Accelerate would otherwise step it once per process), and gradients synchronise every
    ``grad_accum`` batches regardless of where the loader stands (the loop fetches a step's batches first).
    """
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration

    on_cpu = not _has_accelerator()
    if on_cpu and mixed_precision == "fp16":
        raise ValueError("--mixed-precision fp16 needs a GPU; on CPU use bf16 or no")
    if on_cpu and mixed_precision == "bf16" and not cpu_has_native_bf16():
        warnings.warn("--mixed-precision bf16: this CPU has no AVX512-BF16 or AMX, so bf16 matrix multiplies are "
                      "emulated and much slower than fp32; --mixed-precision no is faster here", stacklevel=2)
    project = None
    if output_dir is not None:
        project = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(Path(output_dir) / "logs"))
    accelerator = Accelerator(
        cpu=on_cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=grad_accum, sync_with_dataloader=False),
        log_with=list(report_to) if report_to else None,
        project_config=project,
        step_scheduler_with_optimizer=False,
    )
    # accelerate (1.15) turns an FSDP config into FSDP only on GPU-like devices: on CPU it trains with plain
    # DDP without a word (torch's own fully_shard does work on CPU with gloo; accelerate does not route to it).
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and accelerator.distributed_type != "FSDP":
        raise ValueError(f"the accelerate config asks for FSDP, but accelerate runs it as "
                         f"{accelerator.distributed_type.value} here (it shards only on GPUs); on CPU launch with "
                         "--multi_gpu (DDP) instead")
    return accelerator


def keep_freed_memory(device: torch.device) -> None:
    """On CPU under glibc, stop ``free`` from handing large blocks back to the OS (a process-wide setting).

    Every step allocates and frees vocabulary-sized logits (hundreds of MB). glibc serves blocks that
    large with ``mmap`` and unmaps them on free, so each step page-faults them in again: a third of the
    CPU time went to the kernel, and keeping the memory made steps about 1.5x faster on two cores.
    """
    mallopt = getattr(libc(), "mallopt", None) if device.type == "cpu" else None
    if mallopt is None:  # not Linux with glibc (e.g. musl): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, 1 << 30)
    mallopt(m_trim_threshold, (1 << 31) - 1)


def use_tf32(device: torch.device, enabled: bool = True) -> None:
    """On CUDA, let fp32 matmuls run on TF32 tensor cores (a process-wide setting); CPU matmuls stay exact."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if enabled else "highest")


def seed_everything(seed: int) -> None:
    """The run's only global seeding: Python's, NumPy's and torch's generators (model init, dropout)."""
    from accelerate.utils import set_seed

    set_seed(seed)


def build_model(config: TrainConfig):
    """A fresh model with ``config``'s architecture, or the ``--init-from`` model with its dropout and attention."""
    from gptlite.modeling_gptlite import GPTLiteForCausalLM

    if config.init_from is None:
        model = GPTLiteForCausalLM(config.model_config())
        model.set_attn_implementation(config.attn_implementation)
        return model
    model = GPTLiteForCausalLM.from_pretrained(
        config.init_from,
        dtype=torch.float32,
        drop_rate=config.drop_rate,
        fast_dropout=config.fast_dropout,
        attn_implementation=config.attn_implementation,
    )
    if config.context_length > model.config.context_length:
        raise ValueError(
            f"--context-length {config.context_length} exceeds the context_length "
            f"{model.config.context_length} of --init-from {config.init_from}"
        )
    return model.train()


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """The book's AdamW (weight decay on every parameter), with the fused kernel.

    torch has fused AdamW for CUDA and CPU: one pass over each parameter instead of a dozen elementwise
    kernels, 6-8x faster on this project's 2-core CPU at 124M parameters (the for-each version's passes are
    memory-bound).
    """
    device_type = next(model.parameters()).device.type
    fused = device_type in ("cuda", "cpu")
    return torch.optim.AdamW(
        model.parameters(), lr=config.peak_lr, weight_decay=config.weight_decay, fused=fused or None
    )


def _check_resumable(saved: TrainerState, config: TrainConfig, now: TrainerState, total_steps: int) -> None:
    # The data order and the schedule depend on these: a resume with other values would not continue the run.
    # The processes and --grad-accum matter only through their product: an optimizer step takes global
    # batches k*P*A .. (k+1)*P*A - 1 of the epoch's order, whichever process trains which (loop docstring).
    saved_accum = saved.config.get("grad_accum")
    if saved_accum is not None and saved.num_processes * saved_accum != now.num_processes * config.grad_accum:
        per_step = saved.num_processes * saved_accum
        fits = per_step % now.num_processes == 0
        hint = f"; continue it with --grad-accum {per_step // now.num_processes}" if fits else ""
        raise ValueError(
            f"--resume-from: the checkpoint was written by {saved.num_processes} process(es) with --grad-accum "
            f"{saved_accum} ({per_step} batches per optimizer step), this run has {now.num_processes} process(es) "
            f"with --grad-accum {config.grad_accum} ({now.num_processes * config.grad_accum}){hint}"
        )
    same = {
        "--batch-size": (saved.config.get("batch_size"), config.batch_size),
        "--seed": (saved.config.get("seed"), config.seed),
        "optimizer steps per epoch": (saved.steps_per_epoch, now.steps_per_epoch),
        "total optimizer steps": (saved.total_steps, total_steps),
    }
    for what, (before, after) in same.items():
        if before is not None and before != after:
            raise ValueError(f"--resume-from: the checkpoint was written with {what} {before}, this run has {after}")


def train(config: TrainConfig) -> TrainResult:
    """Train a model as ``config`` says; write the model, tokenizer, history and plots to ``config.output_dir``."""
    if config.book_exact:  # the book's chapter-5 loop, draw for draw
        from gptlite.training.book_exact import train_book_exact

        return train_book_exact(config)
    from gptlite.tokenization import get_hf_tokenizer, get_tokenizer
    from gptlite.training.data import build_dataloaders

    started = time.perf_counter()
    out = Path(config.output_dir)
    accelerator = make_accelerator(config.mixed_precision, config.grad_accum, config.report_to, out)
    resume = resolve_resume(config.resume_from, out)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        remove_partial_checkpoints(out)
    if len(get_tokenizer().encode(config.start_context)) >= config.context_length:
        raise ValueError(f"--start-context {config.start_context!r} leaves no room in --context-length")

    keep_freed_memory(accelerator.device)
    use_tf32(accelerator.device, config.tf32)
    seed_everything(config.seed)
    model = build_model(config).to(accelerator.device)
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

    state = TrainerState(steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                         num_processes=accelerator.num_processes, config=config.to_dict())
    history = History()
    if resume is not None:
        saved = load_trainer_state(resume)
        _check_resumable(saved, config, state, total_steps)
        accelerator.load_state(str(resume))
        # load_state restores Accelerate's batch counter, which decides when gradients synchronise: count it
        # in this run's --grad-accum (a checkpoint of N processes resumed on M has another one).
        accelerator.step = saved.global_step * config.grad_accum
        state.global_step, state.epoch, state.step_in_epoch = saved.global_step, saved.epoch, saved.step_in_epoch
        state.tokens_seen, history = saved.tokens_seen, History.from_dict(saved.history)
    if config.report_to:
        accelerator.init_trackers("gptlite", config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                     for k, v in config.to_dict().items()})

    precision = "fp32" if config.mixed_precision in (None, "no") else config.mixed_precision
    peak_flops, peak_source = device_peak_flops(accelerator.device, precision)
    flops_per_token = model_flops_per_token(accelerator.unwrap_model(model), config.context_length)
    progress = Progress(accelerator, total_steps, state.global_step, flops_per_token, peak_flops)
    if resume is not None:
        progress.write(f"Resumed from {resume} at optimizer step {state.global_step} "
                       f"(epoch {state.epoch + 1}, step {state.step_in_epoch} of the epoch)")
    elif config.resume_from == "latest":
        progress.write(f"--resume-from latest: no checkpoint in {out / 'checkpoints'} yet, starting from scratch")
    tokenizer = get_hf_tokenizer()
    world, accum = accelerator.num_processes, config.grad_accum

    def evaluate() -> None:
        step = state.global_step - 1  # 0-based, the book's global_step
        lm = accelerator.unwrap_model(model)  # plain forward passes: no DDP hooks, processes may run unequal counts
        lm.eval()
        # A fresh random set of training batches at each evaluation, the same whatever the process count.
        shuffled = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        shards = (config.batch_size, config.eval_iter, accelerator.process_index, world)
        train_loss = mean_loss(lm, evaluation_batches(train_ds, *shards, generator=shuffled, drop_last=True),
                               accelerator)
        val_loss = None if val_ds is None else mean_loss(lm, evaluation_batches(val_ds, *shards), accelerator)
        lm.train()
        epoch = state.epoch + (state.step_in_epoch / steps_per_epoch if steps_per_epoch else 0)
        history.record_eval(step, epoch, state.tokens_seen, train_loss, val_loss)
        progress.evaluation(state.epoch, step, state.tokens_seen, train_loss, val_loss)

    def checkpoint() -> None:
        state.history = history.to_dict()
        path = save_checkpoint(accelerator, out, state, config.keep_checkpoints)
        progress.write(f"Saved checkpoint {path}")

    def train_step(batches: list) -> None:
        progress.start_step()
        counts = torch.stack([sum((t != -100).sum() for _, t in batches),
                              torch.tensor(sum(x.numel() for x, _ in batches), device=accelerator.device)])
        n_targets, n_inputs = accelerator.reduce(counts, reduction="sum").tolist()
        lr = scheduler.get_last_lr()[0]
        loss_total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        for input_ids, target_ids in batches:
            with accelerator.accumulate(model):
                loss_sum, _ = token_loss_sum(model, input_ids, target_ids)
                # Accelerate divides by grad_accum and DDP averages over processes: undo both, so the
                # gradient is that of (sum of all token losses of the step) / (all its target tokens).
                accelerator.backward(loss_sum * (world * accum / max(n_targets, 1)))
                loss_total += loss_sum.detach().double()
                if accelerator.sync_gradients:
                    if config.grad_clip is not None and should_clip(state.global_step, schedule.warmup_steps,
                                                                    config.clip_mode):
                        clip_grad_norm(accelerator, model.parameters(), config.grad_clip)
                    optimizer.step()
                    if not accelerator.optimizer_step_was_skipped:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            raise RuntimeError("gradients did not synchronise at the end of an optimizer step")
        loss = accelerator.reduce(loss_total, reduction="sum").item() / max(n_targets, 1)
        state.global_step += 1
        state.step_in_epoch += 1
        state.tokens_seen += n_inputs
        history.record_step(lr, loss)
        progress.end_step(state.global_step, loss, lr, n_inputs)

    model.train()
    epoch, start = state.epoch, state.step_in_epoch
    if steps_per_epoch and start >= steps_per_epoch:
        epoch, start = epoch + 1, 0
    saved_step = state.global_step if resume is not None else None
    while state.global_step < total_steps:
        state.epoch, state.step_in_epoch = epoch, start
        if generator is not None:
            generator.manual_seed(config.seed + epoch)
        epoch_loader = accelerator.skip_first_batches(loader, start * accum) if start else loader
        epoch_loader.set_epoch(epoch)  # a stream's shuffle buffer is seeded by the epoch
        batches, stream_ended = iter(epoch_loader), False
        while state.global_step < total_steps and (streaming or state.step_in_epoch < steps_per_epoch):
            step_batches = list(islice(batches, accum))
            if len(step_batches) < accum:  # only a stream runs dry: its epoch is over
                stream_ended = True
                break
            train_step(step_batches)
            if (state.global_step - 1) % config.eval_freq == 0:
                evaluate()
            epoch_done = not streaming and state.step_in_epoch == steps_per_epoch
            if config.checkpoint_every and state.global_step % config.checkpoint_every == 0 and not epoch_done:
                checkpoint()
                saved_step = state.global_step
        del batches
        if stream_ended and state.step_in_epoch == 0:
            raise ValueError(f"the training stream gave fewer than --grad-accum {accum} batch(es) in an epoch")
        if stream_ended or (not streaming and state.step_in_epoch == steps_per_epoch):
            if accelerator.is_main_process:
                progress.write(sample_text(accelerator.unwrap_model(model), tokenizer, config.start_context,
                                           config.sample_tokens))
            state.epoch, state.step_in_epoch = epoch + 1, 0
            checkpoint()
            saved_step = state.global_step
        epoch, start = epoch + 1, 0
    if saved_step != state.global_step:  # stopped by --max-steps inside an epoch
        checkpoint()
    progress.close()
    _save_outputs(accelerator, model, config, history, out)
    minutes, seconds = divmod(time.perf_counter() - started, 60)
    accelerator.print(f"{state.global_step} optimizer steps, {state.tokens_seen:,} tokens seen; this run took "
                      f"{int(minutes)}m{seconds:04.1f}s, training at {progress.tokens_per_second:,.0f} tokens/s")
    if progress.mfu is not None:
        accelerator.print(f"model FLOP utilisation {progress.mfu:.1%} per device ({flops_per_token / 1e9:.2f} GFLOP "
                          f"per token; peak {peak_flops / 1e12:.2f} TFLOP/s, {peak_source})")
    accelerator.end_training()
    return TrainResult(out, history, state.global_step, state.tokens_seen, progress.tokens_per_second, resume)


def _save_outputs(accelerator, model, config: TrainConfig, history: History, out: Path) -> None:
    from gptlite.tokenization import save_tokenizer
    from gptlite.training.data import train_source
    from gptlite.training.plots import plot_losses, plot_lr

    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    unwrapped = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    unwrapped.save_pretrained(out)  # config.json, model.safetensors, generation_config.json, the model's code
    save_tokenizer(out, model_max_length=unwrapped.config.context_length)
    history.save(out / "history.json", dataset=train_source(config.data_config()).describe())
    (out / "train_config.json").write_text(json.dumps(config.to_dict(), indent=1), encoding="utf-8")
    if history.step:
        plot_losses(history, out / "loss.png")
    plot_lr(history, out / "lr.png")
    ppl = math.exp(history.val_loss[-1]) if history.val_loss and history.val_loss[-1] is not None else None
    summary = f"Saved the model, tokenizer, history.json, loss.png and lr.png in {out}"
    accelerator.print(summary + (f" (final validation perplexity {ppl:.1f})" if ppl is not None else ""))
