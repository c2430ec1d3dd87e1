"""Matmul kernel vs numpy, for every weight layout, on odd shapes; repack vs gguf's dequantiser."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize

from tests.helpers import model_path
from tests.references import matmul as ref
from wicore.kernels.matmul import matmul
from wicore.models.quant import DenseWeight, QuantWeight, concat_rows, repack

RNG = np.random.default_rng(1234)
# 9, 16, 17, 33: panel path with 4- and 3-row tiles (17 = 4 + 4 + 3 + 3 + 3).
M_SIZES = [1, 2, 5, 9, 13, 16, 17, 33, 37]


def _quant(n: int, k: int, group: int, with_min: bool) -> QuantWeight:
    return QuantWeight(
        q=RNG.integers(-32, 32, size=(n, k), dtype=np.int8),
        scale=RNG.uniform(0.001, 0.02, size=(n, k // group)).astype(np.float32),
        min=RNG.uniform(-0.1, 0.1, size=(n, k // group)).astype(np.float32) if with_min else None,
        group=group,
    )


def _check(x: np.ndarray, w, bias=None) -> None:
    got = matmul(x, w, bias=bias)
    want = ref.matmul(x, w, bias)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize("group,with_min", [(32, False), (32, True), (16, False), (16, True)])
@pytest.mark.parametrize("m", M_SIZES)
def test_quant_layouts_odd_shapes(group: int, with_min: bool, m: int) -> None:
    for n, k in [(1, group), (7, 3 * group), (131, 5 * group), (97, 29 * group)]:
        w = _quant(n, k, group, with_min)
        x = RNG.standard_normal((m, k)).astype(np.float32)
        _check(x, w)
        _check(x, w, bias=RNG.standard_normal(n).astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("m", M_SIZES)
def test_dense_odd_shapes(dtype: type, m: int) -> None:
    for n, k in [(1, 1), (3, 7), (67, 37), (129, 203)]:
        w = DenseWeight(RNG.standard_normal((n, k)).astype(dtype))
        x = RNG.standard_normal((m, k)).astype(np.float32)
        _check(x, w)


def test_large_parallel_shapes() -> None:
    # Big enough to run on every core, with panels that do not divide N.
    w = _quant(1153, 896, 32, False)
    for m in (1, 16, 17, 19):
        _check(RNG.standard_normal((m, 896)).astype(np.float32), w)


def test_fused_rows_keep_each_part_exact() -> None:
    parts = [_quant(5, 64, 32, False), _quant(3, 64, 16, False), _quant(4, 64, 32, True)]
    fused = concat_rows(parts)
    np.testing.assert_array_equal(fused.dequantize(), np.concatenate([p.dequantize() for p in parts]))


def test_bad_arguments_raise() -> None:
    w = _quant(8, 64, 32, False)
    with pytest.raises(ValueError, match="x: expected shape"):
        matmul(np.zeros((2, 63), np.float32), w)
    with pytest.raises(ValueError, match="x: expected dtype float32"):
        matmul(np.zeros((2, 64), np.float64), w)
    with pytest.raises(ValueError, match="C-contiguous"):
        matmul(np.zeros((64, 2), np.float32).T, w)
    with pytest.raises(ValueError, match="bias"):
        matmul(np.zeros((2, 64), np.float32), w, bias=np.zeros(7, np.float32))


@pytest.fixture(scope="module")
def qwen_tensors() -> dict[str, gguf.ReaderTensor]:
    reader = gguf.GGUFReader(model_path("qwen2.5-coder-0.5b-instruct"))
    return {t.name: t for t in reader.tensors}


@pytest.mark.parametrize(
    "name", ["blk.0.attn_q.weight", "blk.0.attn_v.weight", "blk.0.ffn_down.weight", "blk.11.ffn_down.weight"]
)
def test_repack_of_real_blocks_is_exact(qwen_tensors: dict, name: str) -> None:
    """Q5_0, Q8_0, Q6_K and Q4_K tensors of the real model against gguf's own dequantiser."""
    t = qwen_tensors[name]
    k, n = (int(d) for d in t.shape)
    rows = 37  # a slice keeps the test fast
    raw = np.asarray(t.data[:rows])
    w = repack(raw, t.tensor_type, (rows, k))
    np.testing.assert_array_equal(w.dequantize(), dequantize(raw, t.tensor_type).reshape(rows, k))
    _check(RNG.standard_normal((3, k)).astype(np.float32), w)
