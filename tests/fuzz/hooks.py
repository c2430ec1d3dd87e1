"""schemathesis hooks of the fuzz runs (tests/fuzz/runner.py registers them by importing this module):
every generated request that would generate text is capped to a few tokens, so a run costs seconds of
model time per operation, not minutes, and names a served model. Whatever else the fuzzer made up
(wrong types, out-of-range values, unknown fields) is sent as is."""

from __future__ import annotations

from typing import Any

import schemathesis

from tests.helpers import EMBED, MODEL

MAX_TOKENS = 4
MAX_CHOICES = 2
GENERATING = {
    "/v1/chat/completions", "/v1/completions", "/api/v1/generate", "/api/v1/chat", "/api/v1/chat/stream",
    "/api/generate", "/api/chat",
}  # fmt: skip
EMBEDDING = {"/v1/embeddings", "/api/v1/embed", "/api/embed", "/api/embeddings"}
# Downloads a model: not something to fuzz on a test machine.
SKIPPED = ("/api/pull",)


def _cap(values: dict[str, Any], key: str, limit: int, negative_is_unbounded: bool = False) -> None:
    """`values[key]` at most `limit` (and set when absent: the server's default would be hundreds)."""
    value = values.get(key)
    if value is None or (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (value > limit or (negative_is_unbounded and value < 0))
    ):
        values[key] = limit


@schemathesis.hook
def map_body(context: schemathesis.HookContext, body: Any) -> Any:
    operation = context.operation
    if operation is None or not isinstance(body, dict):
        return body
    # A made-up model name only ever reaches the 404 (which the route tests cover): the served ones let
    # the rest of the request be exercised.
    if isinstance(body.get("model"), str) and operation.path in GENERATING | EMBEDDING:
        body["model"] = EMBED if operation.path in EMBEDDING else MODEL
    if operation.path not in GENERATING:
        return body
    if operation.path.startswith("/api/") and not operation.path.startswith("/api/v1/"):
        options = body.setdefault("options", {})
        if isinstance(options, dict):
            _cap(options, "num_predict", MAX_TOKENS, negative_is_unbounded=True)  # Ollama's -1 and -2
        return body
    _cap(body, "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens", MAX_TOKENS)
    if "n" in body:
        _cap(body, "n", MAX_CHOICES)
    return body
