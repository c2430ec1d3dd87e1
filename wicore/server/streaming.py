"""Getting engine outputs to the client: merging several engine streams, waiting while watching for a
hang-up, and framing a streamed response (SSE or NDJSON) with one way to end it on an error.

A client that goes away before the response began raises ClientGone, which the app answers as 499
(errors.py); one that goes away mid-stream closes the stream, which cancels its engine requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from wicore.engine.request import RequestOutput
from wicore.server.errors import APIError, ClientGone
from wicore.server.middleware import ServerCounters

T = TypeVar("T")
# The engine client refuses at once (queue full, engine not ready): a streaming request waits this long
# (seconds) so a refusal keeps its HTTP status, but not for the first token, which may take long.
REFUSAL_WINDOW = 0.05
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True)
class StreamFormat:
    """How a streamed response is framed: its media type, an error after it started, its last line."""

    media_type: str
    error: Callable[[APIError], str]
    done: str | None


def sse(model: BaseModel, event: str | None = None) -> str:
    """One server-sent event carrying `model` as JSON, with an event name if given (the Responses API
    names each event by its type)."""
    named = f"event: {event}\n" if event is not None else ""
    return f"{named}data: {model.model_dump_json()}\n\n"


async def merge(gens: list[AsyncIterator[RequestOutput]]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """The outputs of several engine streams as they come, tagged with the stream's position.

    Closing this (or cancelling its consumer) cancels every stream, which sends the engine a Cancel for
    each unfinished request."""
    queue: asyncio.Queue[tuple[int, RequestOutput | None, BaseException | None]] = asyncio.Queue()

    async def pump(i: int, gen: AsyncIterator[RequestOutput]) -> None:
        try:
            async for out in gen:
                queue.put_nowait((i, out, None))
        except Exception as e:  # handed to the consumer, which raises it
            queue.put_nowait((i, None, e))
        finally:
            await gen.aclose()  # type: ignore[attr-defined]

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    try:
        remaining = len(gens)
        while remaining:
            i, out, error = await queue.get()
            if error is not None:
                raise error
            assert out is not None
            if out.finish_reason is not None:
                remaining -= 1
            yield i, out
    finally:
        for task in tasks:
            task.cancel()  # synchronously, so it happens even if the await below is cancelled
        await asyncio.gather(*tasks, return_exceptions=True)


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """`work`'s result; if the client hangs up first, `work` is cancelled and ClientGone raised.

    Starlette notices disconnects only while streaming a response; this covers a client that goes away
    while we wait for a non-streaming result."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.wait({task})  # let the cancellation reach the engine streams before answering
    raise ClientGone


async def _drain(items: AsyncGenerator[Any, None]) -> None:
    async with aclosing(items):
        async for _ in items:
            pass


async def _first(items: AsyncIterator[T]) -> T:
    return await anext(items)


async def _chain(first: asyncio.Future[T], rest: AsyncIterator[T]) -> AsyncIterator[T]:
    # Cancelling the consumer while it awaits `first` cancels that task too (asyncio propagates it).
    yield await first
    async for item in rest:
        yield item


async def respond(
    request: Request, outputs: AsyncGenerator[T, None], stream: bool, build: Callable[[], BaseModel],
    events: Callable[[AsyncIterator[T]], AsyncGenerator[str, None]], fmt: StreamFormat, counters: ServerCounters,
) -> Response:  # fmt: skip
    """The response to a generation: `build()` once `outputs` ran out, or the stream `events(outputs)`.

    `outputs` records what it yields where `build` finds it (the service's ChoiceSequence)."""
    if not stream:
        await unless_disconnected(request, _drain(outputs))
        return Response(build().model_dump_json(), media_type="application/json")
    first = asyncio.ensure_future(_first(outputs))
    try:
        await asyncio.wait({first}, timeout=REFUSAL_WINDOW)
    except asyncio.CancelledError:
        first.cancel()
        raise
    if first.done():
        first.result()  # raises the refusal, if that is what it was
    body = _guarded(events(_chain(first, outputs)), outputs, fmt, counters)
    return StreamingResponse(body, media_type=fmt.media_type, headers=STREAM_HEADERS)


async def _guarded(
    events: AsyncGenerator[str, None], outputs: AsyncGenerator[Any, None], fmt: StreamFormat,
    counters: ServerCounters,
) -> AsyncIterator[str]:  # fmt: skip
    """Errors once the stream has started go out as one error event (then the format's last line)."""
    try:
        # Closing `outputs` cancels the engine requests, also when the client disconnects mid-stream.
        async with aclosing(outputs), aclosing(events):
            async for event in events:
                yield event
    except APIError as e:
        counters.error_count += 1
        yield fmt.error(e)
    except Exception:
        structlog.get_logger("wicore.server").exception("stream failed")
        counters.error_count += 1
        yield fmt.error(APIError(500, "internal server error"))
    if fmt.done is not None:
        yield fmt.done
