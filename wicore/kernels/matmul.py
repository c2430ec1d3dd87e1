"""out[M, N] = x[M, K] @ W[N, K]^T (+ bias), W quantised (QuantWeight, SplitWeight) or dense (DenseWeight)."""

from __future__ import annotations

import numpy as np

from wicore.kernels import build
from wicore.kernels._arrays import require
from wicore.kernels.pool import thread_pool
from wicore.models.quant import DenseWeight, QuantWeight, SplitWeight, Weight

_EMPTY = np.zeros(1, dtype=np.float32)


def matmul(x: np.ndarray, weight: Weight, out: np.ndarray | None = None, bias: np.ndarray | None = None) -> np.ndarray:
    n, k = weight.shape
    require(x, np.float32, "x", (-1, k))
    m = x.shape[0]
    if out is None:
        out = np.empty((m, n), dtype=np.float32)
    else:
        require(out, np.float32, "out", (m, n))
    if bias is not None:
        require(bias, np.float32, "bias", (n,))
    kernels = build.load("matmul")
    if isinstance(weight, DenseWeight):
        dims = np.array([m, n, k, int(weight.w.dtype == np.float16), int(bias is not None)], dtype=np.int32)
        kernels.matmul_dense(x, weight.w, _EMPTY if bias is None else bias, out, dims)
        return out
    col, pool = 0, thread_pool()
    for part in weight.parts if isinstance(weight, SplitWeight) else [weight]:
        if not isinstance(part, QuantWeight):
            raise ValueError(f"weight: unsupported type {type(part).__name__}")
        rows = part.shape[0]
        part_bias = _EMPTY if bias is None else bias[col : col + rows]
        dims = np.array([m, int(bias is not None), n, col, pool], dtype=np.int64)
        kernels.matmul_q(x, part.descriptor, part_bias, out, dims)
        col += rows
    return out
