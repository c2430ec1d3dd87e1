"""Model runners: `get_model_runner(ModelConfig(provider=..., model_name=...))`."""

from __future__ import annotations

from aigo.models.base import CapabilityError, ModelConfig, Runner, RunnerError
from aigo.models.local import HuggingFaceRunner, WiCoreRunner
from aigo.models.mixed import MixedModelRunner
from aigo.models.remote import OllamaRunner, OpenAIRunner

__all__ = [
    "CapabilityError",
    "HuggingFaceRunner",
    "MixedModelRunner",
    "ModelConfig",
    "RunnerError",
    "Runner",
    "OllamaRunner",
    "OpenAIRunner",
    "WiCoreRunner",
    "get_model_runner",
]


def get_model_runner(config: ModelConfig) -> Runner:
    """The runner for `config.provider`: ollama, openai, huggingface, wicore or mixed.

    provider="wicore" runs a bundled model in this process, or, given a base_url, talks to a WiCore
    server through its OpenAI-compatible API. provider="mixed" builds one runner per entry of
    `config.routes`.
    """
    provider = config.provider.lower()
    if provider == "ollama":
        return OllamaRunner(config)
    if provider == "openai" or (provider == "wicore" and config.base_url):
        return OpenAIRunner(config)
    if provider == "wicore":
        return WiCoreRunner(config)
    if provider in ("huggingface", "hf"):
        return HuggingFaceRunner(config)
    if provider == "mixed":
        routes = {cap: [get_model_runner(c) for c in configs] for cap, configs in config.routes.items()}
        return MixedModelRunner(config, routes)
    raise ValueError(f"unknown provider {config.provider!r}; use ollama, openai, huggingface, wicore or mixed")
