"""Layer kernels vs the numpy references on odd shapes, including the threaded sizes."""

from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.references import layers as ref
from wicore.kernels import layers

# (M, K): decode rows, odd widths that leave SIMD tails, and 449 x 901, big enough for every
# kernel to split its rows over threads.
ROW_SHAPES = [(1, 7), (3, 33), (17, 901), (1, 896), (449, 901)]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _f32(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("m,k", ROW_SHAPES)
def test_rmsnorm(rng: np.random.Generator, m: int, k: int) -> None:
    x = _f32(rng, m, k, scale=3.0)
    w = _f32(rng, k)
    out = np.full((m, k), np.nan, np.float32)
    x_before = x.copy()
    layers.rmsnorm(x, w, 1e-6, out)
    np.testing.assert_allclose(out, ref.rmsnorm(x, w, 1e-6), rtol=2e-6, atol=1e-6)
    np.testing.assert_array_equal(x, x_before)


def test_rmsnorm_eps_dominates(rng: np.random.Generator) -> None:
    x = _f32(rng, 3, 33, scale=1e-4)
    w = _f32(rng, 33)
    out = np.empty_like(x)
    layers.rmsnorm(x, w, 1e-2, out)
    np.testing.assert_allclose(out, ref.rmsnorm(x, w, 1e-2), rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("m,k", [(3, 33), (449, 901)])
def test_rmsnorm_in_place(rng: np.random.Generator, m: int, k: int) -> None:
    x = _f32(rng, m, k)
    w = _f32(rng, k)
    expected = ref.rmsnorm(x, w, 1e-5)
    layers.rmsnorm(x, w, 1e-5, x)
    np.testing.assert_allclose(x, expected, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("m,k", ROW_SHAPES)
def test_add_rmsnorm(rng: np.random.Generator, m: int, k: int) -> None:
    x = _f32(rng, m, k)
    delta = _f32(rng, m, k)
    w = _f32(rng, k)
    out = np.full((m, k), np.nan, np.float32)
    summed = x + delta
    delta_before = delta.copy()
    layers.add_rmsnorm(x, delta, w, 1e-6, out)
    np.testing.assert_array_equal(x, summed)  # the float32 residual add is exact
    np.testing.assert_array_equal(delta, delta_before)
    np.testing.assert_allclose(out, ref.rmsnorm(summed, w, 1e-6), rtol=2e-6, atol=1e-6)


def test_add_rmsnorm_out_aliases_x(rng: np.random.Generator) -> None:
    x = _f32(rng, 3, 33)
    delta = _f32(rng, 3, 33)
    w = _f32(rng, 33)
    expected = ref.rmsnorm(x + delta, w, 1e-6)
    layers.add_rmsnorm(x, delta, w, 1e-6, x)
    np.testing.assert_allclose(x, expected, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("theta", [1e4, 1e6])
@pytest.mark.parametrize("d,n_rot", [(6, None), (64, None), (66, None), (66, 34), (64, 16), (64, 2)])
def test_rope(rng: np.random.Generator, neox: bool, theta: float, d: int, n_rot: int | None) -> None:
    x = _f32(rng, 5, 3, d)
    positions = np.array([0, 7, 30000, 3, 131071], np.int32)  # out of order, far apart
    expected = ref.rope(x, positions, theta, neox, n_rot)
    table = layers.rope_table(positions, theta, n_rot or d)
    np.testing.assert_allclose(table, ref.rope_table(positions, theta, n_rot or d), rtol=1e-6, atol=1e-7)
    layers.rope(x, table, neox)
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("neox", [True, False])
def test_rope_threaded(rng: np.random.Generator, neox: bool) -> None:
    t, h, d = 701, 3, 66  # T*H*D is over the threading threshold
    x = _f32(rng, t, h, d)
    positions = rng.permutation(40000)[:t].astype(np.int32)
    expected = ref.rope(x, positions, 1e6, neox, 62)
    layers.rope(x, layers.rope_table(positions, 1e6, 62), neox)
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-6)


def test_rope_position_zero_is_identity(rng: np.random.Generator) -> None:
    x = _f32(rng, 2, 3, 33 * 2)
    before = x.copy()
    layers.rope(x, layers.rope_table(np.zeros(2, np.int32), 1e4, 66), False)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("m,f", ROW_SHAPES)
def test_silu_mul(rng: np.random.Generator, m: int, f: int) -> None:
    gate_up = _f32(rng, m, 2 * f, scale=4.0)
    gate_up[0, :2] = [-120.0, 120.0]  # exp overflow on either side stays finite
    out = np.full((m, f), np.nan, np.float32)
    layers.silu_mul(gate_up, out)
    np.testing.assert_allclose(out, ref.silu_mul(gate_up), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("m,f", ROW_SHAPES)
def test_gelu_tanh_mul(rng: np.random.Generator, m: int, f: int) -> None:
    gate_up = _f32(rng, m, 2 * f, scale=4.0)
    gate_up[0, :2] = [-120.0, 120.0]  # tanh saturates: 0 and x
    out = np.full((m, f), np.nan, np.float32)
    layers.gelu_tanh_mul(gate_up, out)
    np.testing.assert_allclose(out, ref.gelu_tanh_mul(gate_up), rtol=2e-6, atol=1e-6)


def test_bad_inputs() -> None:
    x = np.zeros((3, 33), np.float32)
    w = np.ones(33, np.float32)
    with pytest.raises(ValueError, match="dtype"):
        layers.rmsnorm(x.astype(np.float64), w, 1e-6, x)
    with pytest.raises(ValueError, match="shape"):
        layers.rmsnorm(x, np.ones(32, np.float32), 1e-6, x)
    with pytest.raises(ValueError, match="shape"):
        layers.rmsnorm(x[0], w, 1e-6, x[0])
    with pytest.raises(ValueError, match="contiguous"):
        layers.rmsnorm(np.zeros((3, 66), np.float32)[:, ::2], w, 1e-6, x)
    readonly = np.zeros((3, 33), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        layers.rmsnorm(x, w, 1e-6, readonly)
    with pytest.raises(ValueError, match="shape"):
        layers.add_rmsnorm(x, np.zeros((3, 32), np.float32), w, 1e-6, x)
    with pytest.raises(ValueError, match="read-only"):
        layers.add_rmsnorm(readonly, x, w, 1e-6, x)

    q = np.zeros((2, 3, 8), np.float32)
    pos = np.zeros(2, np.int32)
    table = layers.rope_table(pos, 1e4, 8)
    with pytest.raises(ValueError, match="dtype"):
        layers.rope_table(pos.astype(np.int64), 1e4, 8)
    with pytest.raises(ValueError, match="shape"):
        layers.rope(q, layers.rope_table(np.zeros(3, np.int32), 1e4, 8), True)
    with pytest.raises(ValueError, match="contiguous"):
        layers.rope(np.zeros((2, 3, 16), np.float32)[..., ::2], table, True)
    for n_rot in (0, 7):
        with pytest.raises(ValueError, match="n_rot"):
            layers.rope_table(pos, 1e4, n_rot)
    with pytest.raises(ValueError, match="n_rot"):
        layers.rope(q, layers.rope_table(pos, 1e4, 10), True)
    with pytest.raises(ValueError, match="theta"):
        layers.rope_table(pos, 0.0, 8)

    with pytest.raises(ValueError, match="even"):
        layers.silu_mul(np.zeros((3, 33), np.float32), np.zeros((3, 16), np.float32))
    with pytest.raises(ValueError, match="shape"):
        layers.silu_mul(np.zeros((3, 34), np.float32), np.zeros((3, 16), np.float32))
    # (these two checked the removed softmax kernel's arguments; the same checks on silu_mul's)
    with pytest.raises(ValueError, match="dtype"):
        layers.silu_mul(np.zeros((3, 6), np.float16), np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        layers.silu_mul(np.zeros((6, 3), np.float32).T, np.zeros((3, 3), np.float32))
