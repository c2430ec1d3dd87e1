"""Turns a scheduled batch of sequences into one forward pass, then samples their next tokens."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from wicore.engine.grammar import GrammarGuide
from wicore.engine.sequence import Sequence
from wicore.kernels.sampling import pack_logit_bias, pack_params, pack_ragged, sample, top_logprobs
from wicore.models.kv_cache import KVCache
from wicore.models.transformer import ForwardBatch, Transformer


class Sample(NamedTuple):
    """The token drawn for one sequence, its logprob and, when asked for, the top alternatives."""

    token: int
    logprob: float
    top_logprobs: list[tuple[int, float]] | None
    grammar_done: bool = False  # the token ends a constrained sequence (its grammar is complete or broken)


class PromptScores(NamedTuple):
    """Logprobs of a run of one sequence's prompt tokens, each given the tokens before it (the model's own
    distribution: temperature 1, no penalties), with the top alternatives when asked for."""

    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]]


class Step(NamedTuple):
    samples: list[Sample]  # one per sequence that reached its end, in `work` order
    prompt_scores: dict[int, PromptScores]  # by index in `work`: prompt tokens scored this step


class ModelRunner:
    """Executes what the scheduler planned: one forward pass, then sampling.  It changes no sequence
    but for advancing the grammar matchers of constrained ones by the tokens drawn."""

    def __init__(self, model: Transformer, kv: KVCache, guide: GrammarGuide) -> None:
        self.model = model
        self.kv = kv
        self.guide = guide

    def execute(self, work: list[tuple[Sequence, int]]) -> Step:
        """Run `n` not-yet-computed tokens of each (sequence, n); sample for those that reach their end,
        and score the prompt tokens of sequences that asked for prompt logprobs.

        Block tables must already hold the tokens (the scheduler grows them).
        """
        sampled = [seq for seq, n in work if seq.num_computed + n == seq.num_tokens]
        masks = self.guide.start_masks(sampled)  # computed while the forward pass runs
        batch, scored = self._batch(work)
        logits = self.model.forward(batch, self.kv)
        # The sampling rows come first, so they are a contiguous block the kernel can take as it is.
        prompt_scores = self._score_prompts(work, scored, logits[len(sampled) :])
        if not sampled:
            return Step([], prompt_scores)
        tokens, logprobs = self._sample(sampled, logits[: len(sampled)], None if masks is None else masks.result())
        samples = []
        for row, (seq, tok, lp) in enumerate(zip(sampled, tokens.tolist(), logprobs.tolist(), strict=True)):
            top = None
            if seq.params.logprobs:
                # The row as the sampler left it (mask, bias and penalties applied), scaled the same way.
                ids, lps = top_logprobs(logits[row], seq.params.logprobs, seq.params.temperature)
                top = list(zip(ids.tolist(), lps.tolist(), strict=True))
            samples.append(Sample(tok, lp, top, self.guide.advance(seq, tok)))
        return Step(samples, prompt_scores)

    def _batch(self, work: list[tuple[Sequence, int]]) -> tuple[ForwardBatch, dict[int, tuple[int, int]]]:
        """The forward pass's inputs, and per work index the prompt positions [q0, q1) whose logits score
        the next prompt token (only for sequences asking for prompt logprobs, each position once)."""
        bs = self.kv.block_size
        tokens, positions, token_seq, sample_rows, score_rows = [], [], [], [], []
        scored: dict[int, tuple[int, int]] = {}
        width = max(len(seq.block_table) for seq, _ in work)
        tables = np.zeros((len(work), width), dtype=np.int32)
        for row, (seq, n) in enumerate(work):
            start = seq.num_computed
            if seq.params.prompt_logprobs is not None:
                # Position q scores prompt token q + 1; tokens 1..len(prompt_logprobs) are scored already
                # (a recompute after preemption runs them again).
                q0 = max(start, len(seq.prompt_logprobs))
                q1 = min(start + n, len(seq.prompt_ids) - 1)
                if q1 > q0:
                    scored[row] = (q0, q1)
                    score_rows += range(len(tokens) + q0 - start, len(tokens) + q1 - start)
            tokens += seq.token_ids[start : start + n]
            positions += range(start, start + n)
            token_seq += [row] * n
            tables[row, : len(seq.block_table)] = seq.block_table
            if start + n == seq.num_tokens:
                sample_rows.append(len(tokens) - 1)
        pos = np.array(positions, dtype=np.int32)
        seq_rows = np.array(token_seq, dtype=np.int32)
        slots = tables[seq_rows, pos // bs].astype(np.int64) * bs + pos % bs
        batch = ForwardBatch(
            tokens=np.array(tokens, dtype=np.int64),
            positions=pos,
            token_seq=seq_rows,
            slots=slots,
            block_tables=tables,
            logits_rows=np.array(sample_rows + score_rows, dtype=np.int64),
        )
        return batch, scored

    @staticmethod
    def _score_prompts(
        work: list[tuple[Sequence, int]], scored: dict[int, tuple[int, int]], logits: np.ndarray
    ) -> dict[int, PromptScores]:
        out: dict[int, PromptScores] = {}
        row = 0
        for k, (q0, q1) in scored.items():
            seq = work[k][0]
            rows = logits[row : row + q1 - q0]
            row += q1 - q0
            targets = np.array(seq.prompt_ids[q0 + 1 : q1 + 1])
            shifted = rows - rows.max(axis=1, keepdims=True)
            log_z = np.log(np.exp(shifted).sum(axis=1, dtype=np.float64))
            logprobs = shifted[np.arange(len(targets)), targets] - log_z
            top: list[list[tuple[int, float]]] = []
            if seq.params.prompt_logprobs:
                for r in rows:
                    ids, lps = top_logprobs(np.ascontiguousarray(r), seq.params.prompt_logprobs)
                    top.append(list(zip(ids.tolist(), lps.tolist(), strict=True)))
            else:
                top = [[] for _ in targets]
            out[k] = PromptScores(logprobs.tolist(), top)
        return out

    @staticmethod
    def _sample(
        seqs: list[Sequence], logits: np.ndarray, masks: tuple[np.ndarray, np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        params = [seq.params for seq in seqs]
        # Token histories only matter to penalties; skip packing them otherwise.
        penalised = [p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty for p in params]
        history, offsets = pack_ragged([seq.token_ids if pen else () for seq, pen in zip(seqs, penalised, strict=True)])
        # Where each row's generated tokens start within its (possibly empty) history.
        output_start = [len(seq.prompt_ids) if pen else 0 for seq, pen in zip(seqs, penalised, strict=True)]
        bias_ids, bias_values, bias_offsets = pack_logit_bias([p.logit_bias for p in params])
        tokens = np.empty(len(seqs), dtype=np.int32)
        logprobs = np.empty(len(seqs), dtype=np.float32)
        sample(
            logits,
            pack_params([p.kernel_params() for p in params]),
            np.array([seq.rng_seed for seq in seqs], dtype=np.uint64),
            np.array([len(seq.output_ids) for seq in seqs], dtype=np.int64),
            history,
            offsets,
            np.array(output_start, dtype=np.int32),
            bias_ids,
            bias_values,
            bias_offsets,
            tokens,
            logprobs,
            *(masks or (None, None)),
        )
        return tokens, logprobs
