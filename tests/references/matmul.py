"""numpy reference for the matmul kernel: dequantise fully, then x @ W^T."""

from __future__ import annotations

import numpy as np

from wicore.models.quant import Weight


def matmul(x: np.ndarray, weight: Weight, bias: np.ndarray | None = None) -> np.ndarray:
    out = x.astype(np.float64) @ weight.dequantize().astype(np.float64).T
    if bias is not None:
        out += bias
    return out.astype(np.float32)
