"""Model configuration and the runner interface every provider implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Message = dict[str, str]


class RunnerError(RuntimeError):
    """A runner could not do what was asked: model missing, server unreachable or refusing."""


class CapabilityError(NotImplementedError):
    """The runner (or its model) cannot do this at all, e.g. embeddings from a chat-only model."""

    def __init__(self, runner: str, capability: str, why: str = "") -> None:
        self.runner = runner
        self.capability = capability
        super().__init__(f"{runner} does not support {capability}" + (f": {why}" if why else ""))


class ModelConfig(BaseModel):
    """What to run and how. Unset base_url / api_key fall back to each provider's default.

    The name is AIgo's documented API (`from aigo.models.base import ModelConfig`), so it stays; it is
    not the engine's `wicore.models.config.ModelConfig` (a model's hyperparameters)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    provider: str = "wicore"
    model_name: str = "qwen2.5-coder-0.5b-instruct"
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(512, ge=1)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    base_url: str | None = None
    api_key: str | None = None
    timeout: float = Field(120.0, gt=0)
    # Provider-specific knobs, passed through (e.g. Ollama "options", a GGUF "filename").
    extra: dict[str, Any] = Field(default_factory=dict)
    # provider="mixed" only: capability ("chat", "generate", "embed") -> runners tried in order.
    routes: dict[str, list[ModelConfig]] = Field(default_factory=dict)


class Runner(ABC):
    """One model behind one provider. Methods load the model on first use; load() does it up front."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self._loaded = False

    @property
    def name(self) -> str:
        return f"{type(self).__name__}({self.config.model_name})"

    def load(self) -> None:
        if not self._loaded:
            self._load()
            self._loaded = True

    def _load(self) -> None:  # noqa: B027 - remote runners have nothing to prepare
        """Prepare the model (check the server has it, read weights)."""

    def _options(self, kw: dict[str, Any]) -> dict[str, Any]:
        """Sampling options of one call: keyword arguments over the config's defaults."""
        out = {
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "top_p": self.config.top_p,
        }
        unknown = set(kw) - {"temperature", "max_tokens", "top_p", "stop", "seed"}
        if unknown:
            raise TypeError(f"{self.name}: unknown option(s) {sorted(unknown)}")
        out.update({k: v for k, v in kw.items() if v is not None})
        return out

    def _unsupported(self, capability: str, why: str = "") -> CapabilityError:
        return CapabilityError(self.name, capability, why)

    @abstractmethod
    def generate(self, prompt: str, **kw: Any) -> str:
        """Answer one prompt (the model's chat template applied where it has one)."""

    @abstractmethod
    def stream_generate(self, prompt: str, **kw: Any) -> Iterator[str]:
        """generate(), piece by piece as the text is produced."""

    @abstractmethod
    def chat(self, messages: list[Message], **kw: Any) -> str:
        """The assistant's reply to a list of {"role", "content"} messages."""

    def stream_chat(self, messages: list[Message], **kw: Any) -> Iterator[str]:
        raise self._unsupported("stream_chat")

    def embed(self, texts: list[str]) -> list[list[float]]:
        raise self._unsupported("embed")
