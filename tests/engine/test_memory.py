"""wicore.memory: freed heap memory goes back to the system."""

from __future__ import annotations

import ctypes
import ctypes.util

import pytest

from wicore.memory import release_freed_memory


def rss_anon_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:")) / 1024


@pytest.mark.skipif(not ctypes.util.find_library("c"), reason="needs a C library")
def test_freed_small_allocations_leave_the_resident_set() -> None:
    """100 MB in 1 KiB blocks (below glibc's mmap threshold, so on the heap), all but every 64th freed:
    the survivors pin the heap's top, so glibc keeps the freed pages between them resident until
    release_freed_memory hands them back (as after a tokenizer's parse)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(1024) for _ in range(100_000)]
    for b in blocks:
        ctypes.memset(b, 1, 1024)  # resident
    for i, b in enumerate(blocks):
        if i % 64:
            libc.free(b)
    held = rss_anon_mb()
    release_freed_memory()
    assert held - rss_anon_mb() > 50
    for b in blocks[::64]:
        libc.free(b)
