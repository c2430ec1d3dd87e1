"""Sentence embeddings: tokenizer -> BERT encoder -> masked mean pooling -> L2 normalisation.

This reproduces a sentence-transformers pipeline (Transformer, Pooling(mean), Normalize)
on WiCore's kernels.  Texts are sorted by token count and cut into batches, so each
batch pads to similar lengths; the results come back in the caller's order.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from wicore.kernels.encoder import l2_normalize, mean_pool
from wicore.models import registry
from wicore.models.bert import BertEncoder

# Batching (see _batches): the matmuls reach full speed at ~256-512 rows, and a batch's
# fixed costs are worth about 32 rows (matmul time ~ 300 us + M x 10 us at this width).
MAX_BATCH_TOKENS = 1024
BATCH_OVERHEAD_TOKENS = 32
# A text is cut before tokenising (see head()) from this many characters per token kept on.
HEAD_CHARS_PER_TOKEN = 4


def head(counter: Tokenizer, text: str, max_tokens: int) -> str:
    """The start of `text` whose tokens begin with the first `max_tokens` of the whole text's (all of
    `text` when it has no more), found without tokenising the rest: one huge input costs what its
    first tokens cost. `counter` must not truncate.

    The cut is by characters, doubled until the head has more than `max_tokens` pieces besides those of
    its last word, which the cut may have split: a word is at most `max_input_chars_per_word` characters
    of WordPiece pieces (a longer one is one [UNK]), so the pieces kept are the whole text's.
    """
    word = getattr(counter.model, "max_input_chars_per_word", 100)
    chars = (max_tokens + word) * HEAD_CHARS_PER_TOKEN
    while chars < len(text):
        cut = text[:chars]
        if len(counter.encode(cut, add_special_tokens=False).ids) > max_tokens + word:
            return cut
        chars *= 2
    return text


class EmbeddingModel:
    def __init__(self, name: str, encoder: BertEncoder, tokenizer: Tokenizer, max_length: int) -> None:
        self.name = name
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def load(cls, name: str = "all-minilm-l6-v2", path: Path | None = None) -> EmbeddingModel:
        """A bundled model by name (pulled with `wicore models pull NAME`), or a model folder at `path`."""
        folder = registry.resolve_embedding(name) if path is None else Path(path)
        _check_pooling(folder)
        encoder = BertEncoder.load(folder)
        max_length = max_length_of(folder, encoder.config.max_positions)
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # The file pads everything to 128 tokens and truncates there; we pad per batch ourselves
        # and truncate at the length the model was trained for, as sentence-transformers does.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length)
        return cls(name, encoder, tokenizer, max_length)

    @functools.cached_property
    def _counter(self) -> Tokenizer:
        """The tokenizer without truncation, for head()."""
        counter = Tokenizer.from_str(self.tokenizer.to_str())
        counter.no_truncation()
        return counter

    @property
    def dimensions(self) -> int:
        return self.encoder.config.hidden

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """The token ids each text is embedded from: [CLS] + its pieces + [SEP], cut at `max_length`
        (a long text is cut before it is tokenised whole: see head())."""
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts: expected a list of strings")
        heads = [head(self._counter, t, self.max_length) for t in texts]
        return [enc.ids for enc in self.tokenizer.encode_batch(heads)]

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens each text is embedded from: [CLS] + its pieces + [SEP], after truncation."""
        return [len(ids) for ids in self.tokenize(texts)]

    def embed(self, texts: list[str], dimensions: int | None = None) -> np.ndarray:
        """Unit-length embeddings float32 [len(texts), dimensions or self.dimensions].

        `dimensions` below the model's size keeps the first components and renormalises them
        (meaningful for Matryoshka-trained models; for others it is a plain truncation).
        """
        if not texts:
            raise ValueError("texts: expected at least one text")
        return self.embed_tokens(self.tokenize(texts), dimensions)

    def embed_tokens(self, token_ids: list[list[int]], dimensions: int | None = None) -> np.ndarray:
        """embed() of texts already tokenised by tokenize()."""
        if dimensions is not None and (
            isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 1 <= dimensions <= self.dimensions
        ):
            raise ValueError(f"dimensions must be an integer from 1 to {self.dimensions}, got {dimensions!r}")
        out = np.empty((len(token_ids), self.dimensions), np.float32)
        for batch in _batches([len(ids) for ids in token_ids]):
            out[batch] = self._embed_batch([token_ids[i] for i in batch])
        if dimensions is not None and dimensions < self.dimensions:
            out = np.ascontiguousarray(out[:, :dimensions])
            l2_normalize(out, out)
        return out

    def _embed_batch(self, token_ids: list[list[int]]) -> np.ndarray:
        lengths = np.array([len(ids) for ids in token_ids], np.int32)
        ids = np.zeros((len(token_ids), int(lengths.max())), np.int32)  # right padding; id 0 is [PAD]
        for row, seq in zip(ids, token_ids, strict=True):
            row[: len(seq)] = seq
        states = self.encoder.forward(ids, lengths)
        pooled = np.empty((len(token_ids), self.dimensions), np.float32)
        mean_pool(states, lengths, pooled)
        l2_normalize(pooled, pooled)
        return pooled


def _batches(lengths: list[int]) -> list[list[int]]:
    """Indices grouped into batches of texts of similar length, longest first.

    A batch pads every text to its longest, and each batch costs about BATCH_OVERHEAD_TOKENS
    extra rows of work (a forward pass's fixed costs; small matmuls run below full speed).
    Over the texts sorted by length, dynamic programming finds the split into runs with the
    least padded rows + overhead; a batch holds at most MAX_BATCH_TOKENS padded tokens.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    desc = [lengths[i] for i in order]
    best: list[float] = [0.0] + [math.inf] * len(desc)  # best[j]: cheapest split of the first j texts
    cut = [0] * (len(desc) + 1)  # where the last batch of that split starts
    for j in range(1, len(desc) + 1):
        for i in range(j - 1, -1, -1):
            rows = (j - i) * desc[i]  # texts i..j-1 padded to desc[i], the longest
            if rows > MAX_BATCH_TOKENS and i < j - 1:
                break  # rows only grow as i goes down; a lone text always gets a batch
            cost = best[i] + rows + BATCH_OVERHEAD_TOKENS
            if cost < best[j]:
                best[j], cut[j] = cost, i
    batches: list[list[int]] = []
    j = len(desc)
    while j:
        batches.append(order[cut[j] : j])
        j = cut[j]
    return batches[::-1]


def _check_pooling(folder: Path) -> None:
    """We pool by mean: refuse a model folder whose sentence-transformers config says otherwise."""
    config = folder / "1_Pooling" / "config.json"
    if config.is_file():
        modes = {k: v for k, v in json.loads(config.read_text()).items() if k.startswith("pooling_mode_") and v}
        if list(modes) != ["pooling_mode_mean_tokens"]:
            raise ValueError(f"{config}: only mean pooling is supported, the model asks for {sorted(modes)}")


def max_length_of(folder: Path, max_positions: int) -> int:
    """sentence-transformers' max_seq_length when the folder has one, else the position table's size."""
    st_config = folder / "sentence_bert_config.json"
    if st_config.is_file():
        return min(int(json.loads(st_config.read_text())["max_seq_length"]), max_positions)
    return max_positions
