"""An Ollama-compatible subset (`/api/tags`, `/api/version`, `/api/generate`, `/api/chat`, `/api/embed`).

Requests follow Ollama's API: streaming is on unless `"stream": false`, streams are NDJSON (one JSON
object per line, the last with `done: true` and the token counts and durations in nanoseconds), sampling
parameters sit in `options` with Ollama's names and defaults.  Model names may carry Ollama's `:latest` tag.
Requests convert into the shared service's GenerationRequest like the OpenAI routes' (scheduler,
priorities, limits, auth); errors use the server's envelope, except one that happens mid-stream, which is
Ollama's own `{"error": "..."}` line so Ollama clients raise it.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from wicore import __version__
from wicore.engine.request import Priority
from wicore.models import registry
from wicore.server.errors import APIError
from wicore.server.ollama.protocol import (
    OllamaChatMessage,
    OllamaChatReply,
    OllamaChatRequest,
    OllamaEmbedRequest,
    OllamaGenerateReply,
    OllamaGenerateRequest,
    OllamaGenerationRequest,
    OllamaReply,
)
from wicore.server.protocol import CHAT_DEFAULT_MAX_TOKENS, parse_body
from wicore.server.service import ChoiceSequence, GenerationRequest, GenerationService, Outputs
from wicore.server.streaming import StreamFormat

NDJSON = StreamFormat("application/x-ndjson", lambda e: json.dumps({"error": e.message}) + "\n", None)
LOAD = "load"  # done_reason of a request that only loads the model
# GGUF general.file_type -> Ollama's quantization label (the bundled models are all Q4_K_M).
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 7: "Q8_0", 15: "Q4_K_M", 17: "Q5_K_M", 18: "Q6_K"}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def _final_stats(seq: ChoiceSequence) -> dict[str, Any]:
    t, now = seq.timer, time.time()
    first = t.first_token or now
    return {
        "done": True,
        "done_reason": seq.finish_reason,
        "total_duration": _ns(now - t.arrival),
        "load_duration": 0,  # the model stays loaded
        "prompt_eval_count": t.prompt_tokens,
        "prompt_eval_duration": _ns(first - t.arrival),
        "eval_count": len(seq.tokens),
        "eval_duration": _ns((t.last_token or first) - first),
    }


# -- routes -------------------------------------------------------------------------------------------


def format_grammar(body: OllamaGenerationRequest) -> str | None:
    """The grammar `format` asks for, checked before anything is queued (400 naming `format`)."""
    try:
        return body.grammar()
    except ValueError as e:
        raise APIError(400, str(e), param="format") from None


def router(service: GenerationService) -> APIRouter:
    api = APIRouter(prefix="/api")
    catalogue, engine = service.catalogue, service.engine

    def resolve(model: str) -> str:
        name = model.removesuffix(":latest").removeprefix("wicore:")
        if catalogue.kind(name) is None:
            raise APIError(404, f"model '{model}' not found", param="model")
        return name

    def chat_model(model: str) -> str:
        if resolve(model) != catalogue.chat_name:
            raise APIError(400, f"model: `{model}` is an embedding model; it cannot generate text", param="model")
        return model

    def tag(name: str, path: Path, size: int, digest: str, details: dict[str, Any]) -> dict[str, Any]:
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
        chat_name, path, meta = catalogue.chat_name, catalogue.chat_path, catalogue.chat_metadata
        spec = registry.BUNDLED.get(chat_name)
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
        if catalogue.embedding_present():  # one not pulled is not listed
            name = catalogue.embedding_name
            emb = registry.EMBEDDINGS[name]
            details = {"format": "safetensors", "family": "bert", "families": ["bert"], "quantization_level": "F32"}
            models.append(tag(name, catalogue.embedding_folder() / emb.weights, emb.size, emb.sha256, details))
        return {"models": models}

    @api.get("/version")
    async def version() -> dict[str, str]:
        return {"version": __version__}

    async def run(
        request: Request, body: OllamaGenerationRequest, prompt_ids: list[int], prompt_param: str,
        reply: type[OllamaGenerateReply] | type[OllamaChatReply],
    ) -> Response:  # fmt: skip
        sampling = body.options.sampling(body.priority)
        generation = GenerationRequest(
            [prompt_ids], sampling, sampling.max_tokens, CHAT_DEFAULT_MAX_TOKENS,
            prompt_param=prompt_param, max_tokens_param="options.num_predict", grammar=format_grammar(body),
        )  # fmt: skip
        _, (seq,) = service.start(generation)

        def content(text: str) -> dict[str, Any]:
            return {"response": text} if reply is OllamaGenerateReply else {"message": OllamaChatMessage(content=text)}

        def build() -> BaseModel:
            return reply(model=body.model, created_at=_now(), **content("".join(seq.text)), **_final_stats(seq))

        async def events(outputs: Outputs) -> AsyncGenerator[str, None]:
            async for _, out in outputs:
                if out.text:
                    yield reply(model=body.model, created_at=_now(), done=False, **content(out.text)).line()
                if out.finish_reason is not None:
                    yield reply(model=body.model, created_at=_now(), **content(""), **_final_stats(seq)).line()

        return await service.respond(request, [seq], body.stream, build, events, NDJSON)

    def loaded(reply: OllamaReply) -> Response:
        """Ollama answers an empty prompt by loading the model: done at once, nothing generated."""
        return Response(reply.model_dump_json(exclude_none=True), media_type="application/json")

    @api.post("/generate", response_model=None)
    async def generate(request: Request) -> Response:
        body = await parse_body(request, OllamaGenerateRequest)
        chat_model(body.model)
        if not body.prompt:
            reply = OllamaGenerateReply(model=body.model, created_at=_now(), response="", done=True, done_reason=LOAD)
            return loaded(reply)
        if body.raw:
            prompt_ids = engine.tokenizer.encode(body.prompt)
        else:  # as Ollama, the prompt goes through the model's chat template
            turns = ([{"role": "system", "content": body.system}] if body.system else []) + [
                {"role": "user", "content": body.prompt}
            ]
            prompt_ids = service.chat_prompt(turns, "prompt")
        return await run(request, body, prompt_ids, "prompt", OllamaGenerateReply)

    @api.post("/chat", response_model=None)
    async def chat(request: Request) -> Response:
        body = await parse_body(request, OllamaChatRequest)
        chat_model(body.model)
        if not body.messages:
            message = OllamaChatMessage(content="")
            reply = OllamaChatReply(model=body.model, created_at=_now(), message=message, done=True, done_reason=LOAD)
            return loaded(reply)
        prompt_ids = service.chat_prompt([m.model_dump() for m in body.messages])
        return await run(request, body, prompt_ids, "messages", OllamaChatReply)

    @api.post("/embed", response_model=None)
    async def embed(request: Request) -> Response:
        body = await parse_body(request, OllamaEmbedRequest)
        name = catalogue.embedding_name
        if resolve(body.model) != name:
            raise APIError(400, f"model: `{body.model}` cannot embed; use {name}", param="model")
        texts = [body.input] if isinstance(body.input, str) else body.input
        start = time.time()
        vectors, tokens = await service.embed(request, texts, body.dimensions, Priority.NORMAL, "input")
        reply = {
            "model": body.model,
            "embeddings": vectors,
            "total_duration": _ns(time.time() - start),
            "load_duration": 0,
            "prompt_eval_count": tokens,
        }
        return Response(json.dumps(reply), media_type="application/json")

    return api
