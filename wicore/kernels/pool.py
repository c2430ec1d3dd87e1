"""The kernels' persistent thread pool (mojo_kernels/common.mojo): one per process, passed by address."""

from __future__ import annotations

import functools
import os

from wicore.kernels import build


@functools.cache
def _pool(pid: int) -> int:
    return int(build.load("matmul").start_pool((0,)))


def thread_pool() -> int:
    """Address of this process's pool (WICORE_NUM_THREADS threads, default every core).

    Keyed by pid: a forked child has none of its parent's threads and starts its own."""
    return _pool(os.getpid())
