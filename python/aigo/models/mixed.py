"""Route each capability to its own runners, falling back along the list when one fails."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from aigo.models.base import CapabilityError, Message, ModelConfig, Runner, RunnerError

T = TypeVar("T")
CAPABILITIES = ("chat", "generate", "embed")
log = logging.getLogger(__name__)


class MixedModelRunner(Runner):
    """`routes` maps "chat" / "generate" / "embed" to runners tried in order: a runner that fails
    (server down, model missing, capability lacking) hands the call to the next one. Streaming falls
    back only before the first piece arrives, since a caller cannot take back text already shown."""

    def __init__(self, config: ModelConfig, routes: dict[str, list[Runner]]) -> None:
        super().__init__(config)
        unknown = set(routes) - set(CAPABILITIES)
        if unknown:
            raise ValueError(f"MixedModelRunner routes: unknown capabilities {sorted(unknown)}; use {CAPABILITIES}")
        self.routes = routes

    @property
    def name(self) -> str:
        return "MixedModelRunner"

    def _load(self) -> None:
        # A runner that cannot load now may still answer later (a server starting up): calls retry it.
        for runners in self.routes.values():
            for runner in runners:
                try:
                    runner.load()
                except RunnerError as e:
                    log.warning("runner failed to load", extra={"runner": runner.name, "error": str(e)})

    def _runners(self, capability: str) -> list[Runner]:
        runners = self.routes.get(capability)
        if not runners:
            raise self._unsupported(capability, f"no runner is routed for it (routes: {sorted(self.routes)})")
        return runners

    def _first(self, capability: str, call: Callable[[Runner], T]) -> T:
        failures = []
        for runner in self._runners(capability):
            try:
                return call(runner)
            except (RunnerError, CapabilityError) as e:
                log.warning("runner failed, trying the next", extra={"runner": runner.name, "error": str(e)})
                failures.append(f"{runner.name}: {e}")
        raise RunnerError(f"every runner failed for {capability}: " + "; ".join(failures))

    def _first_stream(self, capability: str, call: Callable[[Runner], Iterator[str]]) -> Iterator[str]:
        def start(runner: Runner) -> tuple[str, Iterator[str]]:
            stream = iter(call(runner))
            return next(stream, ""), stream  # the first piece proves the runner works

        first, rest = self._first(capability, start)
        if first:
            yield first
        yield from rest

    def generate(self, prompt: str, **kw: Any) -> str:
        return self._first("generate", lambda r: r.generate(prompt, **kw))

    def stream_generate(self, prompt: str, **kw: Any) -> Iterator[str]:
        return self._first_stream("generate", lambda r: r.stream_generate(prompt, **kw))

    def chat(self, messages: list[Message], **kw: Any) -> str:
        return self._first("chat", lambda r: r.chat(messages, **kw))

    def stream_chat(self, messages: list[Message], **kw: Any) -> Iterator[str]:
        return self._first_stream("chat", lambda r: r.stream_chat(messages, **kw))

    def embed(self, texts: list[str]) -> list[list[float]]:
        return self._first("embed", lambda r: r.embed(texts))
