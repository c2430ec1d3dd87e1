"""Matmul kernel vs numpy on odd shapes, for every weight format and every ISA path this host runs.

Quantised weights are random GGUF blocks run through the real repack; the reference
dequantises them with the repack's own numpy code, which is checked against gguf's
dequantiser on the real model's tensors.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize

from tests.helpers import model_path
from tests.kernels.references import matmul as ref
from wicore.kernels.matmul import matmul
from wicore.kernels.weights import DenseWeight, QuantWeight, SplitWeight, concat_rows
from wicore.models.quant import repack

RNG = np.random.default_rng(1234)
# x rows go 4 at a time (K-quants: 8, then 4, 3, 2, 1): every remainder after 0, 1 and several full
# blocks; dense: panel tiles.
M_SIZES = [1, 2, 5, 7, 8, 9, 14, 16, 17, 33]
# GGUF type -> (bytes per block, weights per block, byte offsets of float16 scales)
BLOCKS = {QT.Q8_0: (34, 32, (0,)), QT.Q5_0: (22, 32, (0,)), QT.Q6_K: (210, 256, (208,)), QT.Q4_K: (144, 256, (0, 2))}
# K values per block size; N 1, 7, 131: partial 16-row tiles.
K_SIZES = {32: [32, 96, 288, 896], 256: [256, 768]}


def random_blocks(qtype: QT, n: int, k: int) -> np.ndarray:
    """Raw GGUF data of an [n, k] tensor: random bytes with finite, model-sized float16 scales."""
    size, per, scale_at = BLOCKS[qtype]
    raw = RNG.integers(0, 256, size=(n * k // per, size), dtype=np.uint8)
    for at in scale_at:
        raw[:, at : at + 2] = RNG.uniform(0.0005, 0.02, size=(len(raw), 1)).astype(np.float16).view(np.uint8)
    return raw.reshape(n, -1)


def exact_int8_rows(m: int, k: int) -> np.ndarray:
    """x whose Q8_0 quantisation is exact (each block of 32 is a scale times integers reaching 127),
    so the int8 decode path and the float path must both match the reference to float rounding."""
    kp = -(-k // 32) * 32
    q = RNG.integers(-127, 128, size=(m, kp // 32, 32)).astype(np.float32)
    q[:, :, 0] = 127
    x = q * RNG.uniform(0.01, 1.0, size=(m, kp // 32, 1)).astype(np.float32)
    return np.ascontiguousarray(x.reshape(m, kp)[:, :k])


def _check(x: np.ndarray, w, bias=None, rtol: float = 1e-4) -> None:
    got = matmul(x, w, bias=bias)
    want = ref.matmul(x, w, bias)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(np.abs(want).max()))


@pytest.mark.parametrize("qtype", list(BLOCKS), ids=lambda t: t.name)
@pytest.mark.parametrize("m", M_SIZES)
def test_quant_formats_odd_shapes(isa: str, qtype: QT, m: int) -> None:
    for k in K_SIZES[BLOCKS[qtype][1]]:
        for n in (1, 7, 131):
            w = repack(random_blocks(qtype, n, k), qtype, (n, k))
            x = exact_int8_rows(m, k)
            _check(x, w)
            _check(x, w, bias=RNG.standard_normal(n).astype(np.float32))


@pytest.mark.parametrize("qtype", list(BLOCKS), ids=lambda t: t.name)
def test_decode_path_quantises_activations_like_q8_0(isa: str, qtype: QT) -> None:
    """Any x: rows go through int8 blocks of 32, as llama.cpp's Q8_0 activations."""
    k = 768
    w = repack(random_blocks(qtype, 97, k), qtype, (97, k))
    x = RNG.standard_normal((19, k)).astype(np.float32)
    got = matmul(x, w)
    want = ref.matmul(ref.quantize_q8_0(x), w)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("m", M_SIZES)
def test_dense_odd_shapes(isa: str, dtype: type, m: int) -> None:
    for n, k in [(1, 1), (3, 7), (67, 37), (129, 203)]:
        w = DenseWeight(RNG.standard_normal((n, k)).astype(dtype))
        x = RNG.standard_normal((m, k)).astype(np.float32)
        _check(x, w)


def test_large_parallel_shapes(isa: str) -> None:
    # Big enough to run on every core, with panels and thread shares that do not divide N.
    w = repack(random_blocks(QT.Q5_0, 1153, 896), QT.Q5_0, (1153, 896))
    for m in (1, 4, 16, 17, 19):
        _check(exact_int8_rows(m, 896), w)


def test_mixed_formats_split_and_write_side_by_side(isa: str) -> None:
    # Parts fuse where the first fills whole 16-row tiles: 16 + 3 rows of Q5_0, then 4 + 5 rows of Q8_0 apart.
    shapes = [(QT.Q5_0, 16), (QT.Q5_0, 3), (QT.Q8_0, 4), (QT.Q8_0, 5)]
    parts = [repack(random_blocks(t, n, 256), t, (n, 256)) for t, n in shapes]
    fused = concat_rows(parts)
    assert isinstance(fused, SplitWeight)
    assert [(p.fmt, p.shape[0]) for p in fused.parts] == [("q5_0", 19), ("q8_0", 4), ("q8_0", 5)]
    np.testing.assert_array_equal(fused.dequantize(), np.concatenate([p.dequantize() for p in parts]))
    for m in (1, 12):
        _check(exact_int8_rows(m, 256), fused, bias=RNG.standard_normal(28).astype(np.float32))


def test_bad_arguments_raise() -> None:
    w = repack(random_blocks(QT.Q8_0, 8, 64), QT.Q8_0, (8, 64))
    with pytest.raises(ValueError, match="x: expected shape"):
        matmul(np.zeros((2, 63), np.float32), w)
    with pytest.raises(ValueError, match="x: expected dtype float32"):
        matmul(np.zeros((2, 64), np.float64), w)
    with pytest.raises(ValueError, match="C-contiguous"):
        matmul(np.zeros((64, 2), np.float32).T, w)
    with pytest.raises(ValueError, match="bias"):
        matmul(np.zeros((2, 64), np.float32), w, bias=np.zeros(7, np.float32))
    with pytest.raises(ValueError, match="lo"):
        QuantWeight("q5_0", (8, 64), {"lo": np.zeros((8, 31), np.uint8), "hi": w.planes["qs"], "d": w.planes["d"]})


@pytest.fixture(scope="module")
def qwen_tensors() -> dict[str, gguf.ReaderTensor]:
    reader = gguf.GGUFReader(model_path("qwen2.5-coder-0.5b-instruct"))
    return {t.name: t for t in reader.tensors}


@pytest.mark.parametrize(
    "name", ["blk.0.attn_q.weight", "blk.0.attn_v.weight", "blk.0.ffn_down.weight", "blk.11.ffn_down.weight"]
)
def test_repack_of_real_blocks_is_exact_and_no_larger(qwen_tensors: dict, name: str) -> None:
    """Q5_0, Q8_0, Q6_K and Q4_K tensors of the real model against gguf's own dequantiser."""
    t = qwen_tensors[name]
    k, n = (int(d) for d in t.shape)
    rows = 48  # a slice keeps the test fast (whole tiles, so the size compares like for like)
    raw = np.asarray(t.data[:rows])
    w = repack(raw, t.tensor_type, (rows, k))
    np.testing.assert_array_equal(w.dequantize(), dequantize(raw, t.tensor_type).reshape(rows, k))
    # Q4_K's 6-bit sub-scales take a byte each: 0.578 bytes per weight instead of 0.5625.
    assert w.nbytes <= raw.nbytes * (1.03 if t.tensor_type == QT.Q4_K else 1.0)
    _check(exact_int8_rows(3, k), w)
