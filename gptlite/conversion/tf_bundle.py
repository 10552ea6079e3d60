"""Read TensorFlow checkpoints (the V2 "tensor bundle" format) without TensorFlow or protobuf.

A checkpoint `PREFIX` is
- `PREFIX.index`: an SSTable in leveldb's format. Keys are tensor names (plus the empty key for the
  header); values are serialized protobufs: `BundleHeaderProto` for "" and `BundleEntryProto` for each
  tensor (dtype, shape, shard, offset, size, masked CRC-32C of the bytes).
- `PREFIX.data-0000i-of-0000n`: the tensors' raw bytes, back to back.
- `checkpoint` (in the folder): a text proto naming the latest prefix.

Only the fields gptlite needs are decoded, by hand. Every table block and every tensor is checked
against its masked CRC-32C, as TensorFlow does. This module needs only numpy (and its sibling crc32c).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .crc32c import crc32c, unmask

__all__ = ["BundleEntry", "TensorBundle", "TensorBundleError", "read_table"]

_TABLE_MAGIC = 0xDB4775248B80FB57  # leveldb's magic number, last 8 bytes of every table
_FOOTER_SIZE = 48  # two block handles padded to 2 * 20 bytes, then the magic
_BLOCK_TRAILER_SIZE = 5  # 1-byte compression type + 4-byte masked CRC

# tensorflow/core/framework/types.proto: DataType -> numpy dtype (little-endian; header may say big).
_DTYPES = {
    1: "f4",  # DT_FLOAT
    2: "f8",  # DT_DOUBLE
    3: "i4",  # DT_INT32
    4: "u1",  # DT_UINT8
    5: "i2",  # DT_INT16
    6: "i1",  # DT_INT8
    9: "i8",  # DT_INT64
    10: "?",  # DT_BOOL
    17: "u2",  # DT_UINT16
    19: "f2",  # DT_HALF
    22: "u4",  # DT_UINT32
    23: "u8",  # DT_UINT64
}
_DTYPE_NAMES = {7: "string", 8: "complex64", 14: "bfloat16", 18: "complex128", 20: "resource", 21: "variant"}


class TensorBundleError(ValueError):
    """A checkpoint file is malformed, corrupted or uses a feature this reader does not support."""


# --- protobuf wire format -----------------------------------------------------------------------

def _varint(buf: bytes, pos: int, where: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise TensorBundleError(f"{where}: truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise TensorBundleError(f"{where}: varint longer than 10 bytes")


def _signed64(value: int) -> int:
    # int32/int64 fields carry negative numbers as 10-byte two's complement varints.
    return value - (1 << 64) if value >= 1 << 63 else value


def _proto_fields(buf: bytes, where: str) -> Iterator[tuple[int, int | bytes]]:
    """Yield (field number, value) of a serialized message: ints for varint/fixed fields, bytes otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, where)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _varint(buf, pos, where)
        elif wire_type in (1, 5):  # fixed64 / fixed32
            width = 8 if wire_type == 1 else 4
            value, pos = int.from_bytes(buf[pos : pos + width], "little"), pos + width
        elif wire_type == 2:
            length, pos = _varint(buf, pos, where)
            value, pos = buf[pos : pos + length], pos + length
        else:  # 3/4 are deprecated groups, which TensorFlow's protos never use
            raise TensorBundleError(f"{where}: unsupported protobuf wire type {wire_type} (field {field})")
        if pos > len(buf):
            raise TensorBundleError(f"{where}: truncated protobuf field {field}")
        yield field, value


# --- SSTable (leveldb table) ------------------------------------------------------------------------

def _read_block(data: bytes, offset: int, size: int, path: Path) -> bytes:
    end = offset + size + _BLOCK_TRAILER_SIZE
    if end > len(data):
        raise TensorBundleError(f"{path}: block at offset {offset} runs past the end of the file")
    block, compression, stored_crc = data[offset : offset + size], data[offset + size], data[end - 4 : end]
    # The CRC covers the block contents and the compression byte.
    actual = crc32c(data[offset : offset + size + 1])
    if actual != unmask(struct.unpack("<I", stored_crc)[0]):
        raise TensorBundleError(f"{path}: CRC-32C mismatch in the block at offset {offset}: file corrupted")
    if compression != 0:
        raise TensorBundleError(
            f"{path}: block at offset {offset} is compressed (type {compression}); TensorFlow never "
            "compresses checkpoint indexes, and this reader does not support it"
        )
    return block


def _block_entries(block: bytes, path: Path) -> Iterator[tuple[bytes, bytes]]:
    """Entries of a block: keys are prefix-compressed against the previous key, restarts at the end."""
    if len(block) < 4:
        raise TensorBundleError(f"{path}: table block shorter than its restart count")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts  # entries end where the restart offsets begin
    if limit < 0:
        raise TensorBundleError(f"{path}: table block claims {num_restarts} restarts, more than fit")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos, str(path))
        unshared, pos = _varint(block, pos, str(path))
        value_len, pos = _varint(block, pos, str(path))
        if shared > len(key) or pos + unshared + value_len > limit:
            raise TensorBundleError(f"{path}: corrupted table entry at block offset {pos}")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_len]
        pos += value_len


def read_table(path: str | Path) -> dict[bytes, bytes]:
    """All key/value pairs of a leveldb-format table file (TensorFlow's checkpoint `.index`)."""
    path = Path(path)
    data = path.read_bytes()  # an index is a few KB even for GPT-2 XL
    if len(data) < _FOOTER_SIZE:
        raise TensorBundleError(f"{path}: too short to be a TensorFlow checkpoint index")
    footer = data[-_FOOTER_SIZE:]
    if struct.unpack("<Q", footer[-8:])[0] != _TABLE_MAGIC:
        raise TensorBundleError(f"{path}: not a TensorFlow checkpoint index (bad table magic number)")
    _metaindex_offset, pos = _varint(footer, 0, str(path))  # the metaindex block is empty: no filters
    _metaindex_size, pos = _varint(footer, pos, str(path))
    index_offset, pos = _varint(footer, pos, str(path))
    index_size, pos = _varint(footer, pos, str(path))

    table: dict[bytes, bytes] = {}
    # Index block: one entry per data block, whose value is that block's handle (offset, size).
    for _, handle in _block_entries(_read_block(data, index_offset, index_size, path), path):
        offset, hpos = _varint(handle, 0, str(path))
        size, _ = _varint(handle, hpos, str(path))
        table.update(_block_entries(_read_block(data, offset, size, path), path))
    return table


# --- bundle --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BundleEntry:
    """Where one tensor lives: decoded `BundleEntryProto`."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    masked_crc32c: int | None


def _decode_shape(buf: bytes, where: str) -> tuple[int, ...]:
    dims = []
    for field, value in _proto_fields(buf, where):
        if field == 2:  # repeated Dim { int64 size = 1; string name = 2; }
            size = next((_signed64(v) for f, v in _proto_fields(value, where) if f == 1), 0)
            dims.append(size)
        elif field == 3 and value:
            raise TensorBundleError(f"{where}: shape of unknown rank")
    if any(d < 0 for d in dims):
        raise TensorBundleError(f"{where}: shape {dims} has unknown dimensions")
    return tuple(dims)


def _decode_entry(buf: bytes, where: str) -> BundleEntry:
    fields = {"dtype": 0, "shape": (), "shard_id": 0, "offset": 0, "size": 0, "masked_crc32c": None}
    for field, value in _proto_fields(buf, where):
        if field == 1:
            fields["dtype"] = value
        elif field == 2:
            fields["shape"] = _decode_shape(value, where)
        elif field in (3, 4, 5):
            fields[("shard_id", "offset", "size")[field - 3]] = _signed64(value)
        elif field == 6:
            fields["masked_crc32c"] = value
        elif field == 7:
            raise TensorBundleError(f"{where}: partitioned (sliced) variables are not supported")
    return BundleEntry(**fields)


class TensorBundle:
    """A TensorFlow checkpoint opened for reading, one tensor at a time.

    Args:
        prefix: the checkpoint prefix, e.g. `.../model.ckpt` for `model.ckpt.index` and its data shards.

    Raises:
        TensorBundleError: naming the file, if the index is malformed, corrupted or unsupported.
    """

    def __init__(self, prefix: str | Path):
        self.prefix = Path(prefix)
        index_path = Path(f"{self.prefix}.index")
        if not index_path.is_file():
            raise FileNotFoundError(f"TensorFlow checkpoint index {index_path} does not exist")
        table = read_table(index_path)
        if b"" not in table:
            raise TensorBundleError(f"{index_path}: no BundleHeaderProto (empty key); not a V2 checkpoint")
        header = dict(_proto_fields(table.pop(b""), f"{index_path}: header"))
        self.num_shards = int(header.get(1, 1))
        # Endianness enum: LITTLE = 0, BIG = 1. Entries' bytes are in the writer's byte order.
        self._byte_order = ">" if header.get(2, 0) == 1 else "<"
        self.entries: dict[str, BundleEntry] = {
            key.decode(): _decode_entry(value, f"{index_path}: entry {key.decode()!r}")
            for key, value in sorted(table.items())
        }

    @classmethod
    def from_directory(cls, directory: str | Path) -> TensorBundle:
        """Open the checkpoint a folder's `checkpoint` file names (or its only `.index`)."""
        directory = Path(directory)
        state = directory / "checkpoint"
        if state.is_file():
            match = re.search(r'^model_checkpoint_path:\s*"(.*)"', state.read_text(), re.MULTILINE)
            if not match:
                raise TensorBundleError(f"{state}: no model_checkpoint_path line")
            prefix = Path(match.group(1))
            if not prefix.is_absolute():
                prefix = directory / prefix
            elif not Path(f"{prefix}.index").is_file():
                # An absolute path recorded on another machine: the files are still next to `checkpoint`.
                prefix = directory / prefix.name
            return cls(prefix)
        indexes = sorted(directory.glob("*.index"))
        if len(indexes) != 1:
            found = ", ".join(p.name for p in indexes) or "none"
            raise FileNotFoundError(
                f"{directory}: no `checkpoint` file and not exactly one *.index file (found: {found})"
            )
        return cls(indexes[0].with_suffix(""))

    def keys(self) -> list[str]:
        """Tensor names, sorted."""
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def read(self, name: str, verify: bool = True) -> np.ndarray:
        """Read one tensor, checking its size and (if `verify`) its masked CRC-32C."""
        entry = self._entry(name)
        if entry.dtype not in _DTYPES:
            dtype_name = _DTYPE_NAMES.get(entry.dtype, f"DataType {entry.dtype}")
            raise TensorBundleError(f"{self.prefix}: tensor {name!r} has unsupported dtype {dtype_name}")
        dtype = np.dtype(self._byte_order + _DTYPES[entry.dtype])
        expected = int(np.prod(entry.shape, dtype=np.int64)) * dtype.itemsize
        if entry.size != expected:
            raise TensorBundleError(
                f"{self.prefix}: tensor {name!r} has {entry.size} bytes, but shape {list(entry.shape)} "
                f"of {dtype} needs {expected}"
            )
        shard = Path(f"{self.prefix}.data-{entry.shard_id:05d}-of-{self.num_shards:05d}")
        buf = np.empty(entry.size, dtype=np.uint8)
        try:
            with open(shard, "rb") as f:
                f.seek(entry.offset)
                got = f.readinto(memoryview(buf))
        except FileNotFoundError:
            raise FileNotFoundError(f"data shard {shard} of tensor {name!r} does not exist") from None
        if got != entry.size:
            raise TensorBundleError(
                f"{shard}: tensor {name!r} needs bytes {entry.offset}..{entry.offset + entry.size}, "
                f"but the file ends first (truncated download?)"
            )
        if verify and entry.masked_crc32c is not None and crc32c(buf) != unmask(entry.masked_crc32c):
            raise TensorBundleError(f"{shard}: CRC-32C mismatch for tensor {name!r}: the file is corrupted")
        return buf.view(dtype).reshape(entry.shape)

    def _entry(self, name: str) -> BundleEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise KeyError(f"tensor {name!r} is not in checkpoint {self.prefix}") from None
