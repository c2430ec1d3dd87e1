"""out[M, N] = x[M, K] @ W[N, K]^T (+ bias), W quantised (QuantWeight, SplitWeight) or dense (DenseWeight)."""

from __future__ import annotations

import numpy as np

from wicore.kernels import build
from wicore.kernels.checks import require
from wicore.kernels.pool import thread_pool
from wicore.kernels.weights import DenseWeight, QuantWeight, SplitWeight, Weight

_F32 = np.dtype(np.float32)
_EMPTY = np.zeros(1, dtype=np.float32)


def matmul(x: np.ndarray, weight: Weight, out: np.ndarray | None = None, bias: np.ndarray | None = None) -> np.ndarray:
    n, k = weight.shape
    require(x, _F32, "x", (-1, k))
    m = x.shape[0]
    if out is None:
        out = np.empty((m, n), dtype=np.float32)
    else:
        require(out, _F32, "out", (m, n))
    if bias is not None:
        require(bias, _F32, "bias", (n,))
    kernel = build.load("matmul").matmul
    has_bias = int(bias is not None)
    col, pool = 0, thread_pool()
    # The parts of a SplitWeight write side by side into out's columns.
    for part in weight.parts if isinstance(weight, SplitWeight) else [weight]:
        if not isinstance(part, (QuantWeight, DenseWeight)):
            raise ValueError(f"weight: unsupported type {type(part).__name__}")
        rows = part.shape[0]
        part_bias = _EMPTY if bias is None else bias[col : col + rows]
        kernel(x, part.descriptor, part_bias, out, (m, has_bias, n, col, pool))
        col += rows
    return out
