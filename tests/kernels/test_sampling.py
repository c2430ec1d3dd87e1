"""Sampling kernel vs the numpy reference, and the properties each knob must have."""

from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.references import sampling as ref
from wicore.engine.sampling import SamplingParams
from wicore.kernels import sampling as ks

rng = np.random.default_rng(1234)


def make_batch(
    params: list[SamplingParams] | np.ndarray,
    logits: np.ndarray,
    histories: list[np.ndarray] | None = None,
    output_start: list[int] | None = None,
    seeds: np.ndarray | None = None,
    steps: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    batch = logits.shape[0]
    if isinstance(params, np.ndarray):
        p, bias = params, ks.pack_logit_bias([{}] * batch)
    else:
        p = ks.pack_params([sp.kernel_params() for sp in params])
        bias = ks.pack_logit_bias([sp.logit_bias for sp in params])
    history, offsets = ks.pack_ragged(histories if histories is not None else [[]] * batch)
    return {
        "logits": logits,
        "params": p,
        "seeds": seeds if seeds is not None else np.arange(batch, dtype=np.uint64) * 7919 + 17,
        "steps": steps if steps is not None else np.zeros(batch, dtype=np.int64),
        "history": history,
        "history_offsets": offsets,
        "output_start": np.array(output_start if output_start is not None else [0] * batch, dtype=np.int32),
        "bias_ids": bias[0],
        "bias_values": bias[1],
        "bias_offsets": bias[2],
    }


def run(args: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Kernel on a copy of the logits (it biases and penalises them in place)."""
    batch = args["logits"].shape[0]
    tokens, logprobs = np.zeros(batch, np.int32), np.zeros(batch, np.float32)
    ks.sample(**{**args, "logits": args["logits"].copy()}, out_tokens=tokens, out_logprobs=logprobs)
    return tokens, logprobs


def sample_one(
    row: np.ndarray, sp: SamplingParams, history: list[int] | None = None, output_start: int = 0, step: int = 0
) -> tuple[int, float]:
    """One float32 [V] row through the batch kernel: (token, logprob)."""
    args = make_batch(
        [sp], row.reshape(1, -1), histories=[np.array(history or [], np.int32)], output_start=[output_start],
        seeds=np.array([sp.seed], np.uint64), steps=np.array([step], np.int64),
    )  # fmt: skip
    tokens, logprobs = run(args)
    return int(tokens[0]), float(logprobs[0])


def tokens_of(params: list[SamplingParams], logits: np.ndarray, **kw: object) -> np.ndarray:
    return run(make_batch(params, logits, **kw))[0]


def random_params(count: int, vocab: int) -> list[SamplingParams]:
    """A mix of every knob, with greedy rows among them."""
    out = []
    for i in range(count):
        kind = i % 7
        bias = {int(t): float(rng.uniform(-5, 5)) for t in rng.choice(vocab, min(3, vocab), replace=False)}
        out.append(
            SamplingParams(
                temperature=[0.0, 1.0, 0.7, 1.3, 1.0, 0.5, 1.9][kind],
                top_k=[0, 40, 0, 5, -1, 1, 3000][kind],
                top_p=[1.0, 1.0, 0.9, 0.8, 1.0, 0.95, 0.99][kind],
                min_p=[0.0, 0.0, 0.0, 0.05, 0.1, 0.0, 0.02][kind],
                repetition_penalty=[1.0, 1.1, 1.0, 1.3, 0.9, 1.0, 1.2][kind],
                frequency_penalty=[0.0, 0.5, 0.0, -0.3, 0.0, 1.0, 0.1][kind],
                presence_penalty=[0.0, 0.2, 0.0, 0.5, 0.0, -1.0, 0.3][kind],
                logit_bias=bias if kind % 2 else {},
            )
        )
    return out


@pytest.mark.parametrize("vocab", [37, 1001, 151936])
@pytest.mark.parametrize("batch", [1, 3, 17])
def test_matches_reference(vocab: int, batch: int) -> None:
    logits = (rng.standard_normal((batch, vocab)) * 3).astype(np.float32)
    histories = [rng.integers(0, vocab, int(rng.integers(0, 40))).astype(np.int32) for _ in range(batch)]
    starts = [int(rng.integers(0, len(h) + 1)) for h in histories]
    args = make_batch(
        random_params(batch, vocab), logits, histories, starts,
        seeds=rng.integers(0, 2**64, batch, dtype=np.uint64), steps=rng.integers(0, 10**6, batch),
    )  # fmt: skip
    tokens, logprobs = run(args)
    want_tokens, want_logprobs = ref.sample(**args)
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_allclose(logprobs, want_logprobs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("vocab", [37, 1001])
def test_matches_reference_for_many_draws(vocab: int) -> None:
    # one logits row, many (seed, step) pairs: exercises every part of the draw
    batch = 200
    row = (rng.standard_normal(vocab) * 2).astype(np.float32)
    params = [
        SamplingParams(temperature=t, top_k=k, top_p=p, min_p=mp)
        for t, k, p, mp in [(1.0, 0, 1.0, 0.0), (0.8, 10, 0.9, 0.0), (1.2, 0, 0.7, 0.05), (1.0, 0, 1.0, 0.2)]
    ]
    for sp in params:
        args = make_batch(
            [sp] * batch, np.tile(row, (batch, 1)),
            seeds=rng.integers(0, 2**64, batch, dtype=np.uint64), steps=np.arange(batch),
        )  # fmt: skip
        tokens, logprobs = run(args)
        want_tokens, want_logprobs = ref.sample(**args)
        np.testing.assert_array_equal(tokens, want_tokens)
        np.testing.assert_allclose(logprobs, want_logprobs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("vocab", [37, 1001, 151936])
def test_greedy_is_argmax_with_ties_to_lowest_id(vocab: int) -> None:
    logits = rng.standard_normal((3, vocab)).astype(np.float32)
    logits[1, [vocab // 3, vocab - 1, 5]] = 50.0  # tie: the lowest id wins
    logits[2, vocab - 1] = 50.0  # in the scalar tail
    tokens, logprobs = run(make_batch([SamplingParams(temperature=0.0)] * 3, logits))
    np.testing.assert_array_equal(tokens, [int(np.argmax(logits[0])), 5, vocab - 1])
    x = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    np.testing.assert_allclose(logprobs, -np.log(np.exp(x).sum(axis=1)), atol=1e-5)


def test_seeds_reproduce_and_differ() -> None:
    logits = np.tile(rng.standard_normal(1001).astype(np.float32), (17, 1))
    params = [SamplingParams(temperature=1.0, top_p=0.95)] * 17
    seeds = np.full(17, 42, dtype=np.uint64)
    steps = np.arange(17, dtype=np.int64)
    first = tokens_of(params, logits, seeds=seeds, steps=steps)
    np.testing.assert_array_equal(first, tokens_of(params, logits, seeds=seeds, steps=steps))
    assert len(set(first.tolist())) > 1  # the step changes the draw
    other = tokens_of(params, logits, seeds=seeds + np.uint64(1), steps=steps)
    assert (first != other).any()


def test_row_result_independent_of_batch_composition() -> None:
    vocab = 1001
    logits = (rng.standard_normal((5, vocab)) * 2).astype(np.float32)
    params = random_params(5, vocab)
    seeds = rng.integers(0, 2**64, 5, dtype=np.uint64)
    steps = rng.integers(0, 100, 5)
    together = tokens_of(params, logits, seeds=seeds, steps=steps)
    order = [3, 0, 4, 1, 2]
    shuffled = tokens_of([params[i] for i in order], logits[order], seeds=seeds[order], steps=steps[order])
    np.testing.assert_array_equal(shuffled, together[order])
    for i in range(5):
        alone = tokens_of([params[i]], logits[i : i + 1], seeds=seeds[i : i + 1], steps=steps[i : i + 1])
        assert alone[0] == together[i]


@pytest.mark.parametrize("vocab", [37, 151936])
def test_truncation_to_one_token_is_greedy(vocab: int) -> None:
    logits = rng.standard_normal((9, vocab)).astype(np.float32)
    expect = np.argmax(logits, axis=1)
    for sp in [
        SamplingParams(temperature=1.5, top_k=1),
        SamplingParams(temperature=1.5, top_p=1e-6),
        SamplingParams(temperature=1.5, min_p=1.0),
    ]:
        np.testing.assert_array_equal(tokens_of([sp] * 9, logits, seeds=np.arange(9, dtype=np.uint64)), expect)


def test_top_k_and_min_p_only_pick_allowed_tokens() -> None:
    vocab, batch = 1001, 300
    row = rng.standard_normal(vocab).astype(np.float32)
    logits = np.tile(row, (batch, 1))
    seeds = np.arange(batch, dtype=np.uint64)
    top5 = set(np.argsort(-row)[:5].tolist())
    picked = tokens_of([SamplingParams(temperature=2.0, top_k=5)] * batch, logits, seeds=seeds)
    assert set(picked.tolist()) == top5
    p = np.exp(row - row.max())
    allowed = set(np.flatnonzero(p >= 0.5).tolist())
    picked = tokens_of([SamplingParams(temperature=1.0, min_p=0.5)] * batch, logits, seeds=seeds)
    assert set(picked.tolist()) <= allowed and len(set(picked.tolist())) > 1


def test_top_p_keeps_the_smallest_nucleus() -> None:
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.75 keeps exactly the first two
    probs = np.array([0.05, 0.5, 0.15, 0.3], dtype=np.float64)
    row = np.log(probs).astype(np.float32)
    batch = 400
    picked = tokens_of(
        [SamplingParams(top_p=0.75)] * batch, np.tile(row, (batch, 1)), seeds=np.arange(batch, dtype=np.uint64)
    )
    assert set(picked.tolist()) == {1, 3}
    assert abs(np.mean(picked == 1) - 0.5 / 0.8) < 0.08


def test_penalties_shift_the_choice() -> None:
    row = np.zeros(37, dtype=np.float32)
    row[[3, 4]] = [2.0, 1.8]  # token 3 leads by 0.2
    greedy = np.tile(row, (1, 1))

    def pick(history: list[int], start: int, **kw: float) -> int:
        params = [SamplingParams(temperature=0.0, **kw)]
        return int(tokens_of(params, greedy, histories=[np.array(history)], output_start=[start])[0])

    assert pick([3], 0) == 3
    assert pick([3], 0, repetition_penalty=1.2) == 4  # 2.0 / 1.2 < 1.8
    assert pick([3, 3, 3], 0, repetition_penalty=1.05) == 3  # applied once per distinct token
    assert pick([3], 1, frequency_penalty=0.5) == 3  # in the prompt only: no frequency penalty
    assert pick([3], 0, frequency_penalty=0.5) == 4
    assert pick([3], 0, presence_penalty=0.5) == 4
    assert pick([4, 4, 4], 0, frequency_penalty=-0.1) == 4  # negative: encourages, 1.8 + 0.3 > 2.0
    assert pick([4, 4, 4], 0, presence_penalty=-0.1) == 3  # presence counts once


def test_negative_logit_repetition_is_multiplied() -> None:
    row = np.full(37, -5.0, dtype=np.float32)
    row[[7, 8]] = [-1.0, -1.1]
    params = [SamplingParams(temperature=0.0, repetition_penalty=1.2)]
    assert tokens_of(params, row[None], histories=[np.array([7])])[0] == 8  # -1.2 < -1.1


def test_logit_bias_bans_and_forces() -> None:
    vocab, batch = 37, 200
    logits = np.tile(rng.standard_normal(vocab).astype(np.float32), (batch, 1))
    top = int(np.argmax(logits[0]))
    seeds = np.arange(batch, dtype=np.uint64)
    banned = tokens_of([SamplingParams(logit_bias={top: -100.0})] * batch, logits, seeds=seeds)
    assert top not in banned.tolist()
    forced = tokens_of([SamplingParams(temperature=2.0, logit_bias={11: 100.0})] * batch, logits, seeds=seeds)
    assert (forced == 11).all()


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_frequencies_match_softmax(temperature: float) -> None:
    vocab, draws = 7, 20000
    row = np.array([0.3, -1.0, 1.2, 0.0, -0.4, 0.9, -2.0], dtype=np.float32)
    counts = np.bincount(
        tokens_of(
            [SamplingParams(temperature=temperature)] * draws,
            np.tile(row, (draws, 1)),
            seeds=rng.integers(0, 2**64, draws, dtype=np.uint64),
            steps=np.arange(draws),
        ),
        minlength=vocab,
    )
    x = row.astype(np.float64) / temperature
    expected = draws * np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.9  # the 99.99% quantile of chi-square with 6 degrees of freedom


def test_logprob_is_under_the_tempered_untruncated_distribution() -> None:
    vocab = 1001
    row = (rng.standard_normal(vocab) * 2).astype(np.float32)
    sp = SamplingParams(temperature=0.7, top_k=20, seed=5)
    token, logprob = sample_one(row, sp)
    ids, lps = ks.top_logprobs(row, 20, temperature=0.7)
    assert token in ids.tolist()
    assert lps[ids.tolist().index(token)] == pytest.approx(logprob, abs=1e-5)
    x = row.astype(np.float64) / 0.7
    log_softmax = x - x.max() - np.log(np.exp(x - x.max()).sum())
    np.testing.assert_array_equal(ids, np.argsort(-row, kind="stable")[:20])
    np.testing.assert_allclose(lps, log_softmax[ids], atol=1e-5)


def test_top_logprobs_ties_and_edges() -> None:
    row = np.array([1.0, 3.0, 3.0, 0.5, 3.0], dtype=np.float32)
    ids, _ = ks.top_logprobs(row, 2)
    np.testing.assert_array_equal(ids, [1, 2])
    ids, lps = ks.top_logprobs(row, 10)
    np.testing.assert_array_equal(ids, [1, 2, 4, 0, 3])
    assert np.exp(lps.astype(np.float64)).sum() == pytest.approx(1.0, abs=1e-6)
    assert ks.top_logprobs(row, 0)[0].shape == (0,)


def test_sample_one_matches_batch_and_reference() -> None:
    row = rng.standard_normal(1001).astype(np.float32)
    sp = SamplingParams(temperature=0.9, top_p=0.9, repetition_penalty=1.3, seed=99, logit_bias={4: 3.0})
    history = [4, 10, 10, 500]
    token, logprob = sample_one(row, sp, history, output_start=2, step=7)
    bias = ks.pack_logit_bias([sp.logit_bias])
    want = ref.sample_row(row, ks.pack_params([sp.kernel_params()])[0], 99, 7, np.array(history), 2, bias[0], bias[1])
    assert token == want[0]
    assert logprob == pytest.approx(want[1], abs=1e-4)


def test_flat_and_peaked_nucleus() -> None:
    vocab = 151936
    flat = np.zeros((1, vocab), dtype=np.float32)  # every token in the nucleus
    peaked = np.full((1, vocab), -30.0, dtype=np.float32)
    peaked[0, 1234] = 0.0
    for logits in (flat, peaked):
        args = make_batch([SamplingParams(top_p=0.9)], logits, seeds=np.array([3], dtype=np.uint64))
        tokens, logprobs = run(args)
        want_tokens, want_logprobs = ref.sample(**args)
        np.testing.assert_array_equal(tokens, want_tokens)
        np.testing.assert_allclose(logprobs, want_logprobs, atol=1e-4)


def test_large_truncations_match_reference() -> None:
    # nuclei of ~10^5 tokens (threshold bisection), top-k beyond the short-list draw
    vocab, batch = 151936, 8
    logits = rng.standard_normal((batch, vocab)).astype(np.float32)
    params = [
        SamplingParams(temperature=1.0, top_p=0.9),
        SamplingParams(temperature=1.0, top_k=5000),
        SamplingParams(temperature=1.5, top_k=20000, top_p=0.95),
        SamplingParams(temperature=0.5, top_p=0.5, min_p=0.01),
    ] * 2
    args = make_batch(params, logits, seeds=rng.integers(0, 2**64, batch, dtype=np.uint64))
    tokens, logprobs = run(args)
    want_tokens, want_logprobs = ref.sample(**args)
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_allclose(logprobs, want_logprobs, atol=1e-4)


def test_kernel_rejects_bad_arguments() -> None:
    logits = np.zeros((2, 37), dtype=np.float32)
    args = make_batch([SamplingParams()] * 2, logits, histories=[np.array([1]), np.array([37])])
    with pytest.raises(ValueError, match="history token id 37"):
        run(args)
    args = make_batch([SamplingParams(logit_bias={40: 1.0})] * 2, logits)
    with pytest.raises(ValueError, match="logit_bias token id 40"):
        run(args)
    args = make_batch([SamplingParams()] * 2, logits, output_start=[0, 1])
    with pytest.raises(ValueError, match="output_start"):
        run(args)
    args = make_batch([SamplingParams()] * 2, logits)
    with pytest.raises(ValueError, match="params"):
        run({**args, "params": args["params"].astype(np.float64)})
    with pytest.raises(ValueError, match="history_offsets"):
        run({**args, "history_offsets": np.array([0, 1, 0], dtype=np.int32)})


def random_masks(count: int, vocab: int, density: float) -> np.ndarray:
    """int32 [count, mask_words] bitmasks with about `density` of the tokens allowed, at least one."""
    allowed = rng.random((count, vocab)) < density
    allowed[np.arange(count), rng.integers(0, vocab, count)] = True
    padded = np.zeros((count, ks.mask_words(vocab) * 32), dtype=bool)
    padded[:, :vocab] = allowed
    return np.packbits(padded, axis=1, bitorder="little").view("<i4").astype(np.int32)


@pytest.mark.parametrize("vocab", [37, 1001, 151936])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.6])
def test_masked_rows_match_reference(isa: str, vocab: int, density: float) -> None:
    # masked and unmasked rows in one batch; vocabularies that are not a multiple of 32
    batch = 9
    logits = (rng.standard_normal((batch, vocab)) * 3).astype(np.float32)
    histories = [rng.integers(0, vocab, int(rng.integers(0, 20))).astype(np.int32) for _ in range(batch)]
    args = make_batch(
        random_params(batch, vocab), logits, histories,
        seeds=rng.integers(0, 2**64, batch, dtype=np.uint64), steps=rng.integers(0, 10**6, batch),
    )  # fmt: skip
    masks = random_masks(4, vocab, density)
    args["masks"] = masks
    args["mask_rows"] = np.array([0, -1, 1, 2, -1, 3, 0, -1, 1], dtype=np.int32)
    tokens, logprobs = run(args)
    want_tokens, want_logprobs = ref.sample(**args)
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_allclose(logprobs, want_logprobs, rtol=0, atol=1e-4)
    for b, row in enumerate(args["mask_rows"].tolist()):
        if row >= 0:
            assert ref.allowed(masks[row], vocab)[tokens[b]]


@pytest.mark.parametrize("vocab", [37, 1001, 151939])
def test_masked_tokens_are_never_sampled(isa: str, vocab: int) -> None:
    # the widest distribution (temperature 1, no truncation), masked tokens given the largest logits
    batch = 64
    masks = random_masks(1, vocab, 0.02)
    allowed = ref.allowed(masks[0], vocab)
    logits = rng.standard_normal((batch, vocab)).astype(np.float32)
    logits[:, ~allowed] += 20.0
    args = make_batch(
        [SamplingParams(temperature=1.0, top_k=0, top_p=1.0)] * batch, logits,
        seeds=rng.integers(0, 2**64, batch, dtype=np.uint64), steps=np.arange(batch),
    )  # fmt: skip
    args["masks"] = masks
    args["mask_rows"] = np.zeros(batch, dtype=np.int32)
    tokens, logprobs = run(args)
    assert allowed[tokens].all()
    assert np.isfinite(logprobs).all()
    # the logprob is under the masked distribution: the allowed tokens' probabilities sum to 1
    x = logits[0].astype(np.float64)
    log_z = np.log(np.exp(x[allowed] - x[allowed].max()).sum()) + x[allowed].max()
    assert logprobs[0] == pytest.approx(x[tokens[0]] - log_z, abs=1e-4)


def test_mask_arguments_are_checked(isa: str) -> None:
    logits = np.zeros((2, 37), dtype=np.float32)
    args = make_batch([SamplingParams()] * 2, logits)
    masks = np.full((1, 2), -1, dtype=np.int32)
    with pytest.raises(ValueError, match="mask_rows"):
        run({**args, "masks": masks, "mask_rows": np.array([0, 1], dtype=np.int32)})
    with pytest.raises(ValueError, match="masks"):
        run({**args, "masks": np.full((1, 3), -1, dtype=np.int32), "mask_rows": np.zeros(2, dtype=np.int32)})
    with pytest.raises(ValueError, match="masks"):
        run({**args, "masks": masks})
