"""Training data: text sources → GPT-2 tokens (cached) → the book's sliding windows → DataLoaders.

Entry point: :func:`build_dataloaders`. The pieces are :func:`load_token_splits` (tokenize once on
every core, cache uint16 shards on disk), :func:`build_datasets` and, in :mod:`gptlite.training.sources`,
:mod:`gptlite.training.token_cache` and :mod:`gptlite.training.windows`, the sources, the cache and the windows.

Train/validation split when no separate validation data is given:

* **one document** (e.g. a single text file): the book's character split,
  ``split_idx = int(train_ratio * len(text))``; each side is tokenized separately, so
  ``the-verdict.txt`` gives exactly the book's windows.
* **several documents**: the documents are tokenized and joined (``<|endoftext|>`` between them) in
  source order, and the token stream is cut at ``int(train_ratio * n_tokens)``.
* **streaming**: the total is unknown in advance, so every ``k``-th document goes to validation with
  ``k = round(1 / (1 - train_ratio))`` (every 10th for 0.9).

With ``train_ratio = 1`` and no validation data there is no validation loader (None).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from gptlite.folders import move_into_place, process_alive
from gptlite.tokenization import ENCODER_JSON_SHA256, N_VOCAB, VOCAB_BPE_SHA256
from gptlite.training.flags import require, require_at_least_or_none, require_positive, setting
from gptlite.training.sources import TextSource, resolve_files, single_document
from gptlite.training.token_cache import (
    SHARD_TOKENS,
    TokenShards,
    tokenize_documents,
    write_token_stream,
)
from gptlite.training.windows import StreamingWindows, TokenWindows, collate_windows, num_windows

__all__ = [
    "DataConfig",
    "build_dataloaders",
    "build_datasets",
    "default_cache_dir",
    "load_token_splits",
    "tokenize_documents",
    "train_source",
    "validation_source",
]

CACHE_VERSION = 2  # 2: uint16 shards (TokenShards); 1 was one train.npy/val.npy


@dataclass
class DataConfig:
    """Where the training text comes from and how it becomes windows: the ``data`` part of a run's settings.

    Each field is also a flag of ``gptlite-train`` and ``gptlite-eval`` (``context_length`` is ``--context-length``).
    """

    data: list[str] = setting(factory=list, help=(
        "Text files, folders or globs to train on (JSONL/CSV/Parquet use --text-column), or the-verdict (the book's "
        "text, downloaded once into the cache); none: the built-in corpus."))
    dataset: str | None = setting(None, "Hugging Face Hub dataset name instead of local files (downloaded by "
                                  "`datasets` the first time).")
    dataset_config: str | None = setting(None, "Configuration (subset) of the Hub dataset.")
    dataset_split: str = setting("train", "Split of the Hub dataset to train on.")
    validation_data: list[str] = setting(factory=list, help=(
        "Separate validation files, folders or globs (then --train-ratio is not used)."))
    validation_split: str | None = setting(None, "Split of the Hub dataset to validate on (e.g. validation).")
    text_column: str = setting("text", "Column holding the text in JSONL/CSV/Parquet files and Hub datasets.")
    streaming: bool = setting(False, "Tokenize on the fly instead of caching the tokenized corpus (needs "
                              "--max-steps); every k-th document validates.")
    context_length: int = setting(128, "Tokens per training window, and the model's context length.")
    stride: int | None = setting(None, "Step between window starts (default: --context-length, windows do not "
                                 "overlap).")
    train_ratio: float = setting(0.9, "Share of the corpus used for training when no validation data is given "
                                 "(the rest validates).")
    eot_as_special: bool = setting(False, "Tokenize a literal <|endoftext|> inside a document as the special token "
                                   "50256 instead of as text.")
    num_proc: int | None = setting(None, "Processes that tokenize the corpus for the cache (default: every usable "
                                   "core).")
    cache_dir: str | None = setting(None, "Folder of the token cache (default: ~/.cache/gptlite/tokens).")
    shuffle_buffer: int = setting(10_000, "With --streaming: windows held in the training stream's shuffle buffer.")

    def __post_init__(self) -> None:
        for name in ("data", "validation_data"):
            value = getattr(self, name)
            setattr(self, name, [os.fspath(value)] if isinstance(value, (str, os.PathLike)) else list(value))
        require_positive(self, "context_length", "shuffle_buffer")
        require_at_least_or_none(self, 1, "stride", "num_proc")
        require(0.0 < self.train_ratio <= 1.0, "train_ratio", "in (0, 1]", self)
        if self.data and self.dataset is not None:
            raise ValueError(f"give either --data ({' '.join(self.data)}) or --dataset ({self.dataset}), not both")
        if self.validation_split is not None and self.dataset is None:
            raise ValueError("--validation-split selects a split of a Hub --dataset; use --validation-data for files")

    @property
    def window_stride(self) -> int:
        return self.context_length if self.stride is None else self.stride

    @property
    def has_validation_source(self) -> bool:
        return bool(self.validation_data) or self.validation_split is not None


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/gptlite/tokens``, or ``~/.cache/gptlite/tokens``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gptlite" / "tokens"


def _hf_cache_dir(config: DataConfig) -> str | None:
    return None if config.cache_dir is None else str(Path(config.cache_dir) / "hf-datasets")


def train_source(config: DataConfig) -> TextSource:
    """The training corpus of ``config`` (files resolved now, so missing paths fail early)."""
    return TextSource(
        files=tuple(resolve_files(config.data)),
        dataset=config.dataset,
        dataset_config=config.dataset_config,
        dataset_split=config.dataset_split,
        text_column=config.text_column,
        hf_cache_dir=_hf_cache_dir(config),
    )


def validation_source(config: DataConfig) -> TextSource | None:
    """The separate validation corpus of ``config``, or None if validation is split off the training data."""
    if config.validation_data:
        files = tuple(resolve_files(config.validation_data))
        return TextSource(files=files, text_column=config.text_column, hf_cache_dir=_hf_cache_dir(config))
    if config.validation_split is not None:
        return TextSource(
            dataset=config.dataset,
            dataset_config=config.dataset_config,
            dataset_split=config.validation_split,
            text_column=config.text_column,
            hf_cache_dir=_hf_cache_dir(config),
        )
    return None


# -- cache ----------------------------------------------------------------------------------------


def _cache_key(config: DataConfig, train: TextSource, val: TextSource | None) -> str:

    split = "separate" if val is not None else ("none" if config.train_ratio >= 1 else config.train_ratio)
    key = [
        CACHE_VERSION,
        ["gpt2", N_VOCAB, ENCODER_JSON_SHA256, VOCAB_BPE_SHA256],
        ["eot_as_special", config.eot_as_special],
        ["split", split],
        train.fingerprint(),
        None if val is None else val.fingerprint(),
    ]
    return hashlib.sha256(json.dumps(key, default=str).encode("utf-8")).hexdigest()[:24]


def _write_splits(config: DataConfig, train: TextSource, val: TextSource | None, folder: Path, shard_tokens: int):
    """Tokenize into shards in ``folder``; return ``{split: {"shards": file names, "start": .., "stop": ..}}``."""
    tok = {"eot_as_special": config.eot_as_special, "num_proc": config.num_proc, "shard_tokens": shard_tokens}

    def write(parts, name: str, cut: float | None = None) -> list[dict]:
        paths, n_tokens = write_token_stream(parts, folder, name, **tok)
        shards = [p.name for p in paths]
        if cut is None:
            return [{"shards": shards, "start": 0, "stop": n_tokens}]
        at = int(cut * n_tokens)  # several documents in one stream: train and validation are its two ends
        return [{"shards": shards, "start": 0, "stop": at}, {"shards": shards, "start": at, "stop": n_tokens}]

    if val is not None:
        return {"train": write(train.parts(), "train")[0], "val": write(val.parts(), "val")[0]}
    parts = train.parts()
    if config.train_ratio >= 1:
        return {"train": write(parts, "train")[0]}
    text = single_document(parts)
    if text is not None:  # the book: split the text at train_ratio of its characters
        split_idx = int(config.train_ratio * len(text))
        return {"train": write([[text[:split_idx]]], "train")[0], "val": write([[text[split_idx:]]], "val")[0]}
    train_split, val_split = write(parts, "all", cut=config.train_ratio)
    return {"train": train_split, "val": val_split}


_WRITER_TAG = ".tmp-"
_WRITER = re.compile(r"^\.[0-9a-f]+\.tmp-(?P<pid>\d+)-(?P<host>.+)$")


def remove_stale_writers(folder: Path) -> list[Path]:
    """Delete the hidden folders of cache writers that are gone (killed while tokenizing); return them.

    A writer on another host counts as alive: its process cannot be seen from here.
    """
    stale = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = _WRITER.match(path.name)
            if match and not process_alive(int(match["pid"]), match["host"]):
                shutil.rmtree(path, ignore_errors=True)
                stale.append(path)
    return stale


def _open_split(entry: Path, split: dict | None) -> TokenShards | None:
    if split is None:
        return None
    return TokenShards([entry / name for name in split["shards"]], split["start"], split["stop"])


def load_token_splits(
    config: DataConfig, shard_tokens: int = SHARD_TOKENS
) -> tuple[TokenShards, TokenShards | None]:
    """Train and validation token streams (validation None if there is none), tokenized once.

    The result is cached under ``config.cache_dir`` keyed by a hash of the sources (local files' paths,
    sizes and modification times; a Hub dataset's fingerprint; the built-in corpus's text), the
    tokenizer, ``eot_as_special``, the text column and the split, so a second run memory-maps the
    saved uint16 shards (:class:`TokenShards`, ``shard_tokens`` ids each) instead of tokenizing.
    Tokenizing uses ``config.num_proc`` processes (None: every core) and memory flat in the corpus
    size, except that a single document (the book's character split) is read whole. Not for ``streaming``.
    """
    train, val = train_source(config), validation_source(config)
    folder = Path(config.cache_dir) if config.cache_dir is not None else default_cache_dir()
    entry = folder / _cache_key(config, train, val)
    remove_stale_writers(folder)
    if not (entry / "meta.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        # Written in a hidden sibling and renamed whole: a cache entry is complete or absent. The sibling is named
        # after its writer, so that a later run can tell a killed writer's leftover from a live one's work.
        tmp = folder / f".{entry.name}{_WRITER_TAG}{os.getpid()}-{socket.gethostname()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            splits = _write_splits(config, train, val, tmp, shard_tokens)
            meta = {"version": CACHE_VERSION, "train": train.describe(),
                    "validation": None if val is None else val.describe(), "splits": splits}
            meta |= {f"{k}_tokens": v["stop"] - v["start"] for k, v in splits.items()}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            move_into_place(tmp, entry, replace=False)
        except OSError:
            if not (entry / "meta.json").is_file():
                raise
            # another process (e.g. another rank) finished first: keep its copy
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    splits = json.loads((entry / "meta.json").read_text())["splits"]
    return _open_split(entry, splits["train"]), _open_split(entry, splits.get("val"))


# -- datasets and loaders -------------------------------------------------------------------------


def _too_few_tokens(name: str, n_tokens: int, context_length: int, hint: str) -> ValueError:
    return ValueError(
        f"{name} split has {n_tokens} tokens, fewer than one window of context_length+1 = "
        f"{context_length + 1} tokens; {hint}"
    )


def _data_words(source: TextSource) -> str:
    """The data in words for an error: which file(s) or data set, and which of the files are empty."""
    if source.dataset is not None or not source.files:
        return source.describe()
    empty = [str(p) for p in source.files if p.stat().st_size == 0]
    if len(source.files) == 1:
        return f"{source.files[0]}{' (an empty file)' if empty else ''}"
    said = f"{len(source.files)} files ({source.files[0]}, ...)"
    if empty:
        named = ", ".join(empty[:3]) + (", ..." if len(empty) > 3 else "")
        said += f", of which {named} {'is' if len(empty) == 1 else 'are'} empty"
    return said


def _hints(config: DataConfig) -> tuple[str, str]:
    """What to do about a split too short for one window, and which data it came from (the culprit named)."""
    train, val = train_source(config), validation_source(config)
    val_hint = "add validation data" if config.has_validation_source else "raise the validation share"
    val_data = _data_words(val) if val is not None else f"split off {_data_words(train)}"
    return (f"lower --context-length or add training data (the training data: {_data_words(train)})",
            f"lower --context-length or {val_hint} (the validation data: {val_data})")


@dataclass(frozen=True)
class _SplitDocuments:
    """Picklable document stream for :class:`StreamingWindows`: all, or the train or validation documents."""

    source: TextSource
    keep: str = "all"
    every: int = 0  # every `every`-th document is validation

    def __call__(self) -> Iterator[str]:
        for i, doc in enumerate(self.source.iter_documents()):
            is_val = self.every > 0 and i % self.every == self.every - 1
            if self.keep == "all" or (self.keep == "val") == is_val:
                yield doc


def build_datasets(config: DataConfig, seed: int = 0, shuffle: bool = True):
    """Training and validation window datasets (validation None without validation data and ratio 1).

    Map-style :class:`TokenWindows` (items ``(input_ids, target_ids)``, like the book's ``GPTDatasetV1``),
    or :class:`StreamingWindows` with ``config.streaming`` (``seed``/``shuffle`` drive its shuffle buffer).

    Raises:
        ValueError: giving the numbers when a split has fewer tokens than one window.
    """
    length, stride = config.context_length, config.window_stride
    train_hint, val_hint = _hints(config)
    if config.streaming:
        train, val = train_source(config), validation_source(config)
        for source in (train, val):
            if source is not None:
                source.open_stream()
        every = 0 if val is not None or config.train_ratio >= 1 else max(2, round(1 / (1 - config.train_ratio)))
        common = {"max_length": length, "stride": stride, "eot_as_special": config.eot_as_special}
        train_ds = StreamingWindows(
            _SplitDocuments(train, "train" if every else "all", every),
            shuffle_buffer=config.shuffle_buffer if shuffle else 0,
            seed=seed,
            hint=train_hint,
            **common,
        )
        if val is None and not every:
            return train_ds, None
        val_docs = _SplitDocuments(val, "all") if val is not None else _SplitDocuments(train, "val", every)
        return train_ds, StreamingWindows(val_docs, name="validation", hint=val_hint, **common)

    train_ids, val_ids = load_token_splits(config)
    if num_windows(len(train_ids), length, stride) == 0:
        raise _too_few_tokens("training", len(train_ids), length, train_hint)
    if val_ids is not None and num_windows(len(val_ids), length, stride) == 0:
        raise _too_few_tokens("validation", len(val_ids), length, val_hint)
    val_ds = None if val_ids is None else TokenWindows(val_ids, length, stride)
    return TokenWindows(train_ids, length, stride), val_ds


def build_dataloaders(
    config: DataConfig,
    batch_size: int,
    seed: int | None = None,
    shuffle: bool = True,
    num_workers: int = 0,
) -> tuple[DataLoader, DataLoader | None]:
    """The training and validation DataLoaders, as chapter 5 builds them.

    Training: ``DataLoader(train, batch_size, shuffle=True, drop_last=True, num_workers=0)``. With
    ``seed=None`` the shuffling draws from the global torch generator exactly like the book's loader
    (call ``torch.manual_seed`` first); with a seed it uses its own ``torch.Generator``. Validation:
    ``shuffle=False, drop_last=False``; None if there is no validation data (``train_ratio=1``).

    Raises:
        ValueError: with the numbers, when a split is shorter than one window or the training split
            is shorter than one batch (the last incomplete batch is dropped).
    """
    if config.streaming:
        stream_seed = seed if seed is not None else int(torch.empty((), dtype=torch.int64).random_().item())
        train_ds, val_ds = build_datasets(config, seed=stream_seed, shuffle=shuffle)
        train_loader = DataLoader(train_ds, batch_size=batch_size, drop_last=True, num_workers=num_workers)
    else:
        train_ds, val_ds = build_datasets(config)
        if len(train_ds) < batch_size:
            raise ValueError(
                f"training split gives {len(train_ds)} window(s) of {config.context_length} tokens, fewer than "
                f"one batch of {batch_size} (the last incomplete batch is dropped); lower --batch-size or "
                f"--context-length, or add training data (the training data: {_data_words(train_source(config))})"
            )
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        train_loader = DataLoader(
            train_ds,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=True,
            num_workers=num_workers,
            generator=generator,
            collate_fn=collate_windows,
        )
    val_loader = None
    if val_ds is not None:
        val_loader = DataLoader(val_ds, batch_size=batch_size, shuffle=False, drop_last=False, num_workers=num_workers,
                                collate_fn=collate_windows)
    return train_loader, val_loader
