"""Encoder kernels vs the numpy references on odd shapes, including the threaded sizes."""

from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.references import encoder as ref
from wicore.kernels import encoder

# (M, K): one row, SIMD tails, BERT's width, and 449 x 901, big enough to split over threads.
ROW_SHAPES = [(1, 7), (3, 33), (17, 384), (449, 901)]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(4321)


def _f32(rng: np.random.Generator, *shape: int, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale + shift).astype(np.float32)


@pytest.mark.parametrize("m,k", ROW_SHAPES)
def test_layer_norm(rng: np.random.Generator, m: int, k: int) -> None:
    x = _f32(rng, m, k, scale=3.0, shift=0.5)
    w, b = _f32(rng, k), _f32(rng, k)
    out = np.full((m, k), np.nan, np.float32)
    x_before = x.copy()
    encoder.layer_norm(x, w, b, 1e-12, out)
    np.testing.assert_allclose(out, ref.layer_norm(x, w, b, 1e-12), rtol=1e-5, atol=2e-6)
    np.testing.assert_array_equal(x, x_before)


def test_layer_norm_large_mean_and_eps(rng: np.random.Generator) -> None:
    # A large offset against a small spread: a one-pass E[x^2] - mean^2 would lose every digit here.
    x = _f32(rng, 5, 33, scale=1e-2, shift=30.0)
    w, b = _f32(rng, 33), _f32(rng, 33)
    out = np.empty_like(x)
    encoder.layer_norm(x, w, b, 1e-12, out)
    np.testing.assert_allclose(out, ref.layer_norm(x, w, b, 1e-12), rtol=1e-3, atol=1e-3)
    tiny = _f32(rng, 3, 33, scale=1e-4)
    expected = ref.layer_norm(tiny, w, b, 1e-2)
    encoder.layer_norm(tiny, w, b, 1e-2, tiny)
    np.testing.assert_allclose(tiny, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("m,k", [(3, 33), (449, 901)])
def test_layer_norm_in_place(rng: np.random.Generator, m: int, k: int) -> None:
    x = _f32(rng, m, k)
    w, b = _f32(rng, k), _f32(rng, k)
    expected = ref.layer_norm(x, w, b, 1e-5)
    encoder.layer_norm(x, w, b, 1e-5, x)
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("m,k", ROW_SHAPES)
def test_add_layer_norm(rng: np.random.Generator, m: int, k: int) -> None:
    x, delta = _f32(rng, m, k), _f32(rng, m, k, scale=2.0)
    w, b = _f32(rng, k), _f32(rng, k)
    expected = ref.layer_norm(x + delta, w, b, 1e-12)
    out = np.full((m, k), np.nan, np.float32)
    x_before, delta_before = x.copy(), delta.copy()
    encoder.add_layer_norm(x, delta, w, b, 1e-12, out)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=2e-6)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(delta, delta_before)
    # In place, as the BERT forward pass uses it: x = layer_norm(x + delta).
    encoder.add_layer_norm(x, delta, w, b, 1e-12, x)
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 33), (61, 1537), (3, 5, 7)])
def test_gelu(rng: np.random.Generator, shape: tuple[int, ...]) -> None:
    x = _f32(rng, *shape, scale=3.0)
    out = np.full(shape, np.nan, np.float32)
    encoder.gelu(x, out)
    np.testing.assert_allclose(out, ref.gelu(x), rtol=2e-6, atol=2e-7)


def test_gelu_in_place_and_extremes() -> None:
    x = np.array([-40.0, -8.0, -3.0, -1e-3, 0.0, 1e-3, 0.5, 3.0, 8.0, 40.0, -0.0], dtype=np.float32)
    expected = ref.gelu(x)
    encoder.gelu(x, x)
    np.testing.assert_allclose(x, expected, rtol=2e-6, atol=1e-7)
    assert x[0] == 0.0 and x[-2] == 40.0


def _lengths(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int32)


@pytest.mark.parametrize(
    "lengths,s,h,d",
    [
        ((1,), 1, 1, 1),
        ((5,), 5, 3, 7),  # D below one SIMD register
        ((13, 1, 9), 13, 5, 33),  # SIMD tail in D, a one-token sequence
        ((21, 17, 4, 20, 19), 21, 12, 32),  # MiniLM's heads
        ((97, 61, 88), 97, 3, 64),  # enough work to split over threads
    ],
)
def test_attention(rng: np.random.Generator, lengths: tuple[int, ...], s: int, h: int, d: int) -> None:
    lens = _lengths(*lengths)
    qkv = _f32(rng, len(lengths), s, 3, h, d, scale=1.5)
    out = np.full((len(lengths), s, h, d), np.nan, np.float32)
    encoder.attention(qkv, lens, out)
    np.testing.assert_allclose(out, ref.attention(qkv, lens), rtol=2e-5, atol=2e-6)


def test_attention_ignores_padding(rng: np.random.Generator) -> None:
    # The same sequence alone and beside a longer one, with garbage in its padding.
    qkv = _f32(rng, 2, 11, 3, 3, 9)
    qkv[1, 6:] = 1e4
    lens = _lengths(11, 6)
    out = np.empty((2, 11, 3, 9), np.float32)
    encoder.attention(qkv, lens, out)
    alone = np.empty((1, 6, 3, 9), np.float32)
    encoder.attention(np.ascontiguousarray(qkv[1:, :6]), _lengths(6), alone)
    np.testing.assert_array_equal(out[1, :6], alone[0])
    assert not out[1, 6:].any()


def test_attention_scale_and_empty_sequence(rng: np.random.Generator) -> None:
    qkv = _f32(rng, 2, 7, 3, 2, 5)
    lens = _lengths(7, 0)
    out = np.full((2, 7, 2, 5), np.nan, np.float32)
    encoder.attention(qkv, lens, out, scale=0.3)
    np.testing.assert_allclose(out, ref.attention(qkv, lens, scale=0.3), rtol=2e-5, atol=2e-6)
    assert not out[1].any()


@pytest.mark.parametrize("lengths,s,e", [((1,), 1, 7), ((5, 1, 3), 5, 33), ((67, 40, 1, 66), 67, 384)])
def test_mean_pool(rng: np.random.Generator, lengths: tuple[int, ...], s: int, e: int) -> None:
    lens = _lengths(*lengths)
    x = _f32(rng, len(lengths), s, e)
    out = np.full((len(lengths), e), np.nan, np.float32)
    encoder.mean_pool(x, lens, out)
    np.testing.assert_allclose(out, ref.mean_pool(x, lens), rtol=1e-5, atol=1e-6)


def test_mean_pool_empty_sequence_is_zero(rng: np.random.Generator) -> None:
    x = _f32(rng, 2, 3, 9)
    out = np.full((2, 9), np.nan, np.float32)
    encoder.mean_pool(x, _lengths(3, 0), out)
    assert not out[1].any()


@pytest.mark.parametrize("m,n", ROW_SHAPES)
def test_l2_normalize(rng: np.random.Generator, m: int, n: int) -> None:
    x = _f32(rng, m, n, scale=5.0)
    out = np.full((m, n), np.nan, np.float32)
    encoder.l2_normalize(x, out)
    np.testing.assert_allclose(out, ref.l2_normalize(x), rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    encoder.l2_normalize(x, x)
    np.testing.assert_array_equal(x, out)


def test_l2_normalize_zero_row_stays_zero() -> None:
    x = np.zeros((2, 9), np.float32)
    x[1, 3] = -2.0
    encoder.l2_normalize(x, x)
    assert not x[0].any() and x[1, 3] == -1.0


def test_checks_reject_bad_arguments(rng: np.random.Generator) -> None:
    x = _f32(rng, 3, 8)
    w, b = _f32(rng, 8), _f32(rng, 8)
    with pytest.raises(ValueError, match="weight: expected shape"):
        encoder.layer_norm(x, _f32(rng, 7), b, 1e-12, x)
    with pytest.raises(ValueError, match="out: expected dtype"):
        encoder.layer_norm(x, w, b, 1e-12, x.astype(np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        encoder.add_layer_norm(x, _f32(rng, 3, 16)[:, ::2], w, b, 1e-12, x)
    qkv = _f32(rng, 2, 4, 3, 2, 5)
    out = np.empty((2, 4, 2, 5), np.float32)
    with pytest.raises(ValueError, match=r"lengths: every length must be in \[0, 4\]"):
        encoder.attention(qkv, _lengths(4, 5), out)
    with pytest.raises(ValueError, match="lengths: expected dtype int32"):
        encoder.attention(qkv, np.array([4, 4]), out)
    with pytest.raises(ValueError, match=r"qkv: expected shape \(B, S, 3, H, D\)"):
        encoder.attention(_f32(rng, 2, 4, 2, 2, 5), _lengths(4, 4), out)
    read_only = np.empty((2, 5), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        encoder.mean_pool(_f32(rng, 2, 4, 5), _lengths(1, 2), read_only)
