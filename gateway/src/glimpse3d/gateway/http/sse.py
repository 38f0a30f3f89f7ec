"""Server-sent events (the ``text/event-stream`` format of the HTML standard) for job watches.

:func:`event_response` is sse-starlette's ``EventSourceResponse``: the library writes the event
blocks, sends a comment line (``: heartbeat``) every ``heartbeat_s`` seconds (so proxies and
browsers keep an idle stream open and a dead peer is noticed) and, when the client goes away,
cancels the task that reads the job watch, which closes the watch so it is unsubscribed at once.

What it does not do is kept here: the stream starts with ``retry:`` and ends with an ``event: end``
block when the source is exhausted, and :meth:`StreamRegistry.close_all` ends every open stream
that way when this HTTP server stops (sse-starlette's own shutdown detection watches uvicorn's
signal handlers, which the embedded server leaves to the gateway process).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

logger = logging.getLogger(__name__)

T = TypeVar("T")
SEP = "\n"
HEARTBEAT = f": heartbeat{SEP}{SEP}"
_BUFFER = 4


def job_event(event: str, data: str, event_id: str | None = None) -> ServerSentEvent:
    """One event block; ``data`` may span lines (each becomes its own ``data:`` line)."""
    return ServerSentEvent(data, event=event, id=event_id, sep=SEP)


class StreamRegistry:
    """The open streams of a process, so that shutdown can end them instead of waiting on them."""

    def __init__(self) -> None:
        self._scopes: set[anyio.CancelScope] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._scopes)

    @property
    def closed(self) -> bool:
        return self._closed

    def add(self, scope: anyio.CancelScope) -> None:
        self._scopes.add(scope)
        if self._closed:  # refused: the stream ends after its first event
            scope.cancel()

    def discard(self, scope: anyio.CancelScope) -> None:
        self._scopes.discard(scope)

    def close_all(self) -> None:
        """End every open stream with ``event: end`` (and refuse new ones the same way)."""
        self._closed = True
        for scope in self._scopes:
            scope.cancel()


async def _produce(send: MemoryObjectSendStream[ServerSentEvent], first: T, source: AsyncIterator[T],
                   encode: Callable[[T], Awaitable[ServerSentEvent]], registry: StreamRegistry,
                   retry_ms: int) -> None:
    """Runs in the response's task group: cancelled (closing ``source``) when the client leaves."""
    with send:
        scope = anyio.CancelScope()
        registry.add(scope)
        try:
            await send.send(ServerSentEvent(retry=retry_ms, sep=SEP))
            await send.send(await encode(first))
            with scope:
                async with contextlib.aclosing(source):  # type: ignore[type-var]
                    async for item in source:
                        await send.send(await encode(item))
        except Exception:
            logger.exception("event source failed; ending the stream")
        finally:
            registry.discard(scope)
        await send.send(job_event("end", "{}"))


async def _relay(receive: MemoryObjectReceiveStream[ServerSentEvent]) -> AsyncIterator[ServerSentEvent]:
    with receive:
        async for event in receive:
            yield event


def event_response(
    first: T,
    source: AsyncIterator[T],
    encode: Callable[[T], Awaitable[ServerSentEvent]],
    *,
    heartbeat_s: float,
    registry: StreamRegistry,
    retry_ms: int = 2000,
) -> EventSourceResponse:
    """``first`` (already taken from the source) and then the rest of ``source`` as an event stream."""
    send, receive = anyio.create_memory_object_stream[ServerSentEvent](_BUFFER)

    async def produce() -> None:
        await _produce(send, first, source, encode, registry, retry_ms)

    async def cleanup() -> None:  # when the stream never started (HEAD): close what it would have
        send.close()
        receive.close()
        await source.aclose()  # type: ignore[attr-defined]

    return EventSourceResponse(
        _relay(receive), headers={"Cache-Control": "no-cache"}, ping=heartbeat_s, sep=SEP,
        ping_message_factory=lambda: ServerSentEvent(comment="heartbeat", sep=SEP),
        data_sender_callable=produce, background=BackgroundTask(cleanup))
