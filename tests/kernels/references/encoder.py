"""Plain numpy references for the encoder kernels (float64 math, float32 results)."""

from __future__ import annotations

import math

import numpy as np

_erf = np.frompyfunc(math.erf, 1, 1)


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=-1, keepdims=True)
    return ((x64 - mean) / np.sqrt(var + eps) * weight + bias).astype(np.float32)


def gelu(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + _erf(x64 / math.sqrt(2.0)).astype(np.float64))).astype(np.float32)


def attention(qkv: np.ndarray, lengths: np.ndarray, scale: float | None = None) -> np.ndarray:
    """qkv [B, S, 3, H, D] -> out [B, S, H, D]; keys j >= lengths[b] masked, padded queries zero."""
    b, s, _, h, d = qkv.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = np.zeros((b, s, h, d), dtype=np.float64)
    for bi in range(b):
        n = int(lengths[bi])
        if n == 0:
            continue
        q, k, v = (qkv[bi, :n, i].astype(np.float64).transpose(1, 0, 2) for i in range(3))  # [H, n, D]
        scores = q @ k.transpose(0, 2, 1) * scale
        p = np.exp(scores - scores.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        out[bi, :n] = (p @ v).transpose(1, 0, 2)
    return out.astype(np.float32)


def mean_pool(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    mask = np.arange(x.shape[1])[None, :] < lengths[:, None]  # [B, S]
    total = (x.astype(np.float64) * mask[:, :, None]).sum(axis=1)
    return (total / np.maximum(lengths, 1)[:, None]).astype(np.float32)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    return (x64 / np.maximum(np.linalg.norm(x64, axis=-1, keepdims=True), 1e-12)).astype(np.float32)
