"""CRC-32C (Castagnoli), as TensorFlow checks its checkpoints, in numpy.

TensorFlow stores a *masked* CRC-32C of every tensor and of every table block. Python's `zlib` only has
the other CRC-32 polynomial, so the checksum is computed here. A byte-at-a-time loop in Python would take
minutes for a GPT-2 checkpoint; instead the data is cut into equal chunks whose CRC registers advance
together in numpy (two bytes per step), and the per-chunk results are folded with the linear operator
"advance over CHUNK zero bytes". The standalone module needs only numpy, so TensorFlow-side scripts can
import it too.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["crc32c", "mask", "unmask"]

_POLY = 0x82F63B78  # the Castagnoli polynomial, bit-reversed (CRC-32C is a reflected CRC)
_MASK_DELTA = 0xA282EAD8  # TensorFlow's (and leveldb's) constant in masked CRCs
_CHUNK = 1024  # bytes per chunk in the vectorised path: even, so chunks are whole 16-bit words
_SLAB = 1 << 24  # bytes handled per numpy pass: bounds the temporary memory to a few slab sizes
_VECTOR_MIN = 1 << 16  # below this the plain loop is fast enough and avoids numpy overhead


def _byte_table() -> np.ndarray:
    # _TABLE[b] is the register after feeding byte b into a zero register, 8 bit-steps at once.
    reg = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        reg = np.where(reg & 1, (reg >> 1) ^ np.uint32(_POLY), reg >> 1).astype(np.uint32)
    return reg


_TABLE = _byte_table()
_TABLE_LIST = _TABLE.tolist()
# Two bytes per step: feeding the 16-bit little-endian word w updates reg to
# _TABLE16[(reg ^ w) & 0xFFFF] ^ (reg >> 16), because only the low 16 bits get shifted out.
_low = np.arange(1 << 16, dtype=np.uint32)
_step = _TABLE[_low & 0xFF] ^ (_low >> 8)
_TABLE16 = (_TABLE[_step & 0xFF] ^ (_step >> 8)).astype(np.uint32)
del _low, _step


def _update_bytes(reg: int, data: bytes | memoryview) -> int:
    table = _TABLE_LIST
    for byte in data:
        reg = table[(reg ^ byte) & 0xFF] ^ (reg >> 8)
    return reg


@functools.lru_cache(maxsize=4)
def _zeros_operator(n_bytes: int) -> tuple[list[int], ...]:
    """Four byte tables that apply "advance the register over n_bytes zero bytes" (a linear map)."""
    # Images of the 32 basis registers, all advanced together.
    reg = np.uint32(1) << np.arange(32, dtype=np.uint32)
    for _ in range(n_bytes):
        reg = _TABLE[reg & 0xFF] ^ (reg >> 8)
    tables = []
    for byte_index in range(4):
        table = np.zeros(256, dtype=np.uint32)
        for bit in range(8):
            has_bit = (np.arange(256) >> bit) & 1
            table ^= np.where(has_bit, reg[8 * byte_index + bit], 0).astype(np.uint32)
        tables.append(table.tolist())
    return tuple(tables)


def _update_vectorized(reg: int, data: np.ndarray) -> int:
    """Advance `reg` over `data` (uint8, length a multiple of _CHUNK) chunk-parallel."""
    t0, t1, t2, t3 = _zeros_operator(_CHUNK)
    for start in range(0, data.size, _SLAB):
        words = data[start : start + _SLAB].view("<u2").reshape(-1, _CHUNK // 2)  # (chunks, words per chunk)
        partial = np.zeros(words.shape[0], dtype=np.uint32)  # each chunk's register, started from zero
        index = np.empty_like(partial)
        looked_up = np.empty_like(partial)
        # Column by column (strided, but the chunks' cache lines stay hot), in place to avoid allocations.
        for column in words.T:
            np.bitwise_and(partial, 0xFFFF, out=index)
            np.bitwise_xor(index, column, out=index)
            np.take(_TABLE16, index, out=looked_up)
            np.right_shift(partial, 16, out=partial)
            np.bitwise_xor(partial, looked_up, out=partial)
        # CRC registers are linear: reg(A + B) = zeros_operator(len B)(reg(A)) ^ reg_from_zero(B).
        for value in partial.tolist():
            reg = t0[reg & 0xFF] ^ t1[(reg >> 8) & 0xFF] ^ t2[(reg >> 16) & 0xFF] ^ t3[reg >> 24] ^ value
    return reg


def crc32c(data: bytes | bytearray | memoryview | np.ndarray, crc: int = 0) -> int:
    """CRC-32C of `data`; pass a previous result as `crc` to continue it (like `zlib.crc32`)."""
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    reg = crc ^ 0xFFFFFFFF
    vector_len = (buf.size // _CHUNK) * _CHUNK if buf.size >= _VECTOR_MIN else 0
    if vector_len:
        reg = _update_vectorized(reg, buf[:vector_len])
    reg = _update_bytes(reg, buf[vector_len:].tobytes())
    return reg ^ 0xFFFFFFFF


def mask(crc: int) -> int:
    """TensorFlow's masked CRC: rotate right by 15 bits and add a constant.

    Storing a CRC of data that itself contains CRCs is weak; the mask makes that safe (see leveldb).
    """
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    """Inverse of `mask`."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF
