"""Plain numpy references for the layer kernels (float64 math, float32 results)."""

from __future__ import annotations

import numpy as np


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    scale = 1.0 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + eps)
    return (x64 * scale * weight).astype(np.float32)


def rope_table(positions: np.ndarray, theta: float, n_rot: int) -> np.ndarray:
    """[T, n_rot]: cos then sin of float64 angles, rounded to float32 as the kernel does."""
    half = n_rot // 2
    freq = float(theta) ** (-2.0 * np.arange(half, dtype=np.float64) / n_rot)
    angle = positions.astype(np.float64)[:, None] * freq  # [T, half]
    return np.concatenate([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)


def rope(x: np.ndarray, positions: np.ndarray, theta: float, neox: bool, n_rot: int | None = None) -> np.ndarray:
    """Rotated copy of x [T, H, D]."""
    d = x.shape[-1]
    n_rot = d if n_rot is None else n_rot
    half = n_rot // 2
    table = rope_table(positions, theta, n_rot).astype(np.float64)
    cos, sin = table[:, None, :half], table[:, None, half:]
    y = x.astype(np.float64)
    if neox:
        x0, x1 = y[..., :half].copy(), y[..., half:n_rot].copy()
        y[..., :half] = x0 * cos - x1 * sin
        y[..., half:n_rot] = x0 * sin + x1 * cos
    else:
        x0, x1 = y[..., 0:n_rot:2].copy(), y[..., 1:n_rot:2].copy()
        y[..., 0:n_rot:2] = x0 * cos - x1 * sin
        y[..., 1:n_rot:2] = x0 * sin + x1 * cos
    return y.astype(np.float32)


def silu_mul(gate_up: np.ndarray) -> np.ndarray:
    f = gate_up.shape[-1] // 2
    g = gate_up[:, :f].astype(np.float64)
    u = gate_up[:, f:].astype(np.float64)
    return (g / (1.0 + np.exp(-g)) * u).astype(np.float32)


def gelu_tanh_mul(gate_up: np.ndarray) -> np.ndarray:
    f = gate_up.shape[-1] // 2
    g = gate_up[:, :f].astype(np.float64)
    u = gate_up[:, f:].astype(np.float64)
    return (0.5 * g * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (g + 0.044715 * g**3))) * u).astype(np.float32)
