"""Constrained decoding: a request's output follows an llguidance grammar (JSON schema, regex, Lark).

Two halves, one per process:
- the HTTP side builds a grammar from what the API was given (`json_schema_grammar`, `regex_grammar`,
  `lark_grammar`) and checks it (`check_grammar`) before anything is queued; a grammar is a string,
  so `SamplingParams.grammar` carries any of them to the worker;
- the worker's `GrammarGuide` keeps one `LLMatcher` per constrained sequence, computes the token
  bitmasks of the rows about to be sampled (in a thread, while the forward pass runs: llguidance
  releases the GIL), and advances each matcher by the token drawn.  The sampling kernel sets the
  masked logits to -inf, so constrained and unconstrained rows share one batch.

The matcher consumes each generated token exactly once, when it is drawn: a sequence preempted and
recomputed keeps its matcher, since recomputing its tokens samples nothing until the next new one.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wicore.engine.sequence import Sequence
from wicore.kernels.sampling import mask_words
from wicore.lazy import LazyModule
from wicore.memory import release_freed_memory
from wicore.models.config import ModelConfig
from wicore.models.prepared import metadata
from wicore.tokenizer import tokenizers_json

if TYPE_CHECKING:
    import llguidance
else:
    llguidance = LazyModule("llguidance")  # loaded by the first grammar: unconstrained serving never needs it

log = logging.getLogger("wicore.grammar")

# OpenAI's json_object mode and Ollama's format "json": any JSON object.
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}


def check_grammar(grammar: str, field: str) -> str:
    """The grammar, if llguidance can compile it; else ValueError naming the request field it came from."""
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise ValueError(f"{field}: {error}")
    return grammar


def json_schema_grammar(schema: dict[str, Any] | bool, field: str) -> str:
    """The checked grammar of a JSON schema: the output is one JSON value that validates against it."""
    if not isinstance(schema, (dict, bool)):
        raise ValueError(f"{field}: a JSON schema must be an object, got {type(schema).__name__}")
    try:
        # fixed separators, as json.dumps writes them: free whitespace lets a model spend max_tokens on it
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            schema, defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
        )
    except (ValueError, TypeError) as e:
        raise ValueError(f"{field}: {e}") from None
    return check_grammar(grammar, field)


_NAMED_SCHEMAS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_VALUES = ("enum", "const", "default", "examples")


def closed_objects(schema: Any) -> Any:
    """The schema with `additionalProperties: false` on every object that lists properties but says
    nothing of others, as llama.cpp's converter (so Ollama's format and tool grammars) reads them, while
    plain JSON schema would let a model add keys until max_tokens cuts its JSON short."""
    if isinstance(schema, list):
        return [closed_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    closed: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _NAMED_SCHEMAS and isinstance(value, dict):  # name -> schema: the names are not keywords
            closed[key] = {name: closed_objects(sub) for name, sub in value.items()}
        elif key in _VALUES:  # JSON data, not schemas
            closed[key] = value
        else:
            closed[key] = closed_objects(value)
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        closed["additionalProperties"] = False
    return closed


def regex_grammar(regex: str, field: str) -> str:
    """The checked grammar whose outputs are the full matches of `regex`."""
    return check_grammar(llguidance.LLMatcher.grammar_from_regex(regex), field)


def lark_grammar(lark: str, field: str) -> str:
    """The checked grammar of a Lark (llguidance dialect) grammar."""
    return check_grammar(llguidance.LLMatcher.grammar_from_lark(lark), field)


class GrammarGuide:
    """The worker's grammar state: llguidance's view of the vocabulary, built on the first constrained
    request (it reads the model's vocabulary, as a `tokenizers` JSON cached beside the model: ~1 s and
    ~110 MB resident for qwen's 152k tokens, ~3.5 s and ~230 MB for gemma's 262k; the worker holds no
    tokenizer otherwise), and the matcher of each constrained sequence, kept on the sequence (it lives
    and dies with it)."""

    def __init__(self, model_path: Path, eos_token_ids: frozenset[int]) -> None:
        self.model_path = model_path
        self.vocab_size = 0  # the logits' width, which the masks cover: known once the vocabulary is read
        self.eos_token_ids = frozenset(eos_token_ids)
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._executor: llguidance.LLExecutor | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar")

    def _vocabulary(self) -> tuple[llguidance.LLTokenizer, llguidance.LLExecutor]:
        """llguidance's tokenizer and its mask-computing thread pool, built on first use."""
        if self._tokenizer is None or self._executor is None:
            self.vocab_size = ModelConfig.from_metadata(metadata(self.model_path, vocabulary=False)).vocab_size
            self._tokenizer = llguidance.LLTokenizer(
                tokenizers_json(self.model_path),
                n_vocab=self.vocab_size,
                eos_token=sorted(self.eos_token_ids),
            )
            self._executor = llguidance.LLExecutor()
            release_freed_memory()  # what building its tables freed: ~80 MB for gemma's vocabulary
        return self._tokenizer, self._executor

    def start_masks(self, seqs: list[Sequence]) -> Future[tuple[np.ndarray, np.ndarray]] | None:
        """Start computing the token masks of the sequences about to be sampled, in a thread, so the
        forward pass runs meanwhile; None when none is constrained.  The future gives the sampling
        kernel's (masks int32 [M, words], mask_rows int32 [len(seqs)])."""
        if all(seq.params.grammar is None for seq in seqs):
            return None
        return self._thread.submit(self._masks, seqs)

    def _masks(self, seqs: list[Sequence]) -> tuple[np.ndarray, np.ndarray]:
        tokenizer, executor = self._vocabulary()
        rows = np.full(len(seqs), -1, dtype=np.int32)
        matchers: list[tuple[llguidance.LLMatcher, int]] = []
        for row, seq in enumerate(seqs):
            if seq.params.grammar is None:
                continue
            if seq.matcher is None:
                seq.matcher = llguidance.LLMatcher(tokenizer, seq.params.grammar, log_level=0)
            rows[row] = len(matchers)
            matchers.append((seq.matcher, len(matchers)))
        masks = np.zeros((len(matchers), mask_words(self.vocab_size)), dtype=np.int32)
        # all masks in one call: llguidance spreads them over its threads without the GIL
        executor.unsafe_compute_mask_ptr(matchers, masks.ctypes.data, masks.shape[1] * 4, masks.shape[0])
        words = masks.view(np.uint32)
        for i, (matcher, _) in enumerate(matchers):
            # A matcher in error allows nothing: let it end the sequence rather than sample from no token.
            if matcher.is_error() or not words[i].any():
                log.warning("grammar matcher failed (%s): ending the sequence", matcher.get_error())
                for eos in self.eos_token_ids:
                    words[i, eos // 32] |= np.uint32(1 << (eos % 32))
        return masks, rows

    def advance(self, seq: Sequence, token: int) -> bool:
        """Feed a drawn token to the sequence's matcher; True when the sequence must stop here: once its
        grammar is complete and allows nothing but end-of-sequence (stopping at once saves the step that
        would only draw it; even under ignore_eos), or at a token that broke the matcher."""
        if seq.matcher is None:
            return False
        return not seq.matcher.consume_token(token) or seq.matcher.is_stopped()
