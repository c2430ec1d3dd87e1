"""An Ollama-compatible subset (`/api/tags`, `/api/version`, `/api/generate`, `/api/chat`, `/api/embed`).

Requests follow Ollama's API: streaming is on unless `"stream": false`, streams are NDJSON (one JSON
object per line, the last with `done: true` and the token counts and durations in nanoseconds), sampling
parameters sit in `options` with Ollama's names and defaults.  Unknown fields are ignored as Ollama's own
decoder does; wrongly typed known ones are 400s.  Model names may carry Ollama's `:latest` tag.
Everything runs through the same `_Service` as the OpenAI routes (scheduler, priorities, limits, auth);
errors use the server's envelope, except one that happens mid-stream, which is Ollama's own
`{"error": "..."}` line so Ollama clients raise it.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from wicore.engine.request import Priority, PriorityName, RequestOutput
from wicore.engine.worker import EMBEDDING_MODEL
from wicore.models import registry
from wicore.models.prepared import metadata
from wicore.server.app import (
    CLIENT_CLOSED,
    VERSION,
    StreamFormat,
    _ClientGone,
    _parse,
    _Seq,
    _Service,
)
from wicore.server.errors import APIError, validation_error
from wicore.server.protocol import PositiveInt, SamplingRequest

NDJSON = StreamFormat("application/x-ndjson", lambda e: json.dumps({"error": e.message}) + "\n", None)
LOAD = "load"  # done_reason of a request that only loads the model
# Ollama's defaults for a model whose Modelfile sets none.
DEFAULT_OPTIONS = {"temperature": 0.8, "top_p": 0.9, "top_k": 40}
# GGUF general.file_type -> Ollama's quantization label (the bundled models are all Q4_K_M).
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 7: "Q8_0", 15: "Q4_K_M", 17: "Q5_K_M", 18: "Q6_K"}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


# -- requests -----------------------------------------------------------------------------------------


class _OllamaRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class Options(_OllamaRequest):
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    num_predict: int | None = None  # -1 (Ollama's "until done") and -2 ("fill the context") use the default
    seed: int | None = None
    stop: list[str] | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    def sampling(self, priority: str) -> SamplingRequest:
        """The OpenAI routes' parameters (and their range checks); a bad value is a 400 naming `options.X`."""
        names = {"repeat_penalty": "repetition_penalty", "num_predict": "max_tokens"}
        given = {names.get(k, k): v for k, v in self.model_dump(exclude_none=True).items()}
        if given.get("max_tokens", 1) < 0:
            del given["max_tokens"]
        try:
            return SamplingRequest.model_validate({**DEFAULT_OPTIONS, **given, "priority": priority})
        except ValidationError as e:
            back = {v: k for k, v in names.items()}
            errors = [{**err, "loc": ("options", *(back.get(str(p), p) for p in err["loc"]))} for err in e.errors()]
            raise validation_error(errors) from None


class _GenerationRequest(_OllamaRequest):
    model: str
    options: Options = Options()
    stream: bool = True
    format: Literal[""] | None = None  # constrained output ("json", a schema) is not supported
    priority: PriorityName = "normal"  # WiCore's extension


class GenerateRequest(_GenerationRequest):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    images: list[str] | None = None

    @field_validator("images")
    @classmethod
    def _no_images(cls, value: list[str] | None) -> list[str] | None:
        if value:
            raise ValueError("images are not supported by this model")
        return value


class Message(_OllamaRequest):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_GenerationRequest):
    messages: list[Message] = []


class EmbedRequest(_OllamaRequest):
    model: str
    input: str | list[str]
    dimensions: PositiveInt | None = None
    truncate: bool = True


# -- responses ----------------------------------------------------------------------------------------


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class _Reply(BaseModel):
    model: str
    created_at: str
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None

    def line(self) -> str:
        return self.model_dump_json(exclude_none=True) + "\n"


class GenerateReply(_Reply):
    response: str


class ChatReply(_Reply):
    message: ChatMessageOut


def _final_stats(seq: _Seq) -> dict[str, Any]:
    t, now = seq.timer, time.time()
    first = t.first_token or now
    return {
        "done": True,
        "done_reason": seq.finish_reason,
        "total_duration": _ns(now - t.arrival),
        "load_duration": 0,  # the model stays loaded
        "prompt_eval_count": t.prompt_tokens,
        "prompt_eval_duration": _ns(first - t.arrival),
        "eval_count": len(seq.tokens) or t.completion_tokens,
        "eval_duration": _ns((t.last_token or first) - first),
    }


# -- routes -------------------------------------------------------------------------------------------


def router(service: _Service) -> APIRouter:
    api = APIRouter(prefix="/api")
    engine = service.engine
    chat_name = engine.model_name

    def resolve(model: str) -> str:
        name = model.removesuffix(":latest").removeprefix("wicore:")
        if name not in (chat_name, EMBEDDING_MODEL):
            raise APIError(404, f"model '{model}' not found", param="model")
        return name

    def chat_model(model: str) -> str:
        if resolve(model) != chat_name:
            raise APIError(400, f"model: `{model}` is an embedding model; it cannot generate text", param="model")
        return model

    def tag(name: str, path: Any, size: int, digest: str, details: dict[str, Any]) -> dict[str, Any]:
        modified = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC)
        return {
            "name": f"{name}:latest",
            "model": f"{name}:latest",
            "modified_at": modified.isoformat().replace("+00:00", "Z"),
            "size": size,
            "digest": digest,
            "details": {"parent_model": "", **details},
        }

    @api.get("/tags")
    async def tags() -> dict[str, Any]:
        spec = registry.BUNDLED.get(chat_name)
        path = registry.resolve(chat_name)
        meta = metadata(path)
        arch = str(meta.get("general.architecture", ""))
        file_type = int(meta.get("general.file_type", -1))
        models = [
            tag(
                chat_name, path, path.stat().st_size, spec.sha256 if spec else "",
                {
                    "format": "gguf", "family": arch, "families": [arch],
                    "parameter_size": meta.get("general.size_label", ""),
                    "quantization_level": FILE_TYPES.get(file_type, f"file_type {file_type}"),
                },
            )
        ]  # fmt: skip
        try:
            folder = registry.resolve_embedding(EMBEDDING_MODEL)
        except registry.ModelError:
            pass  # not pulled: not listed
        else:
            emb = registry.EMBEDDINGS[EMBEDDING_MODEL]
            details = {"format": "safetensors", "family": "bert", "families": ["bert"], "quantization_level": "F32"}
            models.append(tag(EMBEDDING_MODEL, folder / emb.weights, emb.size, emb.sha256, details))
        return {"models": models}

    @api.get("/version")
    async def version() -> dict[str, str]:
        return {"version": VERSION}

    async def run(
        request: Request, body: _GenerationRequest, seq: _Seq, reply: type[GenerateReply] | type[ChatReply]
    ) -> Response:
        def content(text: str) -> dict[str, Any]:
            return {"response": text} if reply is GenerateReply else {"message": ChatMessageOut(content=text)}

        def build() -> BaseModel:
            return reply(model=body.model, created_at=_now(), **content("".join(seq.text)), **_final_stats(seq))

        async def events(outputs: AsyncIterator[tuple[_Seq, RequestOutput]]) -> AsyncGenerator[str, None]:
            async for _, out in outputs:
                if out.text:
                    yield reply(model=body.model, created_at=_now(), done=False, **content(out.text)).line()
                if out.finish_reason is not None:
                    yield reply(model=body.model, created_at=_now(), **content(""), **_final_stats(seq)).line()

        return await service.respond(request, [seq], body.stream, build, events, NDJSON)

    def loaded(reply: _Reply) -> Response:
        """Ollama answers an empty prompt by loading the model: done at once, nothing generated."""
        return Response(reply.model_dump_json(exclude_none=True), media_type="application/json")

    @api.post("/generate", response_model=None)
    async def generate(request: Request) -> Response:
        body = await _parse(request, GenerateRequest)
        chat_model(body.model)
        if not body.prompt:
            return loaded(GenerateReply(model=body.model, created_at=_now(), response="", done=True, done_reason=LOAD))
        if body.raw:
            prompt_ids = engine.tokenizer.encode(body.prompt)
        else:  # as Ollama, the prompt goes through the model's chat template
            turns = ([{"role": "system", "content": body.system}] if body.system else []) + [
                {"role": "user", "content": body.prompt}
            ]
            prompt_ids = service.chat_prompt(turns, "prompt")
        seq = service.single(body.options.sampling(body.priority), prompt_ids, "prompt", "options.num_predict")
        return await run(request, body, seq, GenerateReply)

    @api.post("/chat", response_model=None)
    async def chat(request: Request) -> Response:
        body = await _parse(request, ChatRequest)
        chat_model(body.model)
        if not body.messages:
            message = ChatMessageOut(content="")
            return loaded(ChatReply(model=body.model, created_at=_now(), message=message, done=True, done_reason=LOAD))
        prompt_ids = service.chat_prompt([m.model_dump() for m in body.messages])
        seq = service.single(body.options.sampling(body.priority), prompt_ids, "messages", "options.num_predict")
        return await run(request, body, seq, ChatReply)

    @api.post("/embed", response_model=None)
    async def embed(request: Request) -> Response:
        body = await _parse(request, EmbedRequest)
        if resolve(body.model) != EMBEDDING_MODEL:
            raise APIError(400, f"model: `{body.model}` cannot embed; use {EMBEDDING_MODEL}", param="model")
        texts = [body.input] if isinstance(body.input, str) else body.input
        start = time.time()
        try:
            vectors, tokens = await service.embed(request, texts, body.dimensions, Priority.NORMAL, "input")
        except _ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        reply = {
            "model": body.model,
            "embeddings": vectors,
            "total_duration": _ns(time.time() - start),
            "load_duration": 0,
            "prompt_eval_count": tokens,
        }
        return Response(json.dumps(reply), media_type="application/json")

    return api
