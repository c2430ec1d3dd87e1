"""Incremental text of one sequence, with stop strings cut out before they reach the user."""

from __future__ import annotations

from wicore.tokenizer import Tokenizer


class TextStream:
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
