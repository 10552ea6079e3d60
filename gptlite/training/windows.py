"""The book's sliding windows over a token stream, as a map-style dataset and as a streaming one.

Window ``k`` starts at ``i = k * stride`` for ``i in range(0, len(ids) - max_length, stride)`` (the
book's ``GPTDatasetV1``, strict bound kept exactly) and is the pair::

    input  = ids[i : i + max_length]
    target = ids[i + 1 : i + max_length + 1]

both as int64 tensors, so a stream needs at least ``max_length + 1`` tokens for one window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, default_collate, get_worker_info

from gptlite.tokenization import EOT_ID, EOT_TOKEN, get_tokenizer
from gptlite.training.token_cache import TokenShards

__all__ = ["StreamingWindows", "TokenWindows", "WindowBatch", "collate_windows", "encode_document", "num_windows"]


def num_windows(n_tokens: int, max_length: int, stride: int) -> int:
    """Number of windows the book's ``range(0, n_tokens - max_length, stride)`` gives."""
    return len(range(0, n_tokens - max_length, stride))


def encode_document(text: str, eot_as_special: bool = False) -> list[int]:
    """GPT-2 token ids of one document; a literal ``<|endoftext|>`` in it is text unless ``eot_as_special``."""

    allowed = {EOT_TOKEN} if eot_as_special else set()
    return get_tokenizer().encode(text, allowed_special=allowed, disallowed_special=())


class TokenWindows(Dataset):
    """Map-style dataset of ``(input_ids, target_ids)`` windows over one token stream, like ``GPTDatasetV1``.

    Windows are sliced on access, so ``token_ids`` (a numpy array, possibly memory-mapped, the cache's
    :class:`~gptlite.training.token_cache.TokenShards`, a tensor or a list) is never copied window by window.
    """

    def __init__(self, token_ids, max_length: int, stride: int) -> None:
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.numpy()
        if not isinstance(token_ids, (np.ndarray, TokenShards)):
            token_ids = np.asarray(token_ids, dtype=np.int64)
        self.token_ids = token_ids
        self.max_length = max_length
        self.stride = stride
        self._len = num_windows(len(self.token_ids), max_length, stride)

    def __len__(self) -> int:
        return self._len

    def _tokens(self, idx: int):
        """Window idx's max_length + 1 token ids (negative idx counting from the end), as stored."""
        if idx < 0:
            idx += self._len
        if not 0 <= idx < self._len:
            raise IndexError(f"window {idx} out of range for {self._len} windows")
        start = idx * self.stride
        return self.token_ids[start : start + self.max_length + 1]

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = torch.from_numpy(np.array(self._tokens(idx), dtype=np.int64))
        return chunk[:-1], chunk[1:]

    def __getitems__(self, indices: list[int]) -> WindowBatch:
        """The windows a DataLoader's batch asks for, read together (see WindowBatch)."""
        rows = np.stack([self._tokens(idx) for idx in indices])
        chunks = torch.from_numpy(rows.astype(np.int64))  # (b, max_length + 1)
        return WindowBatch(chunks[:, :-1].contiguous(), chunks[:, 1:].contiguous())


class WindowBatch(Sequence):
    """A batch of windows as any collate function reads it (a sequence of ``(input_ids, target_ids)``), built
    as the two (b, max_length) tensors already stacked: `collate_windows` hands those over as they are.

    One copy of the batch's tokens and no per-window tensors, where the loader's time per batch matters beside a
    GPU's training step.
    """

    def __init__(self, input_ids: torch.Tensor, target_ids: torch.Tensor) -> None:
        self.stacked = (input_ids, target_ids)  # (b, max_length) each

    def __len__(self) -> int:
        return len(self.stacked[0])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        return self.stacked[0][i], self.stacked[1][i]


def collate_windows(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """`default_collate`, taking a `WindowBatch`'s stacked tensors without stacking them again."""
    if isinstance(batch, WindowBatch):
        return batch.stacked
    return default_collate(batch)


class StreamingWindows(IterableDataset):
    """Windows produced on the fly from a document stream, for corpora larger than memory.

    ``documents`` is a picklable zero-argument callable returning a fresh iterable of texts (one pass
    per epoch). Documents are tokenized one at a time and joined with ``<|endoftext|>`` between them;
    the windows are exactly those :class:`TokenWindows` gives on the whole joined stream.

    With ``shuffle_buffer > 1`` windows are shuffled within a buffer of that many windows, seeded by
    ``seed`` and the epoch (:meth:`set_epoch`). With several DataLoader workers each worker yields every
    ``num_workers``-th window, so nothing is duplicated.

    Raises (while iterating) ``ValueError`` with the token count if the stream gives no window at all.
    """

    def __init__(
        self,
        documents: Callable[[], Iterable[str]],
        max_length: int,
        stride: int,
        eot_as_special: bool = False,
        shuffle_buffer: int = 0,
        seed: int = 0,
        name: str = "training",
        hint: str = "lower --context-length or add data",
    ) -> None:
        self.documents = documents
        self.max_length = max_length
        self.stride = stride
        self.eot_as_special = eot_as_special
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.name = name
        self.hint = hint
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _token_chunks(self, counter: list[int]) -> Iterator[list[int]]:

        for i, text in enumerate(self.documents()):
            ids = encode_document(text or "", self.eot_as_special)
            chunk = ids if i == 0 else [EOT_ID, *ids]
            counter[0] += len(chunk)
            yield chunk

    def _windows(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n_tokens = [0]
        buf: list[int] = []
        base = 0  # absolute position of buf[0] in the stream
        start = 0  # absolute position of the next window
        produced = 0
        need = self.max_length + 1
        for chunk in self._token_chunks(n_tokens):
            buf.extend(chunk)
            while start - base + need <= len(buf):
                offset = start - base
                window = torch.tensor(buf[offset : offset + need], dtype=torch.int64)
                yield window[:-1], window[1:]
                produced += 1
                start += self.stride
            consumed = min(start - base, len(buf))
            del buf[:consumed]
            base += consumed
        if produced == 0:
            raise ValueError(
                f"{self.name} split has {n_tokens[0]} tokens, fewer than one window of "
                f"context_length+1 = {need} tokens; {self.hint}"
            )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        worker = get_worker_info()
        n_workers, worker_id = (1, 0) if worker is None else (worker.num_workers, worker.id)
        windows = (w for k, w in enumerate(self._windows()) if k % n_workers == worker_id)
        if self.shuffle_buffer <= 1:
            yield from windows
            return
        generator = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch + worker_id)
        buffer: list[tuple[torch.Tensor, torch.Tensor]] = []
        for window in windows:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(window)
                continue
            j = int(torch.randint(len(buffer), (1,), generator=generator))
            yield buffer[j]
            buffer[j] = window
        order = torch.randperm(len(buffer), generator=generator).tolist()
        yield from (buffer[j] for j in order)
