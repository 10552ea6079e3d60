"""The TensorFlow checkpoint reader and CRC-32C, on the TensorFlow-written fixture and on hand-built tables
that exercise what the tiny fixture cannot (several blocks, restarts, other dtypes, sliced variables)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from gptlite.conversion.crc32c import crc32c, mask, unmask
from gptlite.conversion.tf_bundle import TensorBundle, TensorBundleError, read_table
from tests.conversion.conftest import OPENAI_TINY


def test_crc32c_known_values():
    # RFC 3720 (iSCSI), appendix B.4, and the common "123456789" check value.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(b"") == 0


def bytewise_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize("size", [1, 1023, 65536, 65536 + 1024 * 3 + 5, (1 << 24) + 2048 + 7])
def test_crc32c_vectorized_path_matches_bitwise_definition(size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    # The bitwise loop is slow in Python: check the head fully and the whole through continuation.
    head = data[: 1 << 16]
    assert crc32c(head) == bytewise_crc32c(head)
    assert crc32c(data) == crc32c(data[len(head):], crc32c(head))
    assert crc32c(np.frombuffer(data, dtype=np.uint8)) == crc32c(data)


def test_mask_round_trip():
    assert mask(0) == 0xA282EAD8
    for value in (0, 1, 0xDEADBEEF, 0xFFFFFFFF):
        assert unmask(mask(value)) == value


def test_reads_the_tensorflow_fixture():
    arrays = np.load(OPENAI_TINY.with_suffix(".npz"))
    bundle = TensorBundle.from_directory(OPENAI_TINY)
    assert sorted(bundle.keys()) == sorted(arrays.files)
    for name in arrays.files:
        assert bundle.shape(name) == arrays[name].shape
        value = bundle.read(name)
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, arrays[name], err_msg=name)
    with pytest.raises(KeyError, match="model/h9/ln_1/g"):
        bundle.read("model/h9/ln_1/g")


# --- a minimal writer of the same formats, written from the leveldb / tensor_bundle.proto specs ----------

def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def field(number: int, value: int | bytes, fixed32: bool = False) -> bytes:
    if fixed32:
        return varint(number << 3 | 5) + struct.pack("<I", value)
    if isinstance(value, bytes):
        return varint(number << 3 | 2) + varint(len(value)) + value
    return varint(number << 3) + varint(value)


def block(entries: list[tuple[bytes, bytes]], restart_interval: int = 2) -> bytes:
    out, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_interval:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        else:
            restarts.append(len(out))
        out += varint(shared) + varint(len(key) - shared) + varint(len(value)) + key[shared:] + value
        previous = key
    return bytes(out) + b"".join(struct.pack("<I", r) for r in restarts or [0]) + struct.pack(
        "<I", len(restarts or [0]))


def table(entries: list[tuple[bytes, bytes]], per_block: int = 3) -> bytes:
    out = bytearray()

    def append(contents: bytes) -> bytes:
        handle = varint(len(out)) + varint(len(contents))
        out.extend(contents + b"\0" + struct.pack("<I", mask(crc32c(contents + b"\0"))))
        return handle

    index = [(chunk[-1][0], append(block(chunk)))
             for chunk in (entries[i : i + per_block] for i in range(0, len(entries), per_block))]
    handles = append(block([])) + append(block(index))  # metaindex (empty), then index
    return bytes(out) + handles + bytes(40 - len(handles)) + struct.pack("<Q", 0xDB4775248B80FB57)


def write_bundle(prefix, tensors: dict[str, tuple[int, np.ndarray]], extra: dict[str, bytes] | None = None):
    data, entries = bytearray(), {}
    for name, (dtype, array) in tensors.items():
        raw = array.tobytes()
        shape = b"".join(field(2, field(1, d)) for d in array.shape)
        entries[name.encode()] = (field(1, dtype) + field(2, shape) + field(4, len(data)) + field(5, len(raw))
                                  + field(6, mask(crc32c(raw)), fixed32=True) + (extra or {}).get(name, b""))
        data += raw
    header = field(1, 1) + field(3, field(1, 1))  # num_shards=1, little-endian (default), version
    (prefix.parent / f"{prefix.name}.index").write_bytes(table([(b"", header), *sorted(entries.items())]))
    (prefix.parent / f"{prefix.name}.data-00000-of-00001").write_bytes(bytes(data))


def test_multi_block_table_with_restarts_and_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "model/h0/attn/c_attn/b": (19, rng.normal(size=(2, 3)).astype(np.float16)),
        "model/h0/attn/c_attn/w": (1, rng.normal(size=(1, 4, 12)).astype(np.float32)),
        "model/h0/ln_1/g": (2, rng.normal(size=(5,))),
        "model/h10/mlp/c_fc/w": (9, np.arange(-3, 3, dtype=np.int64)),
        "model/wte": (1, np.array(1.5, dtype=np.float32)),  # a scalar: no dims
        "step": (3, np.array([7], dtype=np.int32)),
    }
    write_bundle(tmp_path / "ckpt", tensors)
    assert len(read_table(tmp_path / "ckpt.index")) == len(tensors) + 1  # three data blocks
    bundle = TensorBundle(tmp_path / "ckpt")
    assert bundle.keys() == sorted(tensors)
    for name, (_, array) in tensors.items():
        value = bundle.read(name)
        assert value.dtype == array.dtype and value.shape == array.shape
        np.testing.assert_array_equal(value, array)


def test_unsupported_entries_are_named(tmp_path):
    slice_spec = field(7, field(1, b""))
    write_bundle(tmp_path / "sliced", {"model/wte": (1, np.zeros(3, np.float32))}, {"model/wte": slice_spec})
    with pytest.raises(TensorBundleError, match="'model/wte'.*partitioned"):
        TensorBundle(tmp_path / "sliced")
    write_bundle(tmp_path / "bf16", {"model/wpe": (14, np.zeros(3, np.uint16))})
    with pytest.raises(TensorBundleError, match="'model/wpe' has unsupported dtype bfloat16"):
        TensorBundle(tmp_path / "bf16").read("model/wpe")


def test_checkpoint_file_with_a_foreign_absolute_path(tmp_path):
    write_bundle(tmp_path / "model.ckpt", {"x": (1, np.ones(2, np.float32))})
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "/home/someone/run/model.ckpt"\n')
    assert TensorBundle.from_directory(tmp_path).read("x").tolist() == [1.0, 1.0]


def test_not_a_table(tmp_path):
    (tmp_path / "short.index").write_bytes(b"abc")
    with pytest.raises(TensorBundleError, match="too short"):
        read_table(tmp_path / "short.index")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no `checkpoint` file and not exactly one"):
        TensorBundle.from_directory(tmp_path / "empty")
