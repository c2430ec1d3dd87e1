"""Paged causal GQA kernel vs the numpy reference, on odd shapes and shuffled block tables."""

from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.references.attention import paged_attention as reference
from wicore.kernels.attention import paged_attention


class Batch:
    """A paged KV cache holding sequences of given lengths, and the query tokens of one forward pass."""

    def __init__(
        self,
        rng: np.random.Generator,
        seq_lens: list[int],
        n_heads: int,
        n_kv: int,
        head_dim: int,
        block_size: int,
    ) -> None:
        self.block_size = block_size
        need = [-(-n // block_size) for n in seq_lens]
        max_blocks = max(need) + 2  # spare columns stay -1: the kernel must never read them
        num_blocks = sum(need) + 5  # spare blocks, never attended to
        blocks = rng.permutation(num_blocks).astype(np.int32)  # shuffled, non-contiguous
        self.block_tables = np.full((len(seq_lens), max_blocks), -1, np.int32)
        start = 0
        for b, n in enumerate(need):
            self.block_tables[b, :n] = blocks[start : start + n]
            start += n
        shape = (num_blocks * block_size, n_kv, head_dim)
        self.k_cache = rng.standard_normal(shape, dtype=np.float32)
        self.v_cache = rng.standard_normal(shape, dtype=np.float32)
        self.n_heads = n_heads
        self.head_dim = head_dim
        self.rng = rng

    def queries(self, seq_pos: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """q, token_seq, token_pos for query tokens given as (sequence, position) pairs."""
        q = self.rng.standard_normal((len(seq_pos), self.n_heads, self.head_dim), dtype=np.float32)
        token_seq = np.array([s for s, _ in seq_pos], np.int32)
        token_pos = np.array([p for _, p in seq_pos], np.int32)
        return q, token_seq, token_pos

    def check(
        self, seq_pos: list[tuple[int, int]], sliding_window: int = 0, scale: float | None = None, atol: float = 1e-6
    ) -> None:
        q, token_seq, token_pos = self.queries(seq_pos)
        scale = 1 / np.sqrt(self.head_dim) if scale is None else scale
        out = np.full_like(q, np.nan)
        args = (self.k_cache, self.v_cache, self.block_tables, token_seq, token_pos)
        paged_attention(q, *args, out, self.block_size, scale, sliding_window)
        want = reference(q, *args, self.block_size, scale, sliding_window)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=atol)


SHAPES = [  # head_dim, n_heads, n_kv, block_size
    (5, 6, 2, 3),
    (33, 7, 7, 16),
    (64, 14, 2, 16),
    (33, 14, 2, 3),
]


@pytest.mark.parametrize(("head_dim", "n_heads", "n_kv", "block_size"), SHAPES)
def test_prefill(head_dim: int, n_heads: int, n_kv: int, block_size: int) -> None:
    batch = Batch(np.random.default_rng(0), [37], n_heads, n_kv, head_dim, block_size)
    batch.check([(0, p) for p in range(37)])


@pytest.mark.parametrize(("head_dim", "n_heads", "n_kv", "block_size"), SHAPES)
def test_decode_batch(head_dim: int, n_heads: int, n_kv: int, block_size: int) -> None:
    lens = [1, 19, 70, 151, 303]
    batch = Batch(np.random.default_rng(1), lens, n_heads, n_kv, head_dim, block_size)
    batch.check([(s, n - 1) for s, n in reversed(list(enumerate(lens)))])


@pytest.mark.parametrize(("head_dim", "n_heads", "n_kv", "block_size"), SHAPES)
def test_mixed_chunked_prefill_and_decode(head_dim: int, n_heads: int, n_kv: int, block_size: int) -> None:
    lens = [45, 9, 230]
    batch = Batch(np.random.default_rng(2), lens, n_heads, n_kv, head_dim, block_size)
    chunk = [(0, p) for p in range(20, 45)]  # sequence 0 prefills positions 20..44
    batch.check([(1, 8), *chunk, (2, 229)])


@pytest.mark.parametrize(("head_dim", "n_heads", "n_kv", "block_size"), SHAPES)
def test_float16_cache(head_dim: int, n_heads: int, n_kv: int, block_size: int) -> None:
    """The default KV cache holds float16: the kernel widens each row; the reference reads the same values."""
    lens = [45, 9, 230]
    batch = Batch(np.random.default_rng(4), lens, n_heads, n_kv, head_dim, block_size)
    batch.k_cache, batch.v_cache = batch.k_cache.astype(np.float16), batch.v_cache.astype(np.float16)
    batch.check([(1, 8), *[(0, p) for p in range(20, 45)], (2, 229)])


@pytest.mark.parametrize("sliding_window", [1, 7, 64])
def test_sliding_window(sliding_window: int) -> None:
    lens = [41, 130, 3]
    batch = Batch(np.random.default_rng(3), lens, 6, 2, 33, 3)
    batch.check([(1, 129), *[(0, p) for p in range(41)], (2, 2)], sliding_window)


def test_peaked_softmax() -> None:
    # Scores spread over tens of units: the running max jumps between tiles and most weights underflow.
    # float32 scores of size ~25 carry ~2e-6 absolute error, which exp turns into relative error.
    batch = Batch(np.random.default_rng(7), [200, 77], 14, 2, 64, 16)
    batch.check([(0, 199), *[(1, p) for p in range(60, 77)]], scale=1.0, atol=5e-6)


def test_long_prefill_uses_both_threads() -> None:
    # Big enough for the parallel path; positions run backwards and start mid-sequence.
    batch = Batch(np.random.default_rng(4), [300], 14, 2, 64, 16)
    batch.check([(0, p) for p in range(299, 100, -1)])


@pytest.mark.parametrize("sliding_window", [0, 1900])
def test_one_decode_token_split_between_threads(sliding_window: int) -> None:
    # One token, one kv head, long context: its keys are split between the workers, then merged.
    batch = Batch(np.random.default_rng(5), [2500], 5, 1, 64, 16)
    batch.check([(0, 2499)], sliding_window)


SMALL = Batch(np.random.default_rng(6), [5, 3], 6, 2, 5, 3)
Q, TOKEN_SEQ, TOKEN_POS = SMALL.queries([(0, 4), (1, 2)])


def valid_args() -> dict[str, object]:
    return {
        "q": Q,
        "k_cache": SMALL.k_cache,
        "v_cache": SMALL.v_cache,
        "block_tables": SMALL.block_tables,
        "token_seq": TOKEN_SEQ,
        "token_pos": TOKEN_POS,
        "out": np.zeros_like(Q),
        "block_size": SMALL.block_size,
        "scale": 0.125,
    }


def _table_entry_beyond_cache() -> np.ndarray:
    table = SMALL.block_tables.copy()
    table[1, 0] = len(SMALL.k_cache) // SMALL.block_size
    return table


f32 = np.float32
BAD_ARGUMENTS: dict[str, dict[str, object]] = {
    "out shape": {"out": np.zeros((2, 6, 4), f32)},
    "v_cache shape": {"v_cache": SMALL.v_cache[:-3]},
    "head_dim mismatch": {"k_cache": np.zeros((12, 2, 4), f32)},
    "token_pos length": {"token_pos": np.array([4], np.int32)},
    "heads not a multiple of kv heads": {"k_cache": np.zeros((12, 4, 5), f32), "v_cache": np.zeros((12, 4, 5), f32)},
    "q dtype": {"q": Q.astype(np.float64)},
    "kv dtypes differ": {"v_cache": SMALL.v_cache.astype(np.float16)},
    "block_tables dtype": {"block_tables": SMALL.block_tables.astype(np.int64)},
    "token_seq dtype": {"token_seq": TOKEN_SEQ.astype(np.int64)},
    "not contiguous": {"q": np.zeros((2, 12, 5), f32)[:, ::2]},
    "slots not whole blocks": {"k_cache": SMALL.k_cache[:-1], "v_cache": SMALL.v_cache[:-1]},
    "block_size": {"block_size": 0},
    "sliding_window": {"sliding_window": -1},
    "token_seq out of range": {"token_seq": np.array([0, 2], np.int32)},
    "token_pos negative": {"token_pos": np.array([-1, 2], np.int32)},
    "token_pos beyond table": {"token_pos": np.array([4, SMALL.block_tables.shape[1] * 3], np.int32)},
    "unused table entry": {"token_pos": np.array([4, 3], np.int32)},  # sequence 1 has one block, then -1
    "table entry beyond cache": {"block_tables": _table_entry_beyond_cache()},
}


def test_valid_small_arguments() -> None:
    args = valid_args()
    paged_attention(**args)
    want = reference(Q, SMALL.k_cache, SMALL.v_cache, SMALL.block_tables, TOKEN_SEQ, TOKEN_POS, SMALL.block_size, 0.125)
    np.testing.assert_allclose(args["out"], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_bad_arguments_raise(case: str) -> None:
    args = valid_args() | BAD_ARGUMENTS[case]
    before = args["out"].copy()
    with pytest.raises(ValueError):
        paged_attention(**args)
    np.testing.assert_array_equal(args["out"], before)  # nothing written
