"""Turns a scheduled set of sequences into one forward pass, then samples their next tokens."""

from __future__ import annotations

import numpy as np

from wicore.engine.block_manager import BlockManager, chain_hashes
from wicore.engine.sequence import Sequence
from wicore.kernels.sampling import pack_logit_bias, pack_params, pack_ragged, sample, top_logprobs
from wicore.models.transformer import ForwardBatch, KVCache, KVDtype, Transformer


class ModelRunner:
    def __init__(
        self,
        model: Transformer,
        num_blocks: int,
        block_size: int = 16,
        enable_prefix_caching: bool = True,
        kv_dtype: KVDtype = "float16",
    ) -> None:
        self.model = model
        self.kv = KVCache.allocate(model.config, num_blocks, block_size, kv_dtype)
        self.blocks = BlockManager(num_blocks, block_size, enable_prefix_caching)

    def reuse_prefix(self, seq: Sequence) -> int:
        """Give a sequence with no KV the cached blocks of its longest cached prefix; returns the tokens
        it no longer has to compute. At least its last token is always computed: it yields the logits."""
        assert seq.num_computed == 0 and not seq.block_table
        bs = self.blocks.block_size
        if not self.blocks.enable_prefix_caching:
            return 0
        seq.block_hashes = chain_hashes(seq.token_ids, bs, seq.block_hashes)
        seq.cached_blocks = self.blocks.match_prefix(seq.block_table, seq.block_hashes, (seq.num_tokens - 1) // bs)
        seq.num_computed = bs * seq.cached_blocks
        if not seq.output_ids:
            seq.num_cached_prompt = seq.num_computed
        return seq.num_computed

    def step(self, work: list[tuple[Sequence, int]]) -> list[Sequence]:
        """Run `n` not-yet-computed tokens of each (sequence, n); sample for those that reach their end.

        Block tables must already hold the tokens (the scheduler grows them).
        Returns the sequences that got a new token.
        """
        batch = self._batch(work)
        logits = self.model.forward(batch, self.kv)
        sampled = []
        bs = self.blocks.block_size
        for seq, n in work:
            seq.num_computed += n
            full = seq.num_computed // bs
            if full > seq.cached_blocks and self.blocks.enable_prefix_caching:  # blocks just filled: share them
                seq.block_hashes = chain_hashes(seq.token_ids[: full * bs], bs, seq.block_hashes)
                self.blocks.register(seq.block_table, seq.block_hashes[:full], seq.cached_blocks)
                seq.cached_blocks = full
            if seq.num_computed == seq.num_tokens:
                sampled.append(seq)
        if sampled:
            tokens, logprobs = self._sample(sampled, logits)
            for row, (seq, tok, lp) in enumerate(zip(sampled, tokens.tolist(), logprobs.tolist(), strict=True)):
                seq.output_ids.append(tok)
                seq.output_logprobs.append(lp)
                if seq.params.logprobs:
                    # The row as the sampler left it (bias and penalties applied), scaled the same way.
                    ids, lps = top_logprobs(logits[row], seq.params.logprobs, seq.params.temperature)
                    seq.output_top_logprobs.append(list(zip(ids.tolist(), lps.tolist(), strict=True)))
        return sampled

    def _batch(self, work: list[tuple[Sequence, int]]) -> ForwardBatch:
        bs = self.blocks.block_size
        tokens, positions, token_seq, logits_rows = [], [], [], []
        width = max(len(seq.block_table) for seq, _ in work)
        tables = np.zeros((len(work), width), dtype=np.int32)
        for row, (seq, n) in enumerate(work):
            start = seq.num_computed
            tokens += seq.token_ids[start : start + n]
            positions += range(start, start + n)
            token_seq += [row] * n
            tables[row, : len(seq.block_table)] = seq.block_table
            if start + n == seq.num_tokens:
                logits_rows.append(len(tokens) - 1)
        pos = np.array(positions, dtype=np.int32)
        seq_rows = np.array(token_seq, dtype=np.int32)
        slots = tables[seq_rows, pos // bs].astype(np.int64) * bs + pos % bs
        return ForwardBatch(
            tokens=np.array(tokens, dtype=np.int64),
            positions=pos,
            token_seq=seq_rows,
            slots=slots,
            block_tables=tables,
            logits_rows=np.array(logits_rows, dtype=np.int64),
        )

    @staticmethod
    def _sample(seqs: list[Sequence], logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
        )
        return tokens, logprobs
