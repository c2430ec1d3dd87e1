"""Runners that execute the model in this process on the WiCore engine."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aigo.models.base import Message, ModelConfig, Runner, RunnerError

if TYPE_CHECKING:  # the engine is imported on load(), so importing aigo stays light
    from wicore.engine.llm import LLM
    from wicore.engine.sampling import SamplingParams
    from wicore.models.embedding import EmbeddingModel


class _LocalRunner(Runner):
    """A GGUF chat/completion model (generate, chat) or a BERT embedding folder (embed)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.llm: LLM | None = None
        self.embedder: EmbeddingModel | None = None
        # The engine's KV cache and kernels serve one call at a time.
        self._lock = threading.Lock()

    def _locate(self) -> tuple[str, Path]:
        """("gguf", file) or ("embedding", folder) for the configured model."""
        raise NotImplementedError

    def _load(self) -> None:
        kind, path = self._locate()
        if kind == "embedding":
            from wicore.models.embedding import EmbeddingModel

            self.embedder = EmbeddingModel.load(self.config.model_name, path=path)
        else:
            from wicore.engine.llm import LLM

            max_len = int(self.config.extra.get("max_model_len", 4096))
            self.llm = LLM(str(path), max_model_len=max_len, kv_cache_tokens=max_len)

    def _llm(self, capability: str) -> LLM:
        self.load()
        if self.llm is None:
            raise self._unsupported(capability, "it is an embedding model")
        return self.llm

    def _params(self, kw: dict[str, Any]) -> SamplingParams:
        from wicore.engine.sampling import SamplingParams

        opts = self._options(kw)
        return SamplingParams(
            temperature=opts["temperature"],
            top_p=opts["top_p"],
            max_tokens=opts["max_tokens"],
            stop=opts.get("stop", ()),
            seed=opts.get("seed"),
        )

    def _prompt_ids(self, llm: LLM, messages: list[Message]) -> list[int]:
        return llm.encode_chat(messages)

    def _generate_ids(self, prompt: str) -> str | list[int]:
        # Instruct models get their chat template (as Ollama's /api/generate does); base models raw text.
        llm = self._llm("generate")
        if llm.tokenizer.chat_template:
            return self._prompt_ids(llm, [{"role": "user", "content": prompt}])
        return prompt

    def generate(self, prompt: str, **kw: Any) -> str:
        prompt_ids = self._generate_ids(prompt)
        with self._lock:
            return self._llm("generate").generate([prompt_ids], self._params(kw))[0].text

    def stream_generate(self, prompt: str, **kw: Any) -> Iterator[str]:
        prompt_ids = self._generate_ids(prompt)
        with self._lock:
            yield from self._llm("generate").stream(prompt_ids, self._params(kw))

    def chat(self, messages: list[Message], **kw: Any) -> str:
        llm = self._llm("chat")
        if not llm.tokenizer.chat_template:
            raise self._unsupported("chat", "the model has no chat template (a base model: use generate)")
        with self._lock:
            return llm.generate([self._prompt_ids(llm, messages)], self._params(kw))[0].text

    def stream_chat(self, messages: list[Message], **kw: Any) -> Iterator[str]:
        llm = self._llm("stream_chat")
        if not llm.tokenizer.chat_template:
            raise self._unsupported("stream_chat", "the model has no chat template (a base model: use generate)")
        with self._lock:
            yield from llm.stream(self._prompt_ids(llm, messages), self._params(kw))

    def embed(self, texts: list[str]) -> list[list[float]]:
        self.load()
        if self.embedder is None:
            raise self._unsupported("embed", "it is a text generation model, not an embedding model")
        with self._lock:
            return self.embedder.embed(list(texts)).tolist()


class WiCoreRunner(_LocalRunner):
    """A bundled WiCore model by name (`wicore models pull NAME` first) or a GGUF file path."""

    def _locate(self) -> tuple[str, Path]:
        from wicore.models import registry

        try:
            if self.config.model_name in registry.EMBEDDINGS:
                return "embedding", registry.resolve_embedding(self.config.model_name)
            return "gguf", registry.resolve(self.config.model_name)
        except registry.ModelError as e:
            raise RunnerError(f"{self.name}: {e}") from e


def _hub_cache() -> Path:
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache)
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


class HuggingFaceRunner(_LocalRunner):
    """A Hugging Face model already on disk, run by the WiCore engine: a .gguf file, a folder holding
    one (or a BERT embedding model: model.safetensors + tokenizer.json), or a hub id ("org/name")
    found in the local hub cache. This runner never downloads: these machines cannot reach the hub."""

    def _locate(self) -> tuple[str, Path]:
        name = self.config.model_name
        candidates = [Path(name).expanduser()]
        repo = _hub_cache() / ("models--" + name.replace("/", "--")) / "snapshots"
        if repo.is_dir():
            candidates += sorted(repo.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        for path in candidates:
            if path.is_file() and path.suffix == ".gguf":
                return "gguf", path
            if path.is_dir():
                if (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file():
                    return "embedding", path
                wanted = self.config.extra.get("filename", "*.gguf")
                if found := sorted(path.glob(wanted)):
                    return "gguf", found[0]
        raise RunnerError(
            f"{self.name}: not on disk (looked at {candidates[0]} and in the hub cache {repo.parent}), and the "
            f"Hugging Face hub cannot be reached from here (offline). Get it on a connected machine with "
            f"`huggingface-cli download {name}` and copy the cache folder to {_hub_cache()}, or pass the path "
            f"of a local .gguf file as model_name"
        )
