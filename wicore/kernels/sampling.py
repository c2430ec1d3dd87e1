"""Token sampling: one token per row of logits (Mojo module `sampling`).

Pipeline per row, as llama.cpp / vLLM: grammar mask (disallowed tokens to -inf) -> logit bias ->
repetition / frequency / presence penalties -> greedy argmax (temperature 0, ties to the lowest id), or temperature ->
top-k -> top-p -> min-p -> renormalise -> draw.  The draw uses a counter-based generator
(SplitMix64 of seed and step), so a row's tokens depend only on its seed and step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from wicore.kernels import build
from wicore.kernels.checks import kernel_error, require


class RowParams(NamedTuple):
    """How the kernel picks one row's token: a row of its float32 `params` array, in this order."""

    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 or -1 = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # over history: logit > 0 divided, < 0 multiplied
    frequency_penalty: float = 0.0  # over the generated part: logit -= count * frequency_penalty
    presence_penalty: float = 0.0  # over the generated part: logit -= presence_penalty if count > 0


PARAMS_WIDTH = 8  # the RowParams fields, then one unused float (sampling.mojo NPARAMS)

_NO_MASKS = np.zeros((0, 0), dtype=np.int32)
_workspaces: dict[int, np.ndarray] = {}  # per vocabulary size; the kernel runs holding the GIL


def _workspace(vocab: int) -> np.ndarray:
    ws = _workspaces.get(vocab)
    if ws is None:
        # zeroed: the kernel keeps its token counters at zero between calls
        ws = np.zeros(build.load("sampling").workspace_words((vocab,)), dtype=np.uint64)
        _workspaces[vocab] = ws
    return ws


def sample(
    logits: np.ndarray,
    params: np.ndarray,
    seeds: np.ndarray,
    steps: np.ndarray,
    history: np.ndarray,
    history_offsets: np.ndarray,
    output_start: np.ndarray,
    bias_ids: np.ndarray,
    bias_values: np.ndarray,
    bias_offsets: np.ndarray,
    out_tokens: np.ndarray,
    out_logprobs: np.ndarray,
    masks: np.ndarray | None = None,
    mask_rows: np.ndarray | None = None,
) -> None:
    """Sample one token per row of `logits` (float32 [B, V], masked, biased and penalised in place).

    params: float32 [B, PARAMS_WIDTH], rows of RowParams (pack_params builds it).
    seeds: uint64 [B] random stream per row; steps: int64 [B] token index, mixed into the draw.
    history: int32 [H], row b's tokens (prompt + generated) are history[history_offsets[b]:
    history_offsets[b + 1]], its generated ones from index output_start[b] of that slice.
    bias_ids / bias_values: int32 / float32 [L], row b's at bias_offsets[b]:bias_offsets[b + 1].
    out_tokens: int32 [B].  out_logprobs: float32 [B], log-softmax of the chosen token under the
    penalised, temperature-scaled distribution before truncation (temperature 0 counts as 1).
    masks: int32 [M, mask_words(V)] token bitmasks (llguidance's layout: token t allowed when bit
    t % 32 of word t // 32 is set); mask_rows: int32 [B], the mask of row b, or -1 for none (both
    None: no row is masked).  A masked row must allow at least one token.
    Truncation ranks tokens by logit (ties to the lower id); the draw walks the kept tokens in
    id order.  Rows with the same (seed, step, params, logits) give the same token in any batch.
    """
    require(logits, np.float32, "logits", (-1, -1))
    batch, vocab = logits.shape
    if vocab < 1 or vocab >= 2**31:
        raise ValueError(f"logits: vocabulary size {vocab} out of range")
    require(params, np.float32, "params", (batch, PARAMS_WIDTH))
    require(seeds, np.uint64, "seeds", (batch,))
    require(steps, np.int64, "steps", (batch,))
    require(history, np.int32, "history", (-1,))
    require(history_offsets, np.int32, "history_offsets", (batch + 1,))
    require(output_start, np.int32, "output_start", (batch,))
    require(bias_ids, np.int32, "bias_ids", (-1,))
    require(bias_values, np.float32, "bias_values", bias_ids.shape)
    require(bias_offsets, np.int32, "bias_offsets", (batch + 1,))
    require(out_tokens, np.int32, "out_tokens", (batch,))
    require(out_logprobs, np.float32, "out_logprobs", (batch,))
    if (masks is None) != (mask_rows is None):
        raise ValueError("masks: give masks and mask_rows together")
    if masks is None or mask_rows is None:
        masks, mask_rows = _NO_MASKS, np.full(batch, -1, dtype=np.int32)
    else:
        require(masks, np.int32, "masks", (-1, mask_words(vocab)))
        require(mask_rows, np.int32, "mask_rows", (batch,))
    if batch == 0:
        return
    ws = _workspace(vocab)
    dims = (batch, vocab, history.shape[0], bias_ids.shape[0], ws.shape[0], masks.shape[0])
    try:
        build.load("sampling").sample(
            logits, params, seeds, steps, history, history_offsets, output_start,
            bias_ids, bias_values, bias_offsets, out_tokens, out_logprobs, masks, mask_rows, ws, dims,
        )  # fmt: skip
    except Exception as e:  # an offset or token id out of range: no row was sampled
        raise kernel_error(e) from None


def mask_words(vocab: int) -> int:
    """32-bit words of one row's token bitmask for a vocabulary of `vocab` tokens."""
    return (vocab + 31) // 32


def pack_params(rows: Sequence[RowParams]) -> np.ndarray:
    """The kernel's float32 [B, PARAMS_WIDTH] params array for a batch of rows."""
    return np.array([(*r, 0.0) for r in rows], dtype=np.float32).reshape(len(rows), PARAMS_WIDTH)


def pack_ragged(rows: Sequence[Sequence[int] | np.ndarray], dtype: type = np.int32) -> tuple[np.ndarray, np.ndarray]:
    """Flatten per-row sequences into (values, int32 offsets [B + 1]), e.g. token histories."""
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    values = np.concatenate([np.asarray(r, dtype=dtype) for r in rows]) if rows else np.zeros(0, dtype)
    return values.astype(dtype, copy=False), offsets


def pack_logit_bias(biases: Sequence[Mapping[int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bias_ids int32 [L], bias_values float32 [L], bias_offsets int32 [B + 1]) for a batch of
    token id -> bias maps."""
    ids, offsets = pack_ragged([list(b) for b in biases])
    values, _ = pack_ragged([list(b.values()) for b in biases], np.float32)
    return ids, values, offsets


def top_logprobs(logits_row: np.ndarray, k: int, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The k most likely tokens of a float32 [V] row and their log-softmax (int32 ids, float32),
    most likely first (ties to the lower id).  Scales like the kernel, so for a row that went
    through `sample` with the same temperature the chosen token's value matches out_logprobs
    (to ~1e-6: the kernel sums a float32 exp)."""
    require(logits_row, np.float32, "logits_row", (-1,))
    k = min(k, logits_row.shape[0])
    if k <= 0:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
    inv_t = np.float32(1.0) / np.float32(temperature if temperature > 0 else 1.0)
    x = (logits_row - logits_row.max()) * inv_t
    log_z = np.log(np.exp(x).sum(dtype=np.float64))
    kth = np.partition(logits_row, logits_row.shape[0] - k)[logits_row.shape[0] - k]
    above = np.flatnonzero(logits_row > kth)
    ids = np.concatenate([above, np.flatnonzero(logits_row == kth)[: k - above.shape[0]]])
    ids = ids[np.lexsort((ids, -logits_row[ids]))]
    return ids.astype(np.int32), (x[ids].astype(np.float64) - log_z).astype(np.float32)
