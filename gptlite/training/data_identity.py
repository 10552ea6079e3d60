"""What a run trains on, recorded in every checkpoint, so that a resume on other data is refused rather than mixed in.

A resume only continues the same run if it reads the same windows in the same order. Another corpus whose number
of steps per epoch happens to match passes every other check, and would train on, mixing the two in the model and
in ``history.json``. So each checkpoint records :func:`data_identity`: the sources in words (to name both sides in
the refusal) and a fingerprint of their content:

* the token cache (every non-streaming run): SHA-256 of the training and validation token streams themselves, so
  the same text at another path or with another modification time is the same data, and any changed token is not;
* streaming: the sources' names, splits and file sizes (reading a stream twice to hash it would cost an epoch).

The window stride and the split ratio are part of it: they change which windows there are.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from gptlite.training.data import train_source, validation_source

__all__ = ["data_identity", "describe_change"]

_CHUNK = 1 << 22  # tokens hashed at a time: a view inside one shard, a small copy across two


def _token_digest(tokens, digest) -> None:
    for start in range(0, len(tokens), _CHUNK):
        digest.update(np.ascontiguousarray(tokens[start : start + _CHUNK], dtype=np.uint16).tobytes())


def _stream_fingerprint(source) -> list:
    if source.dataset is not None:
        return ["hub", source.dataset, source.dataset_config, source.dataset_split, source.text_column]
    if source.files:
        return ["files", source.text_column, [(str(p), p.stat().st_size) for p in source.files]]
    return source.fingerprint()  # the built-in corpus: a hash of its text


def data_identity(config, train_ds, val_ds) -> dict[str, Any]:
    """``{"data": words, "fingerprint": hex}`` of a run's data (``config`` a :class:`DataConfig`, the datasets as
    :func:`~gptlite.training.data.build_datasets` made them)."""

    train, val = train_source(config), validation_source(config)
    split = f"validation {val.describe()}" if val is not None else f"--train-ratio {config.train_ratio:g}"
    words = f"{train.describe()} ({split}, --stride {config.window_stride})"
    digest = hashlib.sha256(json.dumps([config.window_stride, config.train_ratio if val is None else None,
                                        config.eot_as_special]).encode())
    if config.streaming:
        digest.update(json.dumps([_stream_fingerprint(train), val and _stream_fingerprint(val)], default=str).encode())
    else:
        for dataset in (train_ds, val_ds):
            if dataset is not None:
                _token_digest(dataset.token_ids, digest)
                digest.update(b"\x00split\x00")
    return {"data": words, "fingerprint": digest.hexdigest()}


def describe_change(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """The refusal when ``now``'s data is not ``saved``'s (None if it is, or if the checkpoint recorded none)."""
    if not saved or saved.get("fingerprint") in (None, now.get("fingerprint")):
        return None
    if saved.get("data") == now.get("data"):
        what = f"{now['data']}, whose content changed since the checkpoint was written"
    else:
        what = f"{now['data']}"
    return (f"--resume-from: the checkpoint was trained on {saved.get('data')} (fingerprint "
            f"{saved['fingerprint'][:12]}), this run would train on {what} (fingerprint {now['fingerprint'][:12]}); "
            "resume with the checkpoint's data, or start a new run in another --output-dir")
