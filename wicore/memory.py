"""Handing freed heap memory back to the system after a one-off burst of allocations.

glibc keeps what a process frees mapped for its next allocations. After loading a tokenizer (the
`tokenizers` JSON parse of a 152k-token vocabulary leaves ~40 MB free but mapped) nothing reuses most of
it, and it would count in the process's resident memory for as long as the process lives."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None  # glibc only (not musl, macOS)


def release_freed_memory() -> None:
    """Return the heap's free pages to the system (glibc's malloc_trim); a no-op elsewhere."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
