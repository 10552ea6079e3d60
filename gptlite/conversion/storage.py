"""Reading checkpoints one tensor at a time, and writing safetensors the same way.

Peak memory stays near one tensor (plus the interpreter) rather than one model: sources are memory-mapped
or read per tensor, and the output file's header is planned up front so each converted tensor can be
written at its offset and dropped.
"""

from __future__ import annotations

import ctypes
import json
import math
import mmap
import pickle
import struct
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import torch
from safetensors import SafetensorError, safe_open

from .._libc import libc
from ..folders import atomic_file

__all__ = [
    "ConversionError",
    "FlagError",
    "open_weights",
    "RenamedSource",
    "ShardedSource",
    "SafetensorsSource",
    "StateDictSource",
    "TensorSource",
    "load_torch_file",
    "weights_files",
    "write_safetensors",
]

# safetensors' dtype names (https://github.com/huggingface/safetensors, "Format").
_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message names the file, tensor, field or flag at fault."""


class FlagError(ConversionError):
    """An option's value is unusable (`--dtype`, `--preset`, `--config`): a usage error, exit status 2."""


class TensorSource(Protocol):
    """A checkpoint's tensors by name, read one at a time."""

    path: Path

    def names(self) -> set[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def get(self, name: str) -> torch.Tensor: ...

    def file_of(self, name: str) -> Path: ...


class SafetensorsSource:
    """One or more `.safetensors` files (the shards of one checkpoint).

    Each read opens the file anew: the tensor then owns the only reference to the memory map, so the
    pages it touched are released as soon as the caller drops it.
    """

    def __init__(self, files: Sequence[str | Path]):
        self.path = Path(files[0]).parent
        self._where: dict[str, tuple[Path, tuple[int, ...]]] = {}
        for file in map(Path, files):
            try:
                with safe_open(file, framework="pt") as f:
                    for name in f.keys():
                        self._where[name] = (file, tuple(f.get_slice(name).get_shape()))
            except (SafetensorError, OSError) as err:
                raise ConversionError(
                    f"{file}: not a readable safetensors file ({_truncated_tensor(file) or err})"
                ) from None

    def names(self) -> set[str]:
        return set(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name][1]

    def file_of(self, name: str) -> Path:
        """The shard that holds `name` (errors name it, not just the folder)."""
        return self._where[name][0] if name in self._where else self.path

    def get(self, name: str) -> torch.Tensor:
        file = self._where[name][0]
        with safe_open(file, framework="pt") as f:
            return f.get_tensor(name)


def _truncated_tensor(file: Path) -> str | None:
    """Which tensor a truncated (but otherwise well-formed) safetensors file cuts short, if that is the fault."""
    try:
        with open(file, "rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            if header_size > file.stat().st_size - 8:
                return None  # the header itself is cut short (or the file is not safetensors)
            header = json.loads(f.read(header_size))
        size = file.stat().st_size - 8 - header_size
        ends = {name: entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, struct.error):
        return None
    cut = [name for name, end in sorted(ends.items(), key=lambda item: item[1]) if end > size]
    if not cut:
        return None
    return (f"truncated: tensor {cut[0]} ends at data byte {ends[cut[0]]}, but the file holds only {max(size, 0)} "
            f"bytes of data ({len(cut)} tensors cut short)")


class StateDictSource:
    """Tensors already in a mapping (a loaded, possibly memory-mapped, `torch.load` result).

    With `file_mapped`, the tensors live in a private read-only mapping of the file: `get` hands out a
    copy and lets the kernel drop the pages it read, so a whole converted checkpoint never sits in RSS.
    """

    def __init__(self, state_dict: Mapping[str, torch.Tensor], path: str | Path, file_mapped: bool = False):
        self.path = Path(path)
        self._tensors = state_dict
        self._file_mapped = file_mapped and _madvise is not None

    def names(self) -> set[str]:
        return set(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name].shape)

    def file_of(self, name: str) -> Path:
        return self.path

    def get(self, name: str) -> torch.Tensor:
        tensor = self._tensors[name]
        if not self._file_mapped:
            return tensor
        copy = tensor.clone()
        _drop_file_pages(tensor)
        return copy


class RenamedSource:
    """Another source's tensors under other names: `rename(name)` is what this source calls the tensor `name`."""

    def __init__(self, source: TensorSource, rename: Callable[[str], str]):
        self.path = source.path
        self._source = source
        self._original = {rename(name): name for name in source.names()}

    def names(self) -> set[str]:
        return set(self._original)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._source.shape(self._original[name])

    def file_of(self, name: str) -> Path:
        return self._source.file_of(self._original[name])

    def file_name(self, name: str) -> str:
        """What the underlying file calls the tensor `name` (for messages)."""
        return self._original.get(name, name)

    def get(self, name: str) -> torch.Tensor:
        return self._source.get(self._original[name])


def _libc_madvise():
    madvise = getattr(libc(), "madvise", None)
    if madvise is not None:
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise


_madvise = _libc_madvise()
_MADV_DONTNEED = 4  # Linux


def _drop_file_pages(tensor: torch.Tensor) -> None:
    # Only for a private, never-written mapping of a file: the dropped pages are read from the file again if
    # touched (on anonymous memory MADV_DONTNEED would zero them, hence the file_mapped guard).
    storage = tensor.untyped_storage()
    page = mmap.PAGESIZE
    start = storage.data_ptr() // page * page
    end = storage.data_ptr() + storage.nbytes()
    # Pages shared with a neighbouring tensor are dropped too; they are read back from the file when needed.
    _madvise(start, end - start, _MADV_DONTNEED)


def _torch_load(path: Path) -> tuple[object, bool]:
    """The loaded object and whether its tensors are memory-mapped from the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True), True
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
    # Files in torch's legacy (pre-1.6, non-zip) format cannot be memory-mapped.
    return torch.load(path, map_location="cpu", weights_only=True), False


def load_torch_file(path: str | Path, unwrap: Sequence[str] = ()) -> StateDictSource:
    """A `torch.save` state dict, loaded with `weights_only=True` and memory-mapped where possible.

    Args:
        path: a `.bin` / `.pth` file.
        unwrap: keys of a wrapping dict to look in, e.g. `"model_state_dict"` of the book's chapter 5
            checkpoint (which also holds the optimizer's state).

    Raises:
        ConversionError: if the file is not a PyTorch checkpoint, holds anything but tensors (never
            unpickled: `weights_only=True`), or is not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj, file_mapped = _torch_load(path)
    except pickle.UnpicklingError as err:
        raise ConversionError(
            f"{path}: not loadable with torch.load(weights_only=True): it is not a PyTorch checkpoint, or "
            f"it pickles objects other than tensors, which gptlite refuses to unpickle ({err})"
        ) from None
    except Exception as err:  # torch.load fails on foreign bytes with many exception types
        raise ConversionError(f"{path}: not a PyTorch checkpoint ({type(err).__name__}: {err})") from None
    if isinstance(obj, Mapping):
        for key in unwrap:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ConversionError(f"{path}: expected a state dict (names to tensors), got {type(obj).__name__}")
    not_tensors = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ConversionError(
            f"{path}: expected a state dict, but {', '.join(not_tensors[:5])} "
            f"{'is' if len(not_tensors) == 1 else 'are'} not tensors"
        )
    return StateDictSource(obj, path, file_mapped)


def write_safetensors(
    path: str | Path,
    specs: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
    tensors: Iterable[tuple[str, torch.Tensor]],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a safetensors file whose tensors arrive one at a time, in any order.

    The header is laid out from `specs` (name -> (shape, dtype)) before any data arrives. Each incoming
    tensor is cast to its planned dtype, checked against its planned shape and written at its offset.
    The file appears under `path` only once every planned tensor has been written.

    Raises:
        ConversionError: on an unplanned, repeated, wrongly shaped or missing tensor (naming it).
    """
    path = Path(path)
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, (shape, dtype) in specs.items():
        size = math.prod(shape) * dtype.itemsize
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]
        }
        offset += size
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # the format pads the header to 8-byte alignment
    data_start = 8 + len(header_bytes)

    written: set[str] = set()
    with atomic_file(path) as partial:
        with open(partial, "wb") as f:
            f.write(struct.pack("<Q", len(header_bytes)) + header_bytes)
            f.truncate(data_start + offset)
            for name, tensor in tensors:
                if name not in specs:
                    raise ConversionError(f"{path.name}: tensor {name} is not part of the model")
                if name in written:
                    raise ConversionError(f"{path.name}: tensor {name} was produced twice")
                shape, dtype = specs[name]
                if tuple(tensor.shape) != tuple(shape):
                    raise ConversionError(
                        f"{path.name}: tensor {name} has shape {list(tensor.shape)}, expected {list(shape)}"
                    )
                data = tensor.detach().to(device="cpu", dtype=dtype).contiguous()
                f.seek(data_start + header[name]["data_offsets"][0])
                if data.numel():
                    f.write(memoryview(data.view(-1).view(torch.uint8).numpy()))
                written.add(name)
                del tensor, data  # keep only one converted tensor alive at a time
        missing = [name for name in specs if name not in written]
        if missing:
            raise ConversionError(f"{path.name}: no tensor was produced for {', '.join(missing)}")


# The weights files of a save_pretrained folder, in the order transformers' from_pretrained picks them
# (modeling_utils._get_resolved_checkpoint_files): a single file over an index, safetensors over pickles.
WEIGHTS_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)


def weights_files(folder: Path) -> tuple[Path, list[Path]]:
    """The weights file of `folder` that transformers reads, and the other candidates that are there (ignored).

    Raises:
        FileNotFoundError: naming the folder, when it holds none of them.
    """
    present = [folder / name for name in WEIGHTS_FILES if (folder / name).is_file()]
    if not present:
        raise FileNotFoundError(f"{folder}: no {', '.join(WEIGHTS_FILES[:-1])} or {WEIGHTS_FILES[-1]}")
    return present[0], present[1:]


def _index_shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        return [index.parent / name for name in sorted(set(weight_map.values()))]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
        raise ConversionError(f"{index}: not a weights index (no weight_map: {err})") from None


class ShardedSource:
    """The tensors of several sources (the shards of one pickled checkpoint), each named by its own file."""

    def __init__(self, sources: Sequence[TensorSource], path: Path):
        self.path = path
        self._owner = {name: source for source in sources for name in source.names()}

    def names(self) -> set[str]:
        return set(self._owner)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._owner[name].shape(name)

    def file_of(self, name: str) -> Path:
        return self._owner[name].path if name in self._owner else self.path

    def get(self, name: str) -> torch.Tensor:
        return self._owner[name].get(name)


def _notice(message: str) -> None:
    print(message, file=sys.stderr)


def open_weights(folder: Path, notice: Callable[[str], None] | None = None) -> TensorSource:
    """The weights of a `save_pretrained` folder, read from the file transformers reads (:func:`weights_files`).

    A folder that also holds other weights files (a newer save copied over older shards, say) gets a one-line
    `notice` (None: stderr) naming what is read and what is not.
    """
    chosen, ignored = weights_files(folder)
    if ignored:
        (notice or _notice)(f"{folder} holds {', '.join(p.name for p in [chosen, *ignored])}: reading {chosen.name}, "
                            "as transformers' from_pretrained does")
    if chosen.name == "model.safetensors":
        return SafetensorsSource([chosen])
    if chosen.name == "model.safetensors.index.json":
        return SafetensorsSource(_index_shards(chosen))
    if chosen.name == "pytorch_model.bin":
        return load_torch_file(chosen)
    return ShardedSource([load_torch_file(shard) for shard in _index_shards(chosen)], chosen)
