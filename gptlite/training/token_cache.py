"""The token cache: documents -> GPT-2 ids on every core -> uint16 shards on disk -> one memory-mapped stream.

Tokenizing never holds the corpus: documents go to a pool of worker processes in tasks of a few MB of
text, at most two tasks per worker in flight, and the ids come back in document order to a
:class:`ShardWriter` that writes a ``.npy`` shard of ``shard_tokens`` uint16 ids whenever it has one.
Peak memory is a few tasks plus one shard, whatever the corpus size; the disk holds 2 bytes per token
(and a 128-byte ``.npy`` header per shard).

:class:`TokenShards` reads the shards back memory-mapped as one stream: ``stream[i:j]`` is the same
array as slicing the single joined array, also when it crosses a shard boundary.
"""

from __future__ import annotations

import bisect
import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from gptlite.errors import InputFileError, one_line
from gptlite.tokenization import EOT_ID, EOT_TOKEN, get_tokenizer
from gptlite.training.sources import read_text_file

__all__ = ["SHARD_TOKENS", "TOKEN_DTYPE", "ShardWriter", "TokenShards", "encode_parts", "tokenize_documents",
           "usable_cores", "write_token_stream"]

TOKEN_DTYPE = np.uint16  # GPT-2's 50257 ids fit; halves the cache and memory of int32
SHARD_TOKENS = 1 << 26  # 64 Mi tokens: 128 MB per shard, the most the writer holds in memory
TASK_BYTES = 4 << 20  # text per tokenizing task: large enough to amortise the hand-off, small enough to stay flat


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# -- the read side --------------------------------------------------------------------------------


def _open_shard(path: Path) -> np.ndarray:
    """A shard's tokens, memory-mapped, as a plain ndarray; a broken shard is an error that names it."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False).view(np.ndarray)
    except (ValueError, EOFError) as error:  # a truncated or overwritten .npy (not a missing one: that stays)
        raise InputFileError(f"{path}: not a readable token shard ({one_line(error)}); delete the folder "
                             f"{path.parent} and the run tokenizes its data again") from error


class TokenShards:
    """A read-only uint16 token stream over ``.npy`` shards, memory-mapped, ``[start, stop)`` of their join.

    Supports ``len``, integer and slice indexing (a slice is a numpy array: a view inside one shard, a
    joined copy across shards), ``np.asarray`` and ``tolist``; :meth:`range` is a sub-stream without
    copying. Pickles as its file names, so DataLoader workers reopen the maps instead of copying them.
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]], start: int = 0, stop: int | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self._open()
        total = self._offsets[-1]
        self.start = start
        self.stop = total if stop is None else stop
        if not 0 <= self.start <= self.stop <= total:
            raise ValueError(f"token range [{start}, {stop}) outside the {total} tokens of {len(self.paths)} shard(s)")

    def _open(self) -> None:
        # Plain ndarray views of the memory maps: slicing an np.memmap costs two Python calls more per slice
        # (a third of the loader's time per batch); the maps stay open as the views' base.
        self._shards = [_open_shard(Path(p)) for p in self.paths]
        self._offsets = [0]  # _offsets[k]: position of shard k's first token in the joined stream
        for shard in self._shards:
            self._offsets.append(self._offsets[-1] + len(shard))

    def __getstate__(self) -> dict:
        return {"paths": self.paths, "start": self.start, "stop": self.stop}

    def __setstate__(self, state: dict) -> None:
        self.paths, self.start, self.stop = state["paths"], state["start"], state["stop"]
        self._open()

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(TOKEN_DTYPE)

    def __len__(self) -> int:
        return self.stop - self.start

    def range(self, start: int, stop: int) -> TokenShards:
        """Tokens ``[start, stop)`` of this stream, as a stream over the same files."""
        if not 0 <= start <= stop <= len(self):
            raise ValueError(f"token range [{start}, {stop}) outside a stream of {len(self)} tokens")
        return TokenShards(self.paths, self.start + start, self.start + stop)

    def _read(self, begin: int, end: int) -> np.ndarray:
        # begin/end are absolute positions in the joined shards, begin <= end.
        k = bisect.bisect_right(self._offsets, begin) - 1
        if k >= len(self._shards) or end <= self._offsets[k + 1]:  # inside one shard (or empty): a view
            k = min(k, len(self._shards) - 1)
            return self._shards[k][begin - self._offsets[k] : end - self._offsets[k]]
        pieces = []
        while begin < end:
            upto = min(end, self._offsets[k + 1])
            pieces.append(self._shards[k][begin - self._offsets[k] : upto - self._offsets[k]])
            begin, k = upto, k + 1
        return np.concatenate(pieces)

    def __getitem__(self, index):
        if isinstance(index, slice):
            begin, end, step = index.indices(len(self))
            if step != 1:
                return np.asarray(self)[index]
            return self._read(self.start + begin, self.start + max(begin, end))
        position = int(index)
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self):
            raise IndexError(f"token {index} out of range for a stream of {len(self)} tokens")
        return self._read(self.start + position, self.start + position + 1)[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        joined = self._read(self.start, self.stop)
        return joined if dtype is None else joined.astype(dtype)

    def tolist(self) -> list[int]:
        return np.asarray(self).tolist()

    def __repr__(self) -> str:
        return f"TokenShards({len(self)} tokens in {len(self.paths)} shard(s))"


# -- the write side -------------------------------------------------------------------------------


class ShardWriter:
    """Appends uint16 ids and writes ``{name}-00000.npy``, ``{name}-00001.npy``, ... of ``shard_tokens`` ids each."""

    def __init__(self, folder: Path, name: str, shard_tokens: int = SHARD_TOKENS) -> None:
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
        self.folder, self.name, self.shard_tokens = Path(folder), name, shard_tokens
        self.paths: list[Path] = []
        self.n_tokens = 0
        self._pending: list[np.ndarray] = []
        self._pending_tokens = 0

    def write(self, ids: np.ndarray) -> None:
        self._pending.append(np.asarray(ids, dtype=TOKEN_DTYPE))
        self._pending_tokens += len(ids)
        self.n_tokens += len(ids)
        if self._pending_tokens < self.shard_tokens:
            return
        joined = np.concatenate(self._pending)
        full = len(joined) - len(joined) % self.shard_tokens
        for start in range(0, full, self.shard_tokens):
            self._save(joined[start : start + self.shard_tokens])
        rest = joined[full:].copy()  # a copy: the joined buffer is let go
        self._pending, self._pending_tokens = [rest], len(rest)

    def close(self) -> list[Path]:
        """Write the last, partial shard (an empty stream still gets one, empty, shard); return every shard."""
        if self._pending_tokens or not self.paths:
            self._save(np.concatenate(self._pending) if self._pending else np.zeros(0, dtype=TOKEN_DTYPE))
        self._pending, self._pending_tokens = [], 0
        return self.paths

    def _save(self, ids: np.ndarray) -> None:
        path = self.folder / f"{self.name}-{len(self.paths):05d}.npy"
        np.save(path, ids)
        self.paths.append(path)


# -- tokenizing on every core ---------------------------------------------------------------------

_worker: dict = {}  # what a tokenizing process works on: the parts and the tokenizer settings


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while the pool forks: a worker must not run the parent's handlers (they raise, and the
    worker prints a traceback) before its initializer has set its own. The parent gets them when the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _quiet_worker_signals() -> None:
    # Ctrl-C reaches the whole process group: the parent handles it and ends the pool, so a worker ignores it.
    # The pool ends its workers with SIGTERM: they just die (default action), with no traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # held by the parent while it forked


def _init_worker(parts: list, eot_as_special: bool, pooled: bool = False) -> None:

    if pooled:
        _quiet_worker_signals()
    _worker.update(parts=parts, allowed={EOT_TOKEN} if eot_as_special else set(), encoding=get_tokenizer())


def _encode_task(task: tuple[int, int, int, bool]) -> np.ndarray:
    """The ids of rows ``[start, stop)`` of one part, ``<|endoftext|>`` before each (but the corpus's first)."""

    part_index, start, stop, eot_before_first = task
    rows = _worker["parts"][part_index][start:stop]
    texts = rows["text"] if "text" in rows else [read_text_file(Path(p)) for p in rows["path"]]
    pieces = []
    for i, text in enumerate(texts):
        if i > 0 or eot_before_first:
            pieces.append(np.array([EOT_ID], dtype=np.uint32))
        # encode_to_numpy: the ids as one buffer, without building a Python int per token.
        pieces.append(_worker["encoding"].encode_to_numpy(text or "", allowed_special=_worker["allowed"],
                                                          disallowed_special=()))
    return np.concatenate(pieces).astype(TOKEN_DTYPE) if pieces else np.zeros(0, dtype=TOKEN_DTYPE)


def _row_bytes(part) -> list[int] | None:
    """Bytes of each row's text where that is cheap to know (files: their sizes), else None."""
    if "path" in part.column_names:
        return [os.path.getsize(p) for p in part["path"]]
    return None


def _tasks(parts: list) -> Iterator[tuple[int, int, int, bool]]:
    """``(part, first row, end row, <|endoftext|> before the first row)`` of about TASK_BYTES of text each."""
    first_document = True
    for index, part in enumerate(parts):
        if part.num_rows == 0:
            continue
        sizes = _row_bytes(part)
        if sizes is None:  # a table of texts: rows of the average size
            average = max(1, part.data.nbytes // part.num_rows)
            step = max(1, TASK_BYTES // average)
            bounds = list(range(0, part.num_rows, step)) + [part.num_rows]
        else:  # files: group them up to TASK_BYTES (a larger file is a task of its own)
            bounds, filled = [0], 0
            for row, size in enumerate(sizes):
                if filled and filled + size > TASK_BYTES:
                    bounds.append(row)
                    filled = 0
                filled += size
            bounds.append(part.num_rows)
        for start, stop in zip(bounds, bounds[1:]):
            yield index, start, stop, not first_document
            first_document = False


def _as_datasets(parts) -> list:
    import datasets

    return [datasets.Dataset.from_dict({"text": p}) if isinstance(p, list) else p for p in parts]


def encode_parts(parts, eot_as_special: bool = False, num_proc: int | None = None) -> Iterator[np.ndarray]:
    """The joined token stream of ``parts`` as uint16 chunks, in document order, tokenized by ``num_proc``
    processes (None: every usable core).

    ``parts`` are ``datasets.Dataset`` objects with a ``text`` column or a ``path`` column naming text
    files (read by the workers), or lists of document strings. Documents are joined with ``<|endoftext|>``
    (50256) between them; a literal ``<|endoftext|>`` inside one is text, or the special token with
    ``eot_as_special``. At most two tasks per process are in flight, so memory stays flat.
    """
    parts = _as_datasets(parts)
    tasks = list(_tasks(parts))
    procs = min(num_proc or usable_cores(), len(tasks))
    if procs <= 1:
        _init_worker(parts, eot_as_special)
        try:
            yield from map(_encode_task, tasks)
        finally:
            _worker.clear()
        return
    # fork: the workers inherit the parts (memory-mapped Arrow tables, paths) instead of unpickling copies;
    # spawn where there is no fork.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with _stop_signals_held():
        pool = multiprocessing.get_context(method).Pool(procs, _init_worker, (parts, eot_as_special, True))
    with pool:
        in_flight: deque = deque()
        for task in tasks:
            if len(in_flight) >= 2 * procs:
                yield in_flight.popleft().get()
            in_flight.append(pool.apply_async(_encode_task, (task,)))
        while in_flight:
            yield in_flight.popleft().get()


def tokenize_documents(parts, eot_as_special: bool = False, num_proc: int | None = None) -> np.ndarray:
    """The joined token stream of ``parts`` (see :func:`encode_parts`) as one in-memory uint16 array."""
    chunks = list(encode_parts(parts, eot_as_special, num_proc))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=TOKEN_DTYPE)


def write_token_stream(
    parts,
    folder: Path,
    name: str,
    eot_as_special: bool = False,
    num_proc: int | None = None,
    shard_tokens: int = SHARD_TOKENS,
) -> tuple[list[Path], int]:
    """Tokenize ``parts`` (see :func:`encode_parts`) into uint16 shards ``folder/{name}-NNNNN.npy``.

    Returns the shards in order and the number of tokens.
    """
    writer = ShardWriter(folder, name, shard_tokens)
    for chunk in encode_parts(parts, eot_as_special, num_proc):
        writer.write(chunk)
    return writer.close(), writer.n_tokens
