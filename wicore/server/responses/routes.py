"""The Responses API route: POST /v1/responses (and /responses, as the other OpenAI routes).

A request becomes one chat-templated GenerationRequest (its function tools shown by the template and
enforced by grammar, server/tools.py); the answer is a `response` object whose output is the assistant's
message and its function calls (responses/output.py).

Streams are SSE events named by their type and numbered by `sequence_number`, as OpenAI sends them:
response.created, response.in_progress, then for each output item its added event, its text (content
part added, text deltas, text and part done) or its call's arguments (deltas, done), its done event, and
last response.completed (or response.incomplete when max_output_tokens cut it). An error after the
stream began is one `error` event; nothing follows it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import Response

from wicore.engine.request import FinishReason
from wicore.server.errors import APIError
from wicore.server.models import ServedModels
from wicore.server.openai.logprobs import LogprobRenderer
from wicore.server.openai.protocol import ChatLogprob
from wicore.server.openapi import documented
from wicore.server.protocol import CHAT_DEFAULT_MAX_TOKENS, conversation, parse_body
from wicore.server.responses.output import OutputItems
from wicore.server.responses.protocol import (
    ErrorEvent,
    IncompleteDetails,
    OutputItem,
    ResponseEvent,
    ResponseObject,
    ResponsesRequest,
    ResponseStateEvent,
    ResponseUsage,
    TextConfig,
)
from wicore.server.service import GenerationRequest, Outputs, cached_tokens
from wicore.server.streaming import StreamFormat, sse
from wicore.server.tools import CallFormat, ToolCalling, call_format, template_inputs


class EventStream:
    """The events of one streamed response, numbered in the order they are sent."""

    def __init__(self) -> None:
        self.sent = 0

    def event(self, event: ResponseEvent) -> str:
        event.sequence_number = self.sent
        self.sent += 1
        return sse(event, event.type)

    def error(self, error: APIError) -> str:
        return self.event(ErrorEvent(code=str(error.status), message=error.message, param=error.param))

    def format(self) -> StreamFormat:
        # No closing line: a Responses stream ends with its terminal event (or the error event).
        return StreamFormat("text/event-stream", self.error, None)


def checked_grammar(body: ResponsesRequest, calling: ToolCalling, fmt: CallFormat) -> str | None:
    """The grammar of the output (the answer's format, the tool calls), checked before anything is
    queued: a schema llguidance cannot compile is a 400 naming its field."""
    try:
        answer = None if body.text is None else body.text.grammar()
    except ValueError as e:
        raise APIError(400, str(e), param="text.format") from None
    if not calling.active:
        return answer
    return calling.grammar(fmt, None if body.text is None else body.text.schema())  # ToolError: a 400


def router(models: ServedModels) -> APIRouter:
    api = APIRouter()

    @api.post(
        "/v1/responses", response_model=None, **documented(ResponsesRequest, ResponseObject, stream="text/event-stream")
    )
    @api.post("/responses", response_model=None, include_in_schema=False)
    async def create(request: Request) -> Response:
        body = await parse_body(request, ResponsesRequest)
        service = await models.service(request, body.model)
        engine, render = service.engine, LogprobRenderer(service.engine.tokenizer)
        sampling = body.sampling()
        calling = body.tool_calling()  # ToolError: a 400 naming the field
        fmt = call_format(engine.tokenizer)
        grammar = checked_grammar(body, calling, fmt)
        messages, template_tools = template_inputs(conversation(body.messages()), calling.offered, fmt)
        prompt_ids = await service.chat_prompt(messages, param="input", tools=template_tools)
        request_id, seqs = service.start(
            GenerationRequest(
                [prompt_ids], sampling, body.max_output_tokens, CHAT_DEFAULT_MAX_TOKENS, body.num_logprobs,
                prompt_param="input", max_tokens_param="max_output_tokens", grammar=grammar,
            )
        )  # fmt: skip
        (seq,) = seqs
        response_id, created = f"resp_{request_id}", int(time.time())
        callable_names = [t.name for t in calling.callable()]
        structlog.contextvars.bind_contextvars(completion_id=response_id)

        def response(output: list[OutputItem]) -> ResponseObject:
            """The response object: in progress until the sequence finished, then with its usage."""
            done, cut = seq.finish_reason is not None, seq.finish_reason == FinishReason.LENGTH
            status = "in_progress" if not done else "incomplete" if cut else "completed"
            return ResponseObject(
                id=response_id,
                created_at=created,
                completed_at=int(time.time()) if status == "completed" else None,
                status=status,
                incomplete_details=IncompleteDetails() if cut else None,
                instructions=body.instructions,
                max_output_tokens=body.max_output_tokens,
                model=engine.model_name,
                output=output,
                parallel_tool_calls=calling.parallel,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                text=body.text or TextConfig(),
                tool_choice=body.tool_choice,
                tools=body.tools or [],
                usage=ResponseUsage.of(len(prompt_ids), len(seq.tokens), cached_tokens(seqs, 1)) if done else None,
                user=body.user,
                metadata=body.metadata or {},
                top_logprobs=body.top_logprobs,
            )

        def logprobs(token_ids: list[int], logprobs: list[float], top: list[list[tuple[int, float]]]) -> (
            list[ChatLogprob]
        ):  # fmt: skip
            return [] if body.num_logprobs is None else render.chat(token_ids, logprobs, top).content

        def build() -> ResponseObject:
            output = OutputItems(request_id, callable_names)
            output.push("".join(seq.text), logprobs(seq.tokens, seq.logprobs, seq.top_logprobs))
            output.finish(cut=seq.finish_reason == FinishReason.LENGTH)
            return response(output.items)

        async def events(outputs: Outputs) -> AsyncGenerator[str, None]:
            yield stream.event(ResponseStateEvent(type="response.created", response=response([])))
            yield stream.event(ResponseStateEvent(type="response.in_progress", response=response([])))
            output = OutputItems(request_id, callable_names)
            async for _, out in outputs:
                for event in output.push(out.text, logprobs(out.token_ids, out.logprobs, out.top_logprobs)):
                    yield stream.event(event)
            for event in output.finish(cut=seq.finish_reason == FinishReason.LENGTH):
                yield stream.event(event)
            final = response(output.items)
            yield stream.event(ResponseStateEvent(type=f"response.{final.status}", response=final))

        stream = EventStream()
        return await service.respond(request, seqs, body.stream, build, events, stream.format())

    return api
