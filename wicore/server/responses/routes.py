"""The Responses API route: POST /v1/responses (and /responses, as the other OpenAI routes).

A request becomes one chat-templated GenerationRequest; the answer is a `response` object whose output
is one assistant message. Streams are SSE events named by their type and numbered by `sequence_number`,
as OpenAI sends them: response.created, response.in_progress, the output item and its content part
added, text deltas, the text, part and item done, then response.completed (or response.incomplete when
max_output_tokens cut it). An error after the stream began is one `error` event; nothing follows it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import Response

from wicore.engine.request import FinishReason
from wicore.server.errors import APIError
from wicore.server.protocol import CHAT_DEFAULT_MAX_TOKENS, conversation, parse_body
from wicore.server.responses.protocol import (
    ContentPartEvent,
    ErrorEvent,
    IncompleteDetails,
    OutputItemEvent,
    OutputMessage,
    OutputTextPart,
    ResponseEvent,
    ResponseObject,
    ResponsesRequest,
    ResponseStateEvent,
    ResponseUsage,
    TextConfig,
    TextDeltaEvent,
    TextDoneEvent,
)
from wicore.server.service import ChoiceSequence, GenerationRequest, GenerationService, Outputs, cached_tokens
from wicore.server.streaming import StreamFormat, sse


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


def text_grammar(body: ResponsesRequest) -> str | None:
    """The grammar `text.format` asks for, checked before anything is queued (400 naming the field)."""
    try:
        return body.grammar()
    except ValueError as e:
        raise APIError(400, str(e), param="text.format") from None


def router(service: GenerationService) -> APIRouter:
    api = APIRouter()
    engine = service.engine

    @api.post("/v1/responses", response_model=None)
    @api.post("/responses", response_model=None, include_in_schema=False)
    async def create(request: Request) -> Response:
        body = await parse_body(request, ResponsesRequest)
        service.catalogue.check_chat(body.model)
        sampling = body.sampling()
        grammar = text_grammar(body)
        prompt_ids = await service.chat_prompt(conversation(body.messages()), param="input")
        request_id, seqs = service.start(
            GenerationRequest(
                [prompt_ids], sampling, body.max_output_tokens, CHAT_DEFAULT_MAX_TOKENS, prompt_param="input",
                max_tokens_param="max_output_tokens", grammar=grammar,
            )
        )  # fmt: skip
        (seq,) = seqs
        response_id, message_id, created = f"resp_{request_id}", f"msg_{request_id}", int(time.time())
        structlog.contextvars.bind_contextvars(completion_id=response_id)

        def response(seq: ChoiceSequence, output: list[OutputMessage]) -> ResponseObject:
            """The response object: in progress until `seq` finished, then with its usage."""
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
                parallel_tool_calls=body.parallel_tool_calls,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                text=body.text or TextConfig(),
                tool_choice=body.tool_choice,
                tools=body.tools or [],
                usage=ResponseUsage.of(len(prompt_ids), len(seq.tokens), cached_tokens(seqs, 1)) if done else None,
                user=body.user,
                metadata=body.metadata or {},
            )

        def message(seq: ChoiceSequence) -> OutputMessage:
            status = "incomplete" if seq.finish_reason == FinishReason.LENGTH else "completed"
            return OutputMessage(id=message_id, status=status, content=[OutputTextPart(text="".join(seq.text))])

        def build() -> ResponseObject:
            return response(seq, [message(seq)])

        async def events(outputs: Outputs) -> AsyncGenerator[str, None]:
            where = {"item_id": message_id, "output_index": 0}
            yield stream.event(ResponseStateEvent(type="response.created", response=response(seq, [])))
            yield stream.event(ResponseStateEvent(type="response.in_progress", response=response(seq, [])))
            item = OutputMessage(id=message_id, status="in_progress", content=[])
            yield stream.event(OutputItemEvent(type="response.output_item.added", output_index=0, item=item))
            empty = OutputTextPart(text="")
            yield stream.event(ContentPartEvent(type="response.content_part.added", part=empty, **where))
            async for _, out in outputs:
                if out.text:
                    yield stream.event(TextDeltaEvent(delta=out.text, **where))
            done = message(seq)
            part = done.content[0]
            yield stream.event(TextDoneEvent(text=part.text, **where))
            yield stream.event(ContentPartEvent(type="response.content_part.done", part=part, **where))
            yield stream.event(OutputItemEvent(type="response.output_item.done", output_index=0, item=done))
            final = response(seq, [done])
            yield stream.event(ResponseStateEvent(type=f"response.{final.status}", response=final))

        stream = EventStream()
        return await service.respond(request, seqs, body.stream, build, events, stream.format())

    return api
