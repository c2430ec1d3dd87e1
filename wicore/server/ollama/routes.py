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
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from wicore import __version__
from wicore.engine.request import Priority
from wicore.models import registry
from wicore.server.catalogue import CatalogueEntry, ModelKind, count_label
from wicore.server.errors import APIError
from wicore.server.models import ServedModels
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
    OllamaModelUse,
    OllamaReply,
)
from wicore.server.ollama.tool_calls import OllamaChatTools
from wicore.server.openapi import BAD_REQUEST, NOT_FOUND, documented
from wicore.server.protocol import CHAT_DEFAULT_MAX_TOKENS, parse_body
from wicore.server.service import ChoiceSequence, GenerationRequest, GenerationService, Outputs
from wicore.server.streaming import StreamFormat
from wicore.server.tools import call_format

log = structlog.get_logger(__name__)
NDJSON = StreamFormat("application/x-ndjson", lambda e: json.dumps({"error": e.message}) + "\n", None)
LOAD = "load"  # done_reason of a request that only loads the model
UNLOAD = "unload"  # done_reason of a request that only unloads it (keep_alive 0)
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


def _final_stats(seq: ChoiceSequence, load_seconds: float) -> dict[str, Any]:
    """Ollama's closing figures; the request's clock starts once its model is loaded, so the load is added."""
    t, now = seq.timer, time.time()
    first = t.first_token or now
    return {
        "done": True,
        "done_reason": seq.finish_reason,
        "total_duration": _ns(now - t.arrival + load_seconds),
        "load_duration": _ns(load_seconds),
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


def router(models: ServedModels) -> APIRouter:
    api = APIRouter(prefix="/api")
    catalogue = models.catalogue

    def bare(model: str) -> str:
        return model.removesuffix(":latest").removeprefix("wicore:")

    async def use(request: Request, body: OllamaModelUse, kind: ModelKind) -> GenerationService:
        """The service of the model `body` names, loaded; its keep_alive applies once the response ends."""
        return await models.service(request, bare(body.model), kind, keep_alive=body.keep_alive, shown=body.model)

    def chat_details(name: str) -> dict[str, Any]:
        meta = catalogue.chat_metadata(name)
        arch = str(meta.get("general.architecture", ""))
        file_type = int(meta.get("general.file_type", -1))
        return {
            "parent_model": "", "format": "gguf", "family": arch, "families": [arch],
            "parameter_size": meta.get("general.size_label", ""),
            "quantization_level": FILE_TYPES.get(file_type, f"file_type {file_type}"),
        }  # fmt: skip

    def embedding_details(name: str) -> dict[str, Any]:
        size = count_label(catalogue.embedding_parameters(name))
        return {"parent_model": "", "format": "safetensors", "family": "bert", "families": ["bert"],
                "parameter_size": size, "quantization_level": "F32"}  # fmt: skip

    def tag(entry: CatalogueEntry) -> dict[str, Any]:
        name = entry.name
        if entry.kind == "chat":
            spec = registry.BUNDLED.get(name)
            path, size, digest = entry.path, entry.path.stat().st_size, spec.sha256 if spec else ""
            details = chat_details(name)
        else:
            emb = registry.EMBEDDINGS[name]
            path, size, digest, details = entry.path / emb.weights, emb.size, emb.sha256, embedding_details(name)
        return {
            "name": f"{name}:latest",
            "model": f"{name}:latest",
            "modified_at": _timestamp(path.stat().st_mtime),
            "size": size,
            "digest": digest,
            "details": details,
            "loaded": models.state(name) == "loaded",
        }

    @api.get("/tags")
    async def tags() -> dict[str, Any]:
        return {"models": [tag(e) for e in catalogue.entries().values()]}

    @api.get("/ps")
    async def ps() -> dict[str, Any]:
        """The loaded models, most recently used first; `size` is the worker's estimated memory, all of
        it in host memory."""
        loaded = []
        for info in models.loaded():
            shown = {k: v for k, v in tag(catalogue.entry(info.name)).items() if k not in ("modified_at", "loaded")}
            expires = FOREVER if info.expires_at is None else _timestamp(info.expires_at)
            loaded.append({**shown, "size": info.engine.memory, "expires_at": expires, "size_vram": 0,
                           "context_length": info.engine.max_model_len})  # fmt: skip
        return {"models": loaded}

    @api.post("/show", **documented(OllamaModelRequest, errors={**BAD_REQUEST, **NOT_FOUND}))
    async def show(request: Request) -> dict[str, Any]:
        body = await parse_body(request, OllamaModelRequest)
        entry = catalogue.entry(bare(body.model), shown=body.model)
        name = entry.name
        if entry.kind == "chat":
            meta = catalogue.chat_metadata(name)
            template = str(meta.get("tokenizer.chat_template", ""))
            model_info = {k: v for k, v in meta.items() if k != "tokenizer.chat_template"}
            # Tools work with any chat template: one without a tools section gets them in a system prompt.
            capabilities = ["completion", "tools"] if template else ["completion"]
            path, details = entry.path, chat_details(name)
        else:
            config = catalogue.embedding_config(name)
            template = ""
            model_info = {
                "general.architecture": "bert",
                "general.parameter_count": catalogue.embedding_parameters(name),
                "bert.context_length": catalogue.embedding_max_length(name),
                "bert.embedding_length": config["hidden_size"],
                "bert.block_count": config["num_hidden_layers"],
                "bert.attention.head_count": config["num_attention_heads"],
                "bert.pooling_type": "mean",
            }
            path, details, capabilities = entry.path, embedding_details(name), ["embedding"]
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

    @api.post(
        "/pull",
        response_model=None,
        **documented(
            OllamaModelRequest,
            stream=NDJSON.media_type,
            errors={**BAD_REQUEST, **NOT_FOUND, 500: "the download failed"},
        ),
    )
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
        request: Request, service: GenerationService, body: OllamaGenerationRequest, prompt_ids: list[int],
        prompt_param: str, reply: type[OllamaGenerateReply] | type[OllamaChatReply],
        tools: OllamaChatTools | None = None,
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
            stats = _final_stats(seq, service.load_seconds)
            return reply(model=body.model, created_at=_now(), **content("".join(seq.text)), **stats)

        async def events(outputs: Outputs) -> AsyncGenerator[str, None]:
            async for _, out in outputs:
                for piece in pieces(out.text, out.finish_reason is not None):
                    yield reply(model=body.model, created_at=_now(), done=False, **piece).line()
                if out.finish_reason is not None:
                    stats = _final_stats(seq, service.load_seconds)
                    yield reply(model=body.model, created_at=_now(), **content(""), **stats).line()

        return await service.respond(request, [seq], body.stream, build, events, NDJSON)

    async def load_only(request: Request, body: OllamaGenerationRequest, reply: type[OllamaReply],
                        **content: Any) -> Response:  # fmt: skip
        """Ollama answers an empty prompt by loading the model (done at once, nothing generated), or with
        `keep_alive: 0` by unloading it (`ollama stop`)."""
        unload = body.keep_alive == 0
        if not unload or models.state(bare(body.model)) != "unloaded":
            await use(request, body, "chat")  # keep_alive 0 unloads it as this response ends
        answer = reply(
            model=body.model, created_at=_now(), done=True, done_reason=UNLOAD if unload else LOAD, **content
        )
        return Response(answer.model_dump_json(exclude_none=True), media_type="application/json")

    @api.post(
        "/generate",
        response_model=None,
        **documented(OllamaGenerateRequest, OllamaGenerateReply, stream=NDJSON.media_type),
    )
    async def generate(request: Request) -> Response:
        body = await parse_body(request, OllamaGenerateRequest)
        if not body.prompt:
            return await load_only(request, body, OllamaGenerateReply, response="")
        service = await use(request, body, "chat")
        if body.raw:
            prompt_ids = await service.encode(body.prompt)
        else:  # as Ollama, the prompt goes through the model's chat template
            turns = ([{"role": "system", "content": body.system}] if body.system else []) + [
                {"role": "user", "content": body.prompt}
            ]
            prompt_ids = await service.chat_prompt(turns, "prompt")
        return await run(request, service, body, prompt_ids, "prompt", OllamaGenerateReply)

    @api.post("/chat", response_model=None, **documented(OllamaChatRequest, OllamaChatReply, stream=NDJSON.media_type))
    async def chat(request: Request) -> Response:
        body = await parse_body(request, OllamaChatRequest)
        if not body.messages:
            return await load_only(request, body, OllamaChatReply, message=OllamaChatMessage(content=""))
        service = await use(request, body, "chat")
        tools = OllamaChatTools(body, call_format(service.engine.tokenizer))
        conversation, template_tools = tools.template_inputs()
        prompt_ids = await service.chat_prompt(conversation, tools=template_tools)
        return await run(request, service, body, prompt_ids, "messages", OllamaChatReply, tools)

    @api.post("/embeddings", response_model=None, **documented(OllamaEmbeddingsRequest))
    async def embeddings(request: Request) -> Response:
        """The legacy route: one prompt, one vector (`[]` for an empty prompt, as Ollama answers)."""
        body = await parse_body(request, OllamaEmbeddingsRequest)
        service = await use(request, body, "embedding")
        if not body.prompt:
            return JSONResponse({"embedding": []})
        (vector,), _ = await service.embed(request, [body.prompt], None, Priority.NORMAL, "prompt", truncate=True)
        return JSONResponse({"embedding": vector})

    @api.post("/embed", response_model=None, **documented(OllamaEmbedRequest))
    async def embed(request: Request) -> Response:
        body = await parse_body(request, OllamaEmbedRequest)
        service = await use(request, body, "embedding")
        texts = [body.input] if isinstance(body.input, str) else body.input
        start = time.time()
        vectors, tokens = await service.embed(request, texts, body.dimensions, Priority.NORMAL, "input", body.truncate)
        reply = {
            "model": body.model,
            "embeddings": vectors,
            "total_duration": _ns(time.time() - start + service.load_seconds),
            "load_duration": _ns(service.load_seconds),
            "prompt_eval_count": tokens,
        }
        return Response(json.dumps(reply), media_type="application/json")

    return api
