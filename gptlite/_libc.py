"""The C library through ctypes, for the few process-level calls gptlite makes (malloc tuning, madvise)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def libc() -> ctypes.CDLL | None:
    """This Linux process's C library, or None (another OS, or no loadable libc).

    Callers look their function up with ``getattr(libc(), name, None)``: glibc-only functions (``mallopt``,
    ``mallinfo2``) are missing from other C libraries such as musl.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
