"""Layer kernels: rmsnorm, fused residual + rmsnorm, rotary embedding, silu * up, softmax.

These are called ~100 times per decoded token, so the checks here are kept to the
few the Mojo side needs to stay in bounds (dtype, shape, C-contiguity, writability).
"""

from __future__ import annotations

import numpy as np

from wicore.kernels import build
from wicore.kernels._arrays import require

_F32 = np.dtype(np.float32)
_I32 = np.dtype(np.int32)


# require()'s generic shape match costs ~0.6 us per array, more than most of these kernels
# take on one row, so it checks dtype and contiguity and the exact shapes are compared here.
def _check(a: np.ndarray, dtype: np.dtype, name: str, shape: tuple[int, ...]) -> None:
    require(a, dtype, name)
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")


def _dims(a: np.ndarray, name: str, ndim: int) -> tuple[int, ...]:
    require(a, _F32, name)
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected shape with {ndim} dims, got {a.shape}")
    return a.shape


def _writable(a: np.ndarray, name: str) -> None:
    if not a.flags.writeable:
        raise ValueError(f"{name}: array is read-only")


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float, out: np.ndarray) -> None:
    """out = x / sqrt(mean(x^2, axis=-1) + eps) * weight for x, out float32 [M, K]; out may be x."""
    m, k = _dims(x, "x", 2)
    _check(weight, _F32, "weight", (k,))
    _check(out, _F32, "out", (m, k))
    _writable(out, "out")
    build.load("layers").rmsnorm(x, weight, float(eps), out, m, k)


def add_rmsnorm(x: np.ndarray, delta: np.ndarray, weight: np.ndarray, eps: float, out: np.ndarray) -> None:
    """Residual add then norm: x += delta (in place), out = rmsnorm(x, weight, eps)."""
    m, k = _dims(x, "x", 2)
    _check(delta, _F32, "delta", (m, k))
    _check(weight, _F32, "weight", (k,))
    _check(out, _F32, "out", (m, k))
    _writable(x, "x")
    _writable(out, "out")
    build.load("layers").add_rmsnorm(x, delta, weight, float(eps), out, m, k)


def rope(x: np.ndarray, positions: np.ndarray, theta: float, neox: bool, n_rot: int | None = None) -> None:
    """Rotary embedding in place on the first n_rot (default D) dims of each head of x float32 [T, H, D].

    positions: int32 [T]. neox=True rotates pairs (i, i + n_rot/2) (Qwen2, GPT-NeoX);
    neox=False rotates pairs (2i, 2i + 1) (llama GGUF). Angle = pos * theta^(-2i/n_rot).
    """
    t, h, d = _dims(x, "x", 3)
    _check(positions, _I32, "positions", (t,))
    _writable(x, "x")
    if n_rot is None:
        n_rot = d
    if n_rot <= 0 or n_rot > d or n_rot % 2:
        raise ValueError(f"n_rot must be even and in (0, {d}], got {n_rot}")
    if not theta > 0:
        raise ValueError(f"theta must be positive, got {theta}")
    build.load("layers").rope(x, positions, t, h, d, float(theta), int(bool(neox)), n_rot)


def silu_mul(gate_up: np.ndarray, out: np.ndarray) -> None:
    """out = silu(gate) * up, where gate_up float32 [M, 2F] holds gate then up; out float32 [M, F]."""
    _glu_mul(gate_up, out, gelu=False)


def gelu_tanh_mul(gate_up: np.ndarray, out: np.ndarray) -> None:
    """out = gelu_tanh(gate) * up (Gemma's MLP), shapes as silu_mul."""
    _glu_mul(gate_up, out, gelu=True)


def _glu_mul(gate_up: np.ndarray, out: np.ndarray, gelu: bool) -> None:
    m, f2 = _dims(gate_up, "gate_up", 2)
    if f2 % 2:
        raise ValueError(f"gate_up: last dim must be even (gate then up), got {f2}")
    _check(out, _F32, "out", (m, f2 // 2))
    _writable(out, "out")
    build.load("layers").glu_mul(gate_up, out, m, f2 // 2, int(gelu))


def softmax(x: np.ndarray) -> None:
    """Row softmax in place on x float32 [M, N] (the row max is subtracted first)."""
    m, n = _dims(x, "x", 2)
    _writable(x, "x")
    build.load("layers").softmax(x, m, n)
