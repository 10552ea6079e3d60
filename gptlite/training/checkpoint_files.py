"""Whether a checkpoint can be resumed: every file it needs present, whole and readable, checked before any work.

Accelerate's ``load_state`` reads the files one after another and reports a damaged one as a library traceback
(``PytorchStreamReader failed reading zip archive``, ``SafetensorError: incomplete metadata``), and a damaged RNG
file not at all (it logs "Could not load random states" at info level and goes on, no longer bit-identical).
So before resuming, gptlite checks each file itself:

* **present, full size**: a checkpoint records the size of every file it holds in ``trainer_state.json``
  (``files``), written last; older checkpoints are checked against the files accelerate always writes;
* **whole**: a ``.safetensors`` file's header must describe tensors that fit in the file; every other file is a
  ``torch.save`` zip archive, whose members carry CRC-32 checksums that are verified (read, never unpickled);
* **RNG restored**: after ``load_state``, :func:`check_rng_restored` compares the generator's state with the file.

:func:`checkpoint_damage` says what is wrong in one phrase naming the file, or None.
"""

from __future__ import annotations

import json
import random
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import load

from gptlite.errors import InputFileError

__all__ = ["RNG_FILE", "checkpoint_damage", "check_rng_restored", "file_sizes"]

RNG_FILE = "random_states_{}.pkl"
_STATE_FILE = "trainer_state.json"


def file_sizes(folder: Path) -> dict[str, int]:
    """``{name: bytes}`` of every file in a checkpoint folder but ``trainer_state.json`` (which records them)."""
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != _STATE_FILE}


def _expected_files(folder: Path, state: dict) -> dict[str, int | None]:
    """The files a checkpoint must hold, with their sizes where it recorded them (None: unknown)."""
    recorded = state.get("files")
    if isinstance(recorded, dict) and recorded:
        return {str(name): int(size) for name, size in recorded.items()}
    # Written before gptlite recorded its files: what Accelerate's save_state always writes for gptlite's loop.
    weights = "model.safetensors" if (folder / "model.safetensors").exists() or not (
        folder / "pytorch_model.bin").exists() else "pytorch_model.bin"
    processes = state.get("num_processes") if isinstance(state.get("num_processes"), int) else 1
    names = [weights, "optimizer.bin", "scheduler.bin", *(RNG_FILE.format(i) for i in range(max(processes, 1)))]
    return dict.fromkeys(names)


def _safetensors_damage(path: Path) -> str | None:
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            if header_size > size - 8:
                return f"{path} is truncated: its header alone needs {header_size + 8} bytes, the file has {size}"
            header = json.loads(f.read(header_size))
        end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, struct.error):
        return f"{path} is not a safetensors file (unreadable header)"
    if 8 + header_size + end > size:
        return f"{path} is truncated: its tensors need {8 + header_size + end} bytes, the file has {size}"
    return None


def _archive_damage(path: Path) -> str | None:
    # torch.save writes a zip archive with a CRC-32 per member: testzip reads every byte and unpickles nothing.
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError) as err:
        return f"{path} is truncated or not a torch.save archive ({err})"
    if bad is not None:
        return f"{path} is corrupt: its member {bad} fails its CRC-32 check"
    return None


def checkpoint_damage(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed, naming the file (missing, truncated, corrupt); None if it can."""
    state_path = checkpoint / _STATE_FILE
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if not isinstance(state, dict):
            raise ValueError(f"expected a JSON object, got {type(state).__name__}")
    except (OSError, ValueError) as err:
        return f"{state_path} is not a gptlite trainer state ({err})"
    for name, size in _expected_files(checkpoint, state).items():
        path = checkpoint / name
        if not path.is_file():
            return f"{path} is missing"
        if size is not None and path.stat().st_size != size:
            return f"{path} is truncated or overwritten: {path.stat().st_size} bytes, written as {size}"
        damage = _safetensors_damage(path) if name.endswith(".safetensors") else _archive_damage(path)
        if damage is not None:
            return damage
    return None


def check_rng_restored(checkpoint: Path, process_index: int, num_processes: int) -> None:
    """After ``load_state``: raise :class:`InputFileError` unless this process's random generators hold the
    states its RNG file saved (accelerate swallows a failure to restore them, and the run would resume inexactly).

    A process beyond the ``num_processes`` that wrote the checkpoint has no file of its own (a resume on more
    processes, which keeps processes x --grad-accum): it keeps its seeded generators, as accelerate does.
    """

    path = checkpoint / RNG_FILE.format(process_index)
    if process_index >= num_processes:
        return
    try:
        saved = load(path)
        restored = (random.getstate() == saved["random_state"]
                    and torch.equal(torch.get_rng_state(), saved["torch_manual_seed"])
                    and all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), saved["numpy_random_seed"])))
    except Exception as err:  # noqa: BLE001 - whatever the file holds, the run cannot continue exactly
        raise InputFileError(f"{path}: the random number generators cannot be restored from it ({err}); the run "
                             "would not continue exactly") from None
    if not restored:
        raise InputFileError(f"{path}: the random number generators were not restored from it; the run would not "
                             "continue exactly")
