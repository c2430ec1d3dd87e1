"""numpy references for the matmul kernel: dequantise fully, then x @ W^T; and the int8 decode path."""

from __future__ import annotations

import numpy as np

from wicore.kernels.weights import Weight


def matmul(x: np.ndarray, weight: Weight, bias: np.ndarray | None = None) -> np.ndarray:
    out = x.astype(np.float64) @ weight.dequantize().astype(np.float64).T
    if bias is not None:
        out += bias
    return out.astype(np.float32)


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """x [M, K] as the decode path sees it: int8 blocks of 32 with scale max|x| / 127, rounded half to even."""
    m, k = x.shape
    kp = -(-k // 32) * 32
    blocks = np.zeros((m, kp), np.float32)
    blocks[:, :k] = x
    blocks = blocks.reshape(m, kp // 32, 32)
    amax = np.abs(blocks).max(axis=2, keepdims=True)
    scale = amax / np.float32(127)
    inv = np.divide(np.float32(127), amax, out=np.zeros_like(amax), where=amax > 0)
    return (np.rint(blocks * inv) * scale).reshape(m, kp)[:, :k]
