"""numpy reference for paged causal grouped-query attention (float64 internally)."""

from __future__ import annotations

import numpy as np


def paged_attention(
    q: np.ndarray,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    block_tables: np.ndarray,
    token_seq: np.ndarray,
    token_pos: np.ndarray,
    block_size: int,
    scale: float,
    sliding_window: int = 0,
) -> np.ndarray:
    """Gather each sequence's K/V by its block table, then masked softmax(q K^T * scale) V."""
    n_heads = q.shape[1]
    group = n_heads // k_cache.shape[1]
    out = np.zeros(q.shape, np.float64)
    for seq in np.unique(token_seq):
        rows = np.flatnonzero(token_seq == seq)
        pos = token_pos[rows].astype(np.int64)
        key_pos = np.arange(pos.max() + 1)
        slots = block_tables[seq, key_pos // block_size].astype(np.int64) * block_size + key_pos % block_size
        k = np.repeat(k_cache[slots].astype(np.float64), group, axis=1)  # [keys, n_heads, head_dim]
        v = np.repeat(v_cache[slots].astype(np.float64), group, axis=1)
        scores = np.einsum("thd,khd->thk", q[rows].astype(np.float64), k) * scale
        masked = key_pos[None, :] > pos[:, None]
        if sliding_window > 0:
            masked |= pos[:, None] - key_pos[None, :] >= sliding_window
        scores[np.broadcast_to(masked[:, None, :], scores.shape)] = -np.inf
        p = np.exp(scores - scores.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        out[rows] = np.einsum("thk,khd->thd", p, v)
    return out.astype(np.float32)
