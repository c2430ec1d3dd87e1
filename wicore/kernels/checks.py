"""Argument checks shared by the kernel wrappers: the Mojo side trusts these.

Every check raises ValueError naming the argument. The few checks that need to read the data
(indices in range) run on the Mojo side, before anything is written, and raise
Error("<argument>: ..."), which reaches Python as a plain Exception: `kernel_error` turns it
into the same ValueError.
"""

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


def require_ndim(a: np.ndarray, dtype: type | np.dtype, name: str, ndim: int) -> tuple[int, ...]:
    """require() with any shape of `ndim` dims; returns the shape."""
    require(a, dtype, name)
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected shape with {ndim} dims, got {a.shape}")
    return a.shape


def require_writable(a: np.ndarray, name: str) -> None:
    if not a.flags.writeable:
        raise ValueError(f"{name}: array is read-only")


def kernel_error(e: Exception) -> Exception:
    """A Mojo-side check's Error (a plain Exception here) as ValueError; anything else unchanged."""
    return ValueError(str(e)) if type(e) is Exception else e
