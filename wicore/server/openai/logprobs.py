"""OpenAI's token logprobs, in its chat shape (also used by the Responses API) and its completions shape."""

from __future__ import annotations

from collections.abc import Sequence

from wicore.server.openai.protocol import (
    MIN_LOGPROB,
    ChatChoiceLogprobs,
    ChatLogprob,
    CompletionLogprobs,
    TopLogprob,
)
from wicore.tokenizer import Tokenizer


class LogprobRenderer:
    """Token logprobs in OpenAI's two shapes (each token's text is decoded once per model: the tokenizer
    keeps it)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.token_text = tokenizer.token_text

    def chat(
        self, token_ids: list[int], logprobs: list[float], top: list[list[tuple[int, float]]]
    ) -> ChatChoiceLogprobs:
        # `bytes` are the token's own bytes: joined over a response they give its UTF-8 text, also
        # where a character is split across tokens (whose `token` text then shows U+FFFD).
        token_bytes = self.tokenizer.token_bytes
        content = []
        for k, (token_id, lp) in enumerate(zip(token_ids, logprobs, strict=False)):
            alternatives = [
                TopLogprob(token=self.token_text(i), logprob=max(v, MIN_LOGPROB), bytes=list(token_bytes(i)))
                for i, v in (top[k] if k < len(top) else [])
            ]
            content.append(
                ChatLogprob(
                    token=self.token_text(token_id),
                    logprob=max(lp, MIN_LOGPROB),
                    bytes=list(token_bytes(token_id)),
                    top_logprobs=alternatives,
                )  # fmt: skip
            )
        return ChatChoiceLogprobs(content=content)

    def completion(
        self, token_ids: list[int], logprobs: Sequence[float | None], top: list[list[tuple[int, float]]],
        offset: int, with_top: bool,
    ) -> CompletionLogprobs:  # fmt: skip
        """`None` logprobs are a prompt's first token, which nothing predicts (OpenAI's null)."""
        result = CompletionLogprobs()
        for k, (token_id, lp) in enumerate(zip(token_ids, logprobs, strict=False)):
            text = self.token_text(token_id)
            result.tokens.append(text)
            result.token_logprobs.append(None if lp is None else max(lp, MIN_LOGPROB))
            alternatives = top[k] if k < len(top) else []
            result.top_logprobs.append(
                {self.token_text(i): max(v, MIN_LOGPROB) for i, v in alternatives}
                if with_top and lp is not None
                else None
            )
            result.text_offset.append(offset)
            offset += len(text)
        return result
