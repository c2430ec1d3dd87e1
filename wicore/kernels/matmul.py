"""out[M, N] = x[M, K] @ W[N, K]^T (+ bias), W quantised (QuantWeight) or dense (DenseWeight)."""

from __future__ import annotations

import numpy as np

from wicore.kernels import build
from wicore.kernels._arrays import require
from wicore.models.quant import DenseWeight, QuantWeight, Weight

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
    has_bias = int(bias is not None)
    kernels = build.load("matmul")
    if isinstance(weight, QuantWeight):
        mins = weight.min if weight.min is not None else _EMPTY
        dims = np.array([m, n, k, weight.group, int(weight.min is not None), has_bias], dtype=np.int32)
        kernels.matmul_q(x, weight.q, weight.scale, mins, _EMPTY if bias is None else bias, out, dims)
    elif isinstance(weight, DenseWeight):
        dims = np.array([m, n, k, int(weight.w.dtype == np.float16), has_bias], dtype=np.int32)
        kernels.matmul_dense(x, weight.w, _EMPTY if bias is None else bias, out, dims)
    else:
        raise ValueError(f"weight: unsupported type {type(weight).__name__}")
    return out
