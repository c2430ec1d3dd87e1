"""Plain numpy reference of the sampling kernel: the same pipeline, the same random numbers,
the same rounding of logits (float32, fma where the kernel uses one), float64 probabilities.
Sorts the whole vocabulary where the kernel selects; the kernel's exp is a float32 polynomial,
so its probabilities agree to ~1e-7 (a token could differ only at a boundary that close)."""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def uniform(seed: int, step: int) -> float:
    r = splitmix64(splitmix64(seed & MASK64) ^ (step & MASK64))
    return (r >> 11) * 2.0**-53


def rank_order(logits: np.ndarray) -> np.ndarray:
    """Token ids by logit descending, ties to the lower id (the kernel's sort keys)."""
    bits = (logits + np.float32(0)).view(np.uint32)  # -0.0 -> +0.0
    ordered = np.where(bits >> 31 == 1, ~bits, bits | np.uint32(0x80000000))
    keys = ((~ordered).astype(np.uint64) << np.uint64(32)) | np.arange(logits.shape[0], dtype=np.uint64)
    return np.argsort(keys)


def allowed(mask: np.ndarray, vocab: int) -> np.ndarray:
    """The bool [vocab] view of one row's token bitmask."""
    bits = np.unpackbits(mask.astype("<i4").view(np.uint8), bitorder="little")
    return bits[:vocab].astype(bool)


def fma32(a: float, b: float, c: float) -> np.float32:
    # a float32 product is exact in float64, so this rounds like a float32 fma
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


def sample_row(
    logits: np.ndarray,
    params: np.ndarray,
    seed: int,
    step: int,
    history: np.ndarray,
    output_start: int,
    bias_ids: np.ndarray,
    bias_values: np.ndarray,
    mask: np.ndarray | None = None,
) -> tuple[int, float]:
    """(token, logprob) for one float32 [V] row; params as one row of the kernel's [B, 8];
    mask: int32 words of the row's token bitmask (bit t % 32 of word t // 32), or None."""
    temperature, top_k, top_p, min_p, rep, freq, pres = (np.float32(v) for v in params[:7])
    lg = logits.astype(np.float32).copy()
    vocab = lg.shape[0]
    if mask is not None:
        lg[~allowed(mask, vocab)] = -np.inf
    for t, b in zip(bias_ids.tolist(), bias_values.tolist(), strict=True):
        lg[t] += np.float32(b)

    if rep != 1 or freq != 0 or pres != 0:
        hist = history.tolist()
        generated: dict[int, int] = {}
        for t in hist[output_start:]:
            generated[t] = generated.get(t, 0) + 1
        for t in dict.fromkeys(hist):  # each distinct token once
            v = lg[t]
            if rep != 1:
                v = v / rep if v > 0 else v * rep
            count = generated.get(t, 0)
            if count > 0:
                v = np.float32(v - fma32(count, freq, pres))
            lg[t] = v

    if temperature <= 0:
        token = int(np.argmax(lg))
        x = (lg - lg[token]).astype(np.float64)
        return token, float(-np.log(np.exp(x).sum()))

    m = lg.max()
    x = (lg - m) * (np.float32(1) / temperature)
    e = np.exp(x.astype(np.float64))
    z = e.sum()
    u = uniform(seed, step)
    # truncation keeps a prefix of the rank order; the draw walks the kept tokens in id order
    kept = np.ones(vocab, dtype=bool)
    k = int(top_k)
    if 0 < k < vocab or top_p < 1:
        order = rank_order(lg)
        n = k if 0 < k < vocab else vocab
        if top_p < 1:
            cum = np.cumsum(e[order[:n]])
            mass = cum[-1] if 0 < k < vocab else z
            reached = np.flatnonzero(cum >= np.float64(top_p) * mass)
            n = reached[0] + 1 if reached.size else n
        kept[:] = False
        kept[order[:n]] = True
    weights = np.where(kept & (e >= np.float64(min_p)), e, 0.0)
    cum = np.cumsum(weights)
    token = min(int(np.searchsorted(cum, u * cum[-1], side="right")), int(np.flatnonzero(weights)[-1]))
    return token, float(np.float64(x[token]) - np.log(z))


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
    masks: np.ndarray | None = None,
    mask_rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32 [B], logprobs float32 [B]) with the kernel's argument layout."""
    tokens = np.zeros(logits.shape[0], dtype=np.int32)
    logprobs = np.zeros(logits.shape[0], dtype=np.float32)
    for b in range(logits.shape[0]):
        h = history[history_offsets[b] : history_offsets[b + 1]]
        bias = slice(bias_offsets[b], bias_offsets[b + 1])
        mask = None if mask_rows is None or masks is None or mask_rows[b] < 0 else masks[mask_rows[b]]
        tokens[b], logprobs[b] = sample_row(
            logits[b], params[b], int(seeds[b]), int(steps[b]), h, int(output_start[b]),
            bias_ids[bias], bias_values[bias], mask,
        )  # fmt: skip
    return tokens, logprobs
