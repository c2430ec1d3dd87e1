"""Layer kernels: rmsnorm, fused residual + rmsnorm, rotary embedding, silu * up.

These are called ~100 times per decoded token, so the checks here are kept to the
few the Mojo side needs to stay in bounds (dtype, shape, C-contiguity, writability).
"""

from __future__ import annotations

import numpy as np

from wicore.kernels import build
from wicore.kernels.checks import require, require_ndim, require_writable

_F32 = np.dtype(np.float32)
_I32 = np.dtype(np.int32)


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float, out: np.ndarray) -> None:
    """out = x / sqrt(mean(x^2, axis=-1) + eps) * weight for x, out float32 [M, K]; out may be x."""
    m, k = require_ndim(x, _F32, "x", 2)
    require(weight, _F32, "weight", (k,))
    require(out, _F32, "out", (m, k))
    require_writable(out, "out")
    build.load("layers").rmsnorm(x, weight, out, (m, k), float(eps))


def add_rmsnorm(x: np.ndarray, delta: np.ndarray, weight: np.ndarray, eps: float, out: np.ndarray) -> None:
    """Residual add then norm: x += delta (in place), out = rmsnorm(x, weight, eps)."""
    m, k = require_ndim(x, _F32, "x", 2)
    require(delta, _F32, "delta", (m, k))
    require(weight, _F32, "weight", (k,))
    require(out, _F32, "out", (m, k))
    require_writable(x, "x")
    require_writable(out, "out")
    build.load("layers").add_rmsnorm(x, delta, weight, out, (m, k), float(eps))


def rope_table(positions: np.ndarray, theta: float, n_rot: int) -> np.ndarray:
    """float32 [T, n_rot]: row t holds cos, then sin, of positions[t] * theta^(-2i/n_rot), i < n_rot/2.

    Computed once per forward pass and RoPE base, then shared by the q and k of every layer."""
    (t,) = require_ndim(positions, _I32, "positions", 1)
    if n_rot <= 0 or n_rot % 2:
        raise ValueError(f"n_rot must be even and positive, got {n_rot}")
    if not theta > 0:
        raise ValueError(f"theta must be positive, got {theta}")
    table = np.empty((t, n_rot), dtype=np.float32)
    build.load("layers").rope_table(positions, table, (t, n_rot), float(theta))
    return table


def rope(x: np.ndarray, table: np.ndarray, neox: bool) -> None:
    """Rotary embedding in place on the first n_rot dims of each head of x float32 [T, H, D], with
    table = rope_table(positions, theta, n_rot).

    neox=True rotates pairs (i, i + n_rot/2) (Qwen2, GPT-NeoX); neox=False rotates pairs (2i, 2i + 1)
    (llama GGUF).
    """
    t, h, d = require_ndim(x, _F32, "x", 3)
    rows, n_rot = require_ndim(table, _F32, "table", 2)
    if rows != t or n_rot > d or n_rot <= 0 or n_rot % 2:
        raise ValueError(f"table: expected shape ({t}, n_rot) with an even n_rot <= {d}, got {table.shape}")
    require_writable(x, "x")
    build.load("layers").rope(x, table, (t, h, d, int(bool(neox)), n_rot))


def silu_mul(gate_up: np.ndarray, out: np.ndarray) -> None:
    """out = silu(gate) * up, where gate_up float32 [M, 2F] holds gate then up; out float32 [M, F]."""
    _glu_mul(gate_up, out, gelu=False)


def gelu_tanh_mul(gate_up: np.ndarray, out: np.ndarray) -> None:
    """out = gelu_tanh(gate) * up (Gemma's MLP), shapes as silu_mul."""
    _glu_mul(gate_up, out, gelu=True)


def _glu_mul(gate_up: np.ndarray, out: np.ndarray, gelu: bool) -> None:
    m, f2 = require_ndim(gate_up, _F32, "gate_up", 2)
    if f2 % 2:
        raise ValueError(f"gate_up: last dim must be even (gate then up), got {f2}")
    require(out, _F32, "out", (m, f2 // 2))
    require_writable(out, "out")
    build.load("layers").glu_mul(gate_up, out, (m, f2 // 2, int(gelu)))
