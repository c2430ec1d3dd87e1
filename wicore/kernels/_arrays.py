"""Argument checks shared by the kernel wrappers: the Mojo side trusts these."""

from __future__ import annotations

import numpy as np


def require(a: np.ndarray, dtype: type | np.dtype, name: str, shape: tuple[int, ...] | None = None) -> None:
    """Raise ValueError unless `a` is a C-contiguous ndarray of `dtype` (and `shape`, -1 = any)."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: array must be C-contiguous")
    # The exact comparison is the cheap common case; -1 entries are wildcards.
    if (
        shape is not None
        and a.shape != shape
        and (a.ndim != len(shape) or any(s not in (-1, d) for s, d in zip(shape, a.shape, strict=True)))
    ):
        raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")
