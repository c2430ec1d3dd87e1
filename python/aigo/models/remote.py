"""Runners that talk to a model server over HTTP: OpenAI-compatible APIs and Ollama."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from aigo.models.base import Message, ModelConfig, Runner, RunnerError


def _error_text(response: httpx.Response) -> str:
    """The server's own message: OpenAI's {"error": {"message"}} or Ollama's {"error": "..."}."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error or body)[:500]


class _HttpRunner(Runner):
    default_base_url = ""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.base_url = (config.base_url or self.default_base_url).rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, headers=self._headers(), timeout=config.timeout)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}

    def close(self) -> None:
        self._client.close()

    @contextmanager
    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Iterator[httpx.Response]:
        """A streamed response with a 2xx status; transport and HTTP errors become RunnerError."""
        try:
            with self._client.stream(method, path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise RunnerError(
                        f"{self.name}: {method} {self.base_url}{path} answered {response.status_code}: "
                        f"{_error_text(response)}"
                    )
                yield response
        except httpx.HTTPError as e:
            raise RunnerError(f"{self.name}: cannot reach {self.base_url}{path}: {e}") from e

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        with self._request(method, path, body) as response:
            response.read()
            try:
                return response.json()
            except ValueError as e:
                raise RunnerError(f"{self.name}: {path} did not answer JSON: {response.text[:200]!r}") from e


class OpenAIRunner(_HttpRunner):
    """Any OpenAI-compatible API (OpenAI, WiCore's /v1, vLLM, llama.cpp server, ...)."""

    default_base_url = "https://api.openai.com/v1"

    def __init__(self, config: ModelConfig) -> None:
        if config.api_key is None and os.environ.get("OPENAI_API_KEY") and config.base_url is None:
            config = config.model_copy(update={"api_key": os.environ["OPENAI_API_KEY"]})
        super().__init__(config)

    def _load(self) -> None:
        # Checks the server answers and accepts the key. The model itself is not looked up in the list:
        # servers list only their chat models (WiCore) or some of their models, so the first call
        # reports a missing model, with the server's own message.
        self._json("GET", "/models")

    def _body(self, messages: list[Message], kw: dict[str, Any], stream: bool) -> dict[str, Any]:
        body = {"model": self.config.model_name, "messages": messages, "stream": stream, **self._options(kw)}
        return {k: v for k, v in body.items() if v is not None} | self.config.extra

    def chat(self, messages: list[Message], **kw: Any) -> str:
        self.load()
        reply = self._json("POST", "/chat/completions", self._body(messages, kw, stream=False))
        return reply["choices"][0]["message"].get("content") or ""

    def stream_chat(self, messages: list[Message], **kw: Any) -> Iterator[str]:
        self.load()
        with self._request("POST", "/chat/completions", self._body(messages, kw, stream=True)) as response:
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if error := chunk.get("error"):  # a failure after the stream started: one error event
                    message = error.get("message", error) if isinstance(error, dict) else error
                    raise RunnerError(f"{self.name}: the stream failed: {message}")
                for choice in chunk.get("choices", []):
                    if piece := choice.get("delta", {}).get("content"):
                        yield piece

    # Chat models (most of what OpenAI-style servers offer) take a prompt as one user message.
    def generate(self, prompt: str, **kw: Any) -> str:
        return self.chat([{"role": "user", "content": prompt}], **kw)

    def stream_generate(self, prompt: str, **kw: Any) -> Iterator[str]:
        return self.stream_chat([{"role": "user", "content": prompt}], **kw)

    def embed(self, texts: list[str]) -> list[list[float]]:
        self.load()
        reply = self._json("POST", "/embeddings", {"model": self.config.model_name, "input": texts})
        return [item["embedding"] for item in sorted(reply["data"], key=lambda item: item["index"])]


class OllamaRunner(_HttpRunner):
    """An Ollama server (or WiCore's Ollama-compatible routes): /api/generate, /api/chat, /api/embed."""

    default_base_url = "http://localhost:11434"

    def _load(self) -> None:
        names = {m.get("name") for m in self._json("GET", "/api/tags").get("models", [])}
        # Ollama lists "llama2:latest" for a model asked for as "llama2".
        if not {self.config.model_name, self.config.model_name + ":latest"} & names:
            raise RunnerError(
                f"{self.name}: {self.base_url} has no such model (it has {sorted(names)}); "
                f"run `ollama pull {self.config.model_name}` there"
            )

    def _body(self, kw: dict[str, Any], stream: bool, **fields: Any) -> dict[str, Any]:
        opts = self._options(kw)
        options = {"temperature": opts["temperature"], "top_p": opts["top_p"], "num_predict": opts["max_tokens"]}
        options |= {k: opts[k] for k in ("stop", "seed") if k in opts}
        if isinstance(options.get("stop"), str):  # Ollama takes a list only
            options["stop"] = [options["stop"]]
        options |= self.config.extra.get("options", {})
        return {"model": self.config.model_name, "stream": stream, "options": options, **fields}

    def _stream(self, path: str, body: dict[str, Any], field: str) -> Iterator[str]:
        with self._request("POST", path, body) as response:
            for line in response.iter_lines():
                if not line.strip():
                    continue
                chunk = json.loads(line)
                if "error" in chunk:
                    raise RunnerError(f"{self.name}: {chunk['error']}")
                piece = chunk["message"].get("content", "") if field == "message" else chunk.get(field, "")
                if piece:
                    yield piece

    def generate(self, prompt: str, **kw: Any) -> str:
        self.load()
        return self._json("POST", "/api/generate", self._body(kw, False, prompt=prompt))["response"]

    def stream_generate(self, prompt: str, **kw: Any) -> Iterator[str]:
        self.load()
        yield from self._stream("/api/generate", self._body(kw, True, prompt=prompt), "response")

    def chat(self, messages: list[Message], **kw: Any) -> str:
        self.load()
        return self._json("POST", "/api/chat", self._body(kw, False, messages=messages))["message"]["content"]

    def stream_chat(self, messages: list[Message], **kw: Any) -> Iterator[str]:
        self.load()
        yield from self._stream("/api/chat", self._body(kw, True, messages=messages), "message")

    def embed(self, texts: list[str]) -> list[list[float]]:
        self.load()
        return self._json("POST", "/api/embed", {"model": self.config.model_name, "input": texts})["embeddings"]
