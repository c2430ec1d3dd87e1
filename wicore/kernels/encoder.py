"""Encoder (BERT) kernels: layer norm, residual + layer norm, GELU, padded bidirectional attention,
masked mean pooling, L2 normalisation.

Batches are right-padded: sequence b holds `lengths[b]` real tokens, then padding. The
kernels read that length as the key padding mask (padded keys are never attended to,
padded tokens never pooled). The checks here are what keeps the Mojo side in bounds.
"""

from __future__ import annotations

import math

import numpy as np

from wicore.kernels import build
from wicore.kernels.checks import require, require_ndim, require_writable

_F32 = np.dtype(np.float32)
_I32 = np.dtype(np.int32)


def _out(out: np.ndarray, shape: tuple[int, ...]) -> None:
    require(out, _F32, "out", shape)
    require_writable(out, "out")


def _lengths(lengths: np.ndarray, b: int, s: int) -> None:
    require(lengths, _I32, "lengths", (b,))
    if b and (lengths.min() < 0 or lengths.max() > s):
        raise ValueError(f"lengths: every length must be in [0, {s}]")


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float, out: np.ndarray) -> None:
    """out = (x - mean) / sqrt(var + eps) * weight + bias over the last axis of x float32 [M, K]; out may be x."""
    m, k = require_ndim(x, _F32, "x", 2)
    require(weight, _F32, "weight", (k,))
    require(bias, _F32, "bias", (k,))
    _out(out, (m, k))
    build.load("encoder").layer_norm(x, weight, bias, out, (m, k), float(eps))


def add_layer_norm(
    x: np.ndarray, delta: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float, out: np.ndarray
) -> None:
    """BERT's post-norm residual: out = layer_norm(x + delta); out may be x or delta."""
    m, k = require_ndim(x, _F32, "x", 2)
    require(delta, _F32, "delta", (m, k))
    require(weight, _F32, "weight", (k,))
    require(bias, _F32, "bias", (k,))
    _out(out, (m, k))
    build.load("encoder").add_layer_norm(x, delta, weight, bias, out, (m, k), float(eps))


def gelu(x: np.ndarray, out: np.ndarray) -> None:
    """out = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), elementwise on float32 arrays; out may be x."""
    require(x, _F32, "x")
    _out(out, x.shape)
    build.load("encoder").gelu(x, out, (x.size,))


def attention(qkv: np.ndarray, lengths: np.ndarray, out: np.ndarray, scale: float | None = None) -> None:
    """Bidirectional multi-head attention over a right-padded batch.

    qkv: float32 [B, S, 3, H, D], the fused q|k|v projection of every token (so q, k and v
    are each [batch, seq, heads, head_dim] with a row stride of 3*H*D); lengths: int32 [B],
    the key padding mask; out: float32 [B, S, H, D]. For b, h and a real query i < lengths[b]:
    out[b, i, h] = softmax_j(q_i . k_j * scale) v_j over j < lengths[b]; padded queries get
    zeros. scale defaults to 1 / sqrt(D).
    """
    b, s, three, h, d = require_ndim(qkv, _F32, "qkv", 5)
    if three != 3:
        raise ValueError(f"qkv: expected shape (B, S, 3, H, D), got {qkv.shape}")
    _lengths(lengths, b, s)
    _out(out, (b, s, h, d))
    build.load("encoder").attention(
        qkv, lengths, out, (b, s, h, d), 1.0 / math.sqrt(d) if scale is None else float(scale)
    )


def mean_pool(x: np.ndarray, lengths: np.ndarray, out: np.ndarray) -> None:
    """out[b] = mean of x[b, :lengths[b]] for x float32 [B, S, E], out [B, E]; zeros where a length is 0."""
    b, s, e = require_ndim(x, _F32, "x", 3)
    _lengths(lengths, b, s)
    _out(out, (b, e))
    build.load("encoder").mean_pool(x, lengths, out, (b, s, e))


def l2_normalize(x: np.ndarray, out: np.ndarray) -> None:
    """out = x / max(||x||, 1e-12) for each row of x float32 [M, N] (as torch's F.normalize); out may be x."""
    m, n = require_ndim(x, _F32, "x", 2)
    _out(out, (m, n))
    build.load("encoder").l2_normalize(x, out, (m, n))
