"""Loss, perplexity and samples: the training loop's evaluation and the ``gptlite-eval`` command's Python twin.

The loss is the book's ``calc_loss_batch``: cross-entropy between the logits and the already shifted
``target_ids`` of a window (computed in fp32; ``-100`` targets are ignored). Means are exact: sums of
per-token losses and token counts are added up over batches and processes, then divided.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable
from itertools import islice

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from gptlite.generation import generate_text
from gptlite.loading import load_model
from gptlite.speedups import speed_up
from gptlite.training.data import DataConfig, build_datasets
from gptlite.training.monitoring import perplexity
from gptlite.training.preflight import check_vocabulary
from gptlite.training.runtime import make_accelerator

__all__ = ["evaluate_model", "evaluation_batches", "loss_sums", "sample_text", "token_loss_sum"]


def token_loss_sum(model, input_ids: torch.Tensor, target_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the per-token cross-entropy over a batch, and the number of targets counted (not ``-100``).

    ``target_ids`` are the inputs shifted by one, as the windows yield them, so no shift happens here
    (unlike ``labels=`` of the model's forward, which shifts inside).
    """
    # No KV cache: training never reuses it. num_items_in_batch=1 makes the loss the sum rather than the mean.
    # (A model sped up for training computes it from the hidden states, without (b, t, vocab) logits.)
    loss_sum = model(input_ids=input_ids, shift_labels=target_ids, num_items_in_batch=1, use_cache=False).loss
    return loss_sum, (target_ids != -100).sum()


def evaluation_batches(
    dataset: Dataset | IterableDataset,
    batch_size: int,
    max_batches: int | None,
    process_index: int = 0,
    num_processes: int = 1,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterable:
    """This process's share of the first ``max_batches`` batches (None: all) of ``dataset``.

    The batches are those one process would see (in window order, or shuffled by ``generator``, with the
    last short batch dropped if ``drop_last``); process ``i`` gets batches ``i, i + n, ...`` so every
    batch is evaluated exactly once whatever the number of processes.
    """
    if isinstance(dataset, IterableDataset):
        stream = islice(DataLoader(dataset, batch_size=batch_size, drop_last=drop_last), max_batches)
        return (batch for i, batch in enumerate(stream) if i % num_processes == process_index)
    n = len(dataset)
    order = torch.randperm(n, generator=generator).tolist() if generator is not None else list(range(n))
    n_batches = n // batch_size if drop_last else math.ceil(n / batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    mine = [order[b * batch_size : (b + 1) * batch_size] for b in range(process_index, n_batches, num_processes)]
    return DataLoader(dataset, batch_sampler=mine) if mine else []


@torch.no_grad()
def loss_sums(model, batches: Iterable, accelerator) -> tuple[float, int, int]:
    """``(sum of per-token losses, target tokens, batches)`` over ``batches`` and every process.

    Every process must call it (the sums are all-reduced).
    """
    dtype = torch.float32 if accelerator.device.type == "mps" else torch.float64
    sums = torch.zeros(3, dtype=dtype, device=accelerator.device)
    for input_ids, target_ids in batches:
        input_ids, target_ids = input_ids.to(accelerator.device), target_ids.to(accelerator.device)
        with accelerator.autocast():
            loss_sum, count = token_loss_sum(model, input_ids, target_ids)
        sums += torch.stack([loss_sum.to(dtype), count.to(dtype), sums.new_ones(())])
    total, count, n_batches = accelerator.reduce(sums, reduction="sum").tolist()
    return total, int(count), int(n_batches)


def sample_text(model, tokenizer, start_context: str, max_new_tokens: int = 50) -> str:
    """The book's ``generate_and_print_sample``: a greedy continuation of ``start_context`` on one line."""

    was_training = model.training
    model.eval()  # no dropout while sampling, and no draws from the RNG that training continues with
    try:
        text = generate_text(model, tokenizer, start_context, max_new_tokens=max_new_tokens)
    finally:
        model.train(was_training)
    return text.replace("\n", " ")


def evaluate_model(
    model: str | os.PathLike[str],
    data: DataConfig | None = None,
    split: str = "all",
    batch_size: int = 8,
    max_batches: int | None = None,
    mixed_precision: str | None = None,
) -> dict[str, float | int]:
    """Loss and perplexity of a saved model on a corpus, cut into the same windows as training.

    ``data`` says which corpus and which windows, as for training (None: the built-in corpus in windows of the
    model's context length). ``split`` is ``"all"`` (every window of the corpus), or ``"train"`` /
    ``"validation"``: the two parts training makes with ``data.train_ratio`` (so ``validation`` scores a run on
    the text it held out). ``model`` is a gptlite folder, a plain GPT-2 folder (converted in memory) or a Hub id
    (see :func:`gptlite.loading.load_model`). Runs on every process of an ``accelerate launch``; the numbers
    are over all of them.

    Returns:
        ``{"loss", "perplexity", "tokens", "batches"}``.
    """
    if split not in ("all", "train", "validation"):
        raise ValueError(f"--split must be all, train or validation, got {split!r}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"--max-batches must be >= 1, got {max_batches}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    accelerator = make_accelerator(mixed_precision=mixed_precision)
    quiet = None if accelerator.is_main_process else (lambda message: None)  # one notice, not one per process
    lm = speed_up(load_model(model, dtype=torch.float32, notice=quiet).to(accelerator.device).eval())
    check_vocabulary(lm.config.vocab_size, f"the model {model}")
    data = DataConfig(context_length=lm.config.context_length) if data is None else data
    if data.context_length > lm.config.context_length:
        raise ValueError(f"--context-length {data.context_length} exceeds the model's context_length "
                         f"{lm.config.context_length}")
    if split == "all":
        data = dataclasses.replace(data, train_ratio=1.0)
    with accelerator.main_process_first():
        train_ds, val_ds = build_datasets(data, shuffle=False)
    chosen = val_ds if split == "validation" else train_ds
    if chosen is None:
        raise ValueError("--split validation needs --train-ratio below 1")
    batches = evaluation_batches(chosen, batch_size, max_batches, accelerator.process_index, accelerator.num_processes)
    total, tokens, n_batches = loss_sums(lm, batches, accelerator)
    loss = total / tokens if tokens > 0 else float("nan")
    return {"loss": loss, "perplexity": perplexity(loss), "tokens": tokens, "batches": n_batches}
