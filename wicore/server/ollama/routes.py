"""An Ollama-compatible subset (`/api/tags`, `/api/show`, `/api/ps`, `/api/pull`, `/api/version`,
`/api/generate`, `/api/chat`, `/api/embed`, `/api/embeddings`).

Requests follow Ollama's API: streaming is on unless `"stream": false`, streams are NDJSON (one JSON
object per line, the last with `done: true` and the token counts and durations in nanoseconds), sampling
parameters sit in `options` with Ollama's names and defaults.  Model names may carry Ollama's `:latest` tag.
Requests convert into the shared service's GenerationRequest like the OpenAI routes' (scheduler,
priorities, limits, auth). Errors are Ollama's own `{"error": "..."}` (with the status, or as the last
line of a stream that already began), which Ollama's clients raise as their ResponseError.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from wicore import __version__
from wicore.engine.request import Priority
from wicore.models import registry
from wicore.server.catalogue import count_label
from wicore.server.errors import APIError
from wicore.server.ollama.protocol import (
    DEFAULT_OPTIONS,
    OllamaChatMessage,
    OllamaChatReply,
    OllamaChatRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaGenerateReply,
    OllamaGenerateRequest,
    OllamaGenerationRequest,
    OllamaModelRequest,
    OllamaReply,
)
from wicore.server.ollama.tool_calls import OllamaChatTools
from wicore.server.protocol import CHAT_DEFAULT_MAX_TOKENS, parse_body
from wicore.server.service import ChoiceSequence, GenerationRequest, GenerationService, Outputs
from wicore.server.streaming import StreamFormat
from wicore.server.tools import call_format

log = structlog.get_logger(__name__)
NDJSON = StreamFormat("application/x-ndjson", lambda e: json.dumps({"error": e.message}) + "\n", None)
LOAD = "load"  # done_reason of a request that only loads the model
SUCCESS = {"status": "success"}  # the last line of a pull
FOREVER = "2318-01-01T00:00:00Z"  # expires_at of a model that stays loaded (what Ollama shows for keep_alive -1)
# GGUF general.file_type -> Ollama's quantization label (the bundled models are all Q4_K_M).
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 7: "Q8_0", 15: "Q4_K_M", 17: "Q5_K_M", 18: "Q6_K"}


def _timestamp(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat().replace("+00:00", "Z")


def _now() -> str:
    return _timestamp(time.time())


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

    def chat_details() -> dict[str, Any]:
        meta = catalogue.chat_metadata
        arch = str(meta.get("general.architecture", ""))
        file_type = int(meta.get("general.file_type", -1))
        return {
            "parent_model": "", "format": "gguf", "family": arch, "families": [arch],
            "parameter_size": meta.get("general.size_label", ""),
            "quantization_level": FILE_TYPES.get(file_type, f"file_type {file_type}"),
        }  # fmt: skip

    def embedding_details() -> dict[str, Any]:
        size = count_label(catalogue.embedding_parameters())
        return {"parent_model": "", "format": "safetensors", "family": "bert", "families": ["bert"],
                "parameter_size": size, "quantization_level": "F32"}  # fmt: skip

    def chat_digest() -> str:
        spec = registry.BUNDLED.get(catalogue.chat_name)
        return spec.sha256 if spec else ""

    def embedding_model(model: str) -> None:
        name = catalogue.embedding_name
        if resolve(model) != name:
            raise APIError(400, f"model: `{model}` cannot embed; use {name}", param="model")

    def tag(name: str, path: Path, size: int, digest: str, details: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": f"{name}:latest",
            "model": f"{name}:latest",
            "modified_at": _timestamp(path.stat().st_mtime),
            "size": size,
            "digest": digest,
            "details": details,
        }

    def chat_tag() -> dict[str, Any]:
        path = catalogue.chat_path
        return tag(catalogue.chat_name, path, path.stat().st_size, chat_digest(), chat_details())

    @api.get("/tags")
    async def tags() -> dict[str, Any]:
        models = [chat_tag()]
        if catalogue.embedding_present():  # one not pulled is not listed
            name = catalogue.embedding_name
            emb = registry.EMBEDDINGS[name]
            models.append(tag(name, catalogue.embedding_folder() / emb.weights, emb.size, emb.sha256,
                              embedding_details()))  # fmt: skip
        return {"models": models}

    @api.get("/ps")
    async def ps() -> dict[str, Any]:
        # The chat model is loaded for the server's lifetime (Ollama's keep_alive -1), in host memory.
        loaded = {**chat_tag(), "expires_at": FOREVER, "size_vram": 0, "context_length": engine.max_model_len}
        del loaded["modified_at"]
        return {"models": [loaded]}

    @api.post("/show")
    async def show(request: Request) -> dict[str, Any]:
        body = await parse_body(request, OllamaModelRequest)
        name = resolve(body.model)
        if name == catalogue.chat_name:
            meta = catalogue.chat_metadata
            template = str(meta.get("tokenizer.chat_template", ""))
            model_info = {k: v for k, v in meta.items() if k != "tokenizer.chat_template"}
            path, details, capabilities = catalogue.chat_path, chat_details(), ["completion"]
        else:
            config = catalogue.embedding_config()
            template = ""
            model_info = {
                "general.architecture": "bert",
                "general.parameter_count": catalogue.embedding_parameters(),
                "bert.context_length": catalogue.embedding_max_length(),
                "bert.embedding_length": config["hidden_size"],
                "bert.block_count": config["num_hidden_layers"],
                "bert.attention.head_count": config["num_attention_heads"],
                "bert.pooling_type": "mean",
            }
            path, details, capabilities = catalogue.embedding_folder(), embedding_details(), ["embedding"]
        parameters = "\n".join(f"{k} {v}" for k, v in DEFAULT_OPTIONS.items()) if template else ""
        modelfile = f'# Modelfile generated by "ollama show"\nFROM {path}\n'
        if template:
            modelfile += f'TEMPLATE """{template}"""\n' + "".join(f"PARAMETER {p}\n" for p in parameters.splitlines())
        return {
            "modelfile": modelfile,
            "parameters": parameters,
            "template": template,
            "details": details,
            "model_info": model_info,
            "capabilities": capabilities,
            "modified_at": _timestamp(path.stat().st_mtime),
        }

    @api.post("/pull", response_model=None)
    async def pull(request: Request) -> Response:
        body = await parse_body(request, OllamaModelRequest)
        name = body.model.removesuffix(":latest").removeprefix("wicore:")
        if name not in registry.BUNDLED and name not in registry.EMBEDDINGS:
            known = ", ".join(sorted([*registry.BUNDLED, *registry.EMBEDDINGS]))
            raise APIError(404, f"pull model manifest: model '{body.model}' not found; bundled models are: {known}")
        loop = asyncio.get_running_loop()
        progress: asyncio.Queue[str | None] = asyncio.Queue()  # None: the download ended

        def report(line: str) -> None:  # called from the download's thread
            loop.call_soon_threadsafe(progress.put_nowait, line)

        # Downloading and verifying (a sha256 over the whole file) take seconds to minutes: off the event loop.
        # The thread's lines are queued before its end is, so the None comes last.
        download = asyncio.ensure_future(asyncio.to_thread(registry.pull, name, log=report))
        download.add_done_callback(lambda _: progress.put_nowait(None))
        if not body.stream:
            try:
                await download
            except registry.ModelError as e:
                raise APIError(500, str(e)) from None
            return JSONResponse(SUCCESS)

        async def lines() -> AsyncGenerator[str, None]:
            yield json.dumps({"status": "pulling manifest"}) + "\n"
            while (line := await progress.get()) is not None:
                yield json.dumps({"status": line}) + "\n"
            error = download.exception()
            if error is None:
                yield json.dumps(SUCCESS) + "\n"
                return
            if not isinstance(error, registry.ModelError):
                log.error("pull failed", model=name, error=repr(error))
            yield json.dumps({"error": str(error) if isinstance(error, registry.ModelError) else "pull failed"}) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @api.get("/version")
    async def version() -> dict[str, str]:
        return {"version": __version__}

    async def run(
        request: Request, body: OllamaGenerationRequest, prompt_ids: list[int], prompt_param: str,
        reply: type[OllamaGenerateReply] | type[OllamaChatReply], tools: OllamaChatTools | None = None,
    ) -> Response:  # fmt: skip
        """Generate for /api/generate, or /api/chat (with its `tools`)."""
        sampling = body.options.sampling(body.priority)
        grammar = format_grammar(body)
        generation = GenerationRequest(
            [prompt_ids], sampling, sampling.max_tokens, CHAT_DEFAULT_MAX_TOKENS,
            prompt_param=prompt_param, max_tokens_param="options.num_predict",
            grammar=grammar if tools is None else tools.grammar(grammar),
        )  # fmt: skip
        _, (seq,) = service.start(generation)

        def content(text: str) -> dict[str, Any]:
            return {"response": text} if tools is None else {"message": tools.message(text)}

        def pieces(text: str, done: bool) -> list[dict[str, Any]]:
            if tools is None:
                return [content(text)] if text else []
            return [{"message": message} for message in tools.stream(text, done)]

        def build() -> BaseModel:
            return reply(model=body.model, created_at=_now(), **content("".join(seq.text)), **_final_stats(seq))

        async def events(outputs: Outputs) -> AsyncGenerator[str, None]:
            async for _, out in outputs:
                for piece in pieces(out.text, out.finish_reason is not None):
                    yield reply(model=body.model, created_at=_now(), done=False, **piece).line()
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
            prompt_ids = await service.encode(body.prompt)
        else:  # as Ollama, the prompt goes through the model's chat template
            turns = ([{"role": "system", "content": body.system}] if body.system else []) + [
                {"role": "user", "content": body.prompt}
            ]
            prompt_ids = await service.chat_prompt(turns, "prompt")
        return await run(request, body, prompt_ids, "prompt", OllamaGenerateReply)

    @api.post("/chat", response_model=None)
    async def chat(request: Request) -> Response:
        body = await parse_body(request, OllamaChatRequest)
        chat_model(body.model)
        if not body.messages:
            message = OllamaChatMessage(content="")
            reply = OllamaChatReply(model=body.model, created_at=_now(), message=message, done=True, done_reason=LOAD)
            return loaded(reply)
        tools = OllamaChatTools(body, call_format(engine.tokenizer))
        conversation, template_tools = tools.template_inputs()
        prompt_ids = await service.chat_prompt(conversation, tools=template_tools)
        return await run(request, body, prompt_ids, "messages", OllamaChatReply, tools)

    @api.post("/embeddings", response_model=None)
    async def embeddings(request: Request) -> Response:
        """The legacy route: one prompt, one vector (`[]` for an empty prompt, as Ollama answers)."""
        body = await parse_body(request, OllamaEmbeddingsRequest)
        embedding_model(body.model)
        if not body.prompt:
            return JSONResponse({"embedding": []})
        (vector,), _ = await service.embed(request, [body.prompt], None, Priority.NORMAL, "prompt", truncate=True)
        return JSONResponse({"embedding": vector})

    @api.post("/embed", response_model=None)
    async def embed(request: Request) -> Response:
        body = await parse_body(request, OllamaEmbedRequest)
        embedding_model(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        start = time.time()
        vectors, tokens = await service.embed(request, texts, body.dimensions, Priority.NORMAL, "input", body.truncate)
        reply = {
            "model": body.model,
            "embeddings": vectors,
            "total_duration": _ns(time.time() - start),
            "load_duration": 0,
            "prompt_eval_count": tokens,
        }
        return Response(json.dumps(reply), media_type="application/json")

    return api
