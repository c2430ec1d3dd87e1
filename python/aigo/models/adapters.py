"""Task-shaped wrappers over a runner: chat, text generation, embeddings."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from aigo.models import get_model_runner
from aigo.models.base import Message, ModelConfig, Runner


class _Adapter:
    def __init__(self, config: ModelConfig, runner: Runner | None = None) -> None:
        self.config = config
        self.runner = runner or get_model_runner(config)


class ChatAdapter(_Adapter):
    def process(self, messages: list[Message], **kw: Any) -> str:
        """The assistant's reply to the conversation so far."""
        _check_messages(messages)
        return self.runner.chat(messages, **kw)

    def stream(self, messages: list[Message], **kw: Any) -> Iterator[str]:
        _check_messages(messages)
        return self.runner.stream_chat(messages, **kw)


class TextGenerationAdapter(_Adapter):
    def generate(self, prompt: str, max_tokens: int | None = None, **kw: Any) -> str:
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("prompt: expected a non-empty string")
        return self.runner.generate(prompt, max_tokens=max_tokens, **kw)

    def stream(self, prompt: str, max_tokens: int | None = None, **kw: Any) -> Iterator[str]:
        return self.runner.stream_generate(prompt, max_tokens=max_tokens, **kw)


class EmbeddingAdapter(_Adapter):
    def embed(self, text: str) -> list[float]:
        return self.embed_batch([text])[0]

    def embed_batch(self, texts: list[str]) -> list[list[float]]:
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts: expected a non-empty list of strings")
        return self.runner.embed(texts)

    def compute_similarities(self, query: str, texts: list[str]) -> list[float]:
        """Cosine similarity of the query to each text, in the texts' order."""
        query_vec, *vectors = self.embed_batch([query, *texts])
        return [cosine(query_vec, v) for v in vectors]


def cosine(a: list[float], b: list[float]) -> float:
    # Computed in full rather than as a dot product: not every provider returns unit vectors.
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    return dot / norm if norm else 0.0


def _check_messages(messages: list[Message]) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages: expected a non-empty list of {'role', 'content'} dicts")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"messages: each message needs string 'role' and 'content', got {m!r}")
