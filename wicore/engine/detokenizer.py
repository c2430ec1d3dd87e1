"""The output processor: a request's token ids become text, with stop strings cut out.

It runs where the tokenizer is, outside the engine: in the HTTP process's engine
client and in the offline `LLM`.  The engine ends a request at a stop token, at
max_tokens or at the context length; a stop string is found here, and the caller
then cancels the request in the engine (with FinishReason.STOP).
"""

from __future__ import annotations

from wicore.engine.request import EngineOutput, FinishReason, RequestOutput
from wicore.tokenizer import Tokenizer


class TextStream:
    """Incremental text of one sequence; text that may be the start of a stop string is held back."""

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...] = ()) -> None:
        self._decoder = tokenizer.stream_decoder()
        self._stop = stop
        # Text that could still be the start of a stop string is held back.
        self._hold = max((len(s) for s in stop), default=1) - 1
        self._pending = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a token; return the text that is now safe to emit."""
        if self.stopped:
            return ""
        self._pending += self._decoder.push(token_id)
        cuts = [i for s in self._stop if (i := self._pending.find(s)) >= 0]
        if cuts:
            self.stopped = True
            text, self._pending = self._pending[: min(cuts)], ""
            return text
        if len(self._pending) <= self._hold:
            return ""
        split = len(self._pending) - self._hold
        text, self._pending = self._pending[:split], self._pending[split:]
        return text

    def flush(self) -> str:
        """The held-back text once the sequence ends without a stop string."""
        if self.stopped:
            return ""
        text, self._pending = self._pending + self._decoder.flush(), ""
        return text


class Detokenizer:
    """One request's output processor: each EngineOutput in, a RequestOutput with its new text out.

    A stop string inside the new tokens ends the output there (tokens after it are dropped) with
    finish_reason STOP, while the engine still runs the request: the caller must cancel it.
    """

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...] = (), stop_token_ids: tuple[int, ...] = ()) -> None:
        self._text = TextStream(tokenizer, stop)
        self._stop_ids = tokenizer.stop_token_ids | frozenset(stop_token_ids)

    def process(self, out: EngineOutput) -> RequestOutput:
        keep, text, reason = len(out.token_ids), "", out.finish_reason
        for i, token in enumerate(out.token_ids):
            if reason is FinishReason.STOP and i == keep - 1 and token in self._stop_ids:
                break  # the stop token itself has no text (a grammar's last token, which also stops, has)
            text += self._text.push(token)
            if self._text.stopped:
                keep, reason = i + 1, FinishReason.STOP
                break
        if reason in (FinishReason.STOP, FinishReason.LENGTH):
            text += self._text.flush()
        dropped = len(out.token_ids) - keep
        return RequestOutput(
            request_id=out.request_id,
            token_ids=out.token_ids[:keep],
            logprobs=out.logprobs[:keep],
            top_logprobs=out.top_logprobs[:keep],
            finish_reason=reason,
            error=out.error,
            prompt_tokens=out.prompt_tokens,
            completion_tokens=out.completion_tokens - dropped,
            cached_tokens=out.cached_tokens,
            prompt_logprobs=out.prompt_logprobs,
            prompt_top_logprobs=out.prompt_top_logprobs,
            text=text,
        )
