"""A conversation's messages, kept within a token budget."""

from __future__ import annotations

import json
import math
import unicodedata
from pathlib import Path
from typing import Any, Protocol

# Chat templates wrap each message in a few tokens (ChatML: <|im_start|>, the role, a newline,
# <|im_end|>, a newline): counted on top of the content.
MESSAGE_OVERHEAD_TOKENS = 5


class Tokenizer(Protocol):
    def encode(self, text: str) -> Any: ...


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: each CJK character (ideographs, kana, hangul) as one token, other
    text as one token per 4 characters: what BPE vocabularies of the Qwen/Llama/GPT kind average on
    English prose and code, and an over-estimate for most CJK, so the budget errs on the safe side."""
    wide = sum(1 for ch in text if unicodedata.east_asian_width(ch) in ("W", "F"))
    return wide + math.ceil((len(text) - wide) / 4)


class ConversationMemory:
    def __init__(self, max_tokens: int = 4000, tokenizer: Tokenizer | None = None) -> None:
        """`tokenizer`: anything with encode(text) returning ids (WiCore's, `tokenizers`', transformers')."""
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.max_tokens = max_tokens
        self.tokenizer = tokenizer
        self.messages: list[dict[str, str]] = []

    def add_message(self, role: str, content: str) -> None:
        if role not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"role must be system, user, assistant or tool, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"content must be a string, got {type(content).__name__}")
        self.messages.append({"role": role, "content": content})

    def get_messages(self) -> list[dict[str, str]]:
        return [dict(m) for m in self.messages]

    def get_formatted_context(self) -> str:
        """The conversation as plain text, one "Role: content" block per message."""
        return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in self.messages)

    def count_tokens(self, message: dict[str, str]) -> int:
        content = message["content"]
        if self.tokenizer is None:
            n = estimate_tokens(content)
        else:
            ids = self.tokenizer.encode(content)
            n = len(getattr(ids, "ids", ids))  # `tokenizers` returns an Encoding
        return n + MESSAGE_OVERHEAD_TOKENS

    def total_tokens(self) -> int:
        return sum(self.count_tokens(m) for m in self.messages)

    def compress(self) -> int:
        """Drop the oldest non-system messages until the rest fits max_tokens; returns how many went.

        System messages always stay (they define the assistant), and so does the newest message even
        if it alone is over budget: without it there is nothing to answer. Older turns go in one piece
        from the oldest end, so what remains is a contiguous, most recent stretch of the conversation.
        """
        system = [m for m in self.messages if m["role"] == "system"]
        turns = [m for m in self.messages if m["role"] != "system"]
        budget = self.max_tokens - sum(self.count_tokens(m) for m in system)
        keep = 0
        for m in reversed(turns):
            cost = self.count_tokens(m)
            if keep and cost > budget:
                break
            budget -= cost
            keep += 1
        kept = {id(m) for m in turns[len(turns) - keep :]}
        self.messages = [m for m in self.messages if m["role"] == "system" or id(m) in kept]
        return len(turns) - keep

    def save(self, path: str | Path) -> None:
        data = {"max_tokens": self.max_tokens, "messages": self.messages}
        Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")

    def load(self, path: str | Path) -> None:
        """Replace this memory's messages (and budget) with those saved at `path`."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        messages = data.get("messages") if isinstance(data, dict) else None
        if not isinstance(messages, list):
            raise ValueError(f"{path}: expected {{'max_tokens': int, 'messages': [...]}}")
        self.messages = []
        for m in messages:
            self.add_message(m["role"], m["content"])
        self.max_tokens = int(data.get("max_tokens", self.max_tokens))
