"""Causal grouped-query attention over a paged KV cache (prefill, decode and mixed batches)."""

from __future__ import annotations

import numpy as np

from wicore.kernels import build
from wicore.kernels.checks import kernel_error, require
from wicore.kernels.pool import thread_pool

_F32 = np.dtype(np.float32)
_F16 = np.dtype(np.float16)
_I32 = np.dtype(np.int32)


def paged_attention(
    q: np.ndarray,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    block_tables: np.ndarray,
    token_seq: np.ndarray,
    token_pos: np.ndarray,
    out: np.ndarray,
    block_size: int,
    scale: float,
    sliding_window: int = 0,
) -> None:
    """out[t] = softmax(q[t] K^T * scale) V over keys 0..token_pos[t] of sequence token_seq[t].

    q, out: float32 [T, n_heads, head_dim]; k_cache, v_cache: float16 or float32 [num_slots, n_kv_heads, head_dim],
    the token at position p of sequence b in slot block_tables[b, p // block_size] * block_size
    + p % block_size; block_tables: int32 [B, max_blocks_per_seq]; token_seq, token_pos: int32 [T].
    Query head h reads kv head h // (n_heads // n_kv_heads).  sliding_window > 0 keeps only keys
    with token_pos - key_pos < sliding_window.
    """
    # require() without shapes, then plain tuple checks: its shape matching costs ~1 us per array.
    if k_cache.dtype not in (_F16, _F32) or v_cache.dtype != k_cache.dtype:
        raise ValueError(
            f"k_cache, v_cache: expected float16 or float32, both alike, got {k_cache.dtype}, {v_cache.dtype}"
        )
    for name, a, dtype in (
        ("q", q, _F32),
        ("k_cache", k_cache, k_cache.dtype),
        ("v_cache", v_cache, k_cache.dtype),
        ("block_tables", block_tables, _I32),
        ("token_seq", token_seq, _I32),
        ("token_pos", token_pos, _I32),
        ("out", out, _F32),
    ):
        require(a, dtype, name)
    if q.ndim != 3 or k_cache.ndim != 3 or block_tables.ndim != 2:
        raise ValueError(
            f"q, k_cache must be 3-d and block_tables 2-d, got {q.shape}, {k_cache.shape}, {block_tables.shape}"
        )
    n_tok, n_heads, head_dim = q.shape
    num_slots, n_kv, kv_dim = k_cache.shape
    if kv_dim != head_dim or v_cache.shape != k_cache.shape:
        raise ValueError(f"k_cache {k_cache.shape} and v_cache {v_cache.shape} must be [slots, n_kv, {head_dim}]")
    if token_seq.shape != (n_tok,) or token_pos.shape != (n_tok,) or out.shape != q.shape:
        raise ValueError(
            f"token_seq {token_seq.shape}, token_pos {token_pos.shape}, out {out.shape} must match q {q.shape}"
        )
    if head_dim == 0 or n_kv == 0 or n_heads % n_kv:
        raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv}), head_dim > 0")
    if block_size <= 0 or num_slots % block_size:
        raise ValueError(f"num_slots ({num_slots}) must be a multiple of block_size ({block_size}) > 0")
    if sliding_window < 0:
        raise ValueError(f"sliding_window must be >= 0, got {sliding_window}")
    if n_tok == 0:
        return
    n_seqs, max_blocks = block_tables.shape
    dims = (
        n_tok, n_heads, n_kv, head_dim, block_size, n_seqs, max_blocks, num_slots // block_size, sliding_window,
        thread_pool(), int(k_cache.dtype == _F16),
    )  # fmt: skip
    try:
        build.load("attention").paged_attention(
            q, k_cache, v_cache, block_tables, token_seq, token_pos, out, dims, float(scale)
        )
    except Exception as e:  # an index outside block_tables or the cache: nothing was written
        raise kernel_error(e) from None
