"""Server-sent events (the ``text/event-stream`` format of the HTML standard) for job watches.

:func:`event_stream` turns an async iterator of items into the stream's text chunks: one
``event:``/``id:``/``data:`` block per item, a comment line (``: heartbeat``) whenever nothing was
sent for ``heartbeat_s`` seconds (so proxies and browsers keep an idle stream open and a dead peer
is noticed), and a last ``event: end`` block when the iterator is exhausted.

The source is driven by a pump task that hands items over through a small queue; the generator only
waits on that queue. Closing the stream (the client went away, or :meth:`StreamRegistry.close_all`
at shutdown) cancels the pump, which closes the source where it waits, so the job watch it holds is
unsubscribed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
HEARTBEAT = ": heartbeat\n\n"
_END = object()
_QUEUE_SIZE = 4


def format_event(event: str, data: str, event_id: str | None = None) -> str:
    """One event block; ``data`` may span lines (each becomes its own ``data:`` line)."""
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines += [f"data: {line}" for line in data.splitlines() or [""]]
    return "\n".join(lines) + "\n\n"


class StreamRegistry:
    """The open streams of a process, so that shutdown can end them instead of waiting on them."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[object]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._queues)

    @property
    def closed(self) -> bool:
        return self._closed

    def add(self, queue: asyncio.Queue[object]) -> None:
        self._queues.add(queue)

    def discard(self, queue: asyncio.Queue[object]) -> None:
        self._queues.discard(queue)

    def close_all(self) -> None:
        """End every open stream (and refuse new ones: they end after their first event)."""
        self._closed = True
        for queue in self._queues:
            _put_latest(queue, _END)


def _put_latest(queue: asyncio.Queue[object], item: object) -> None:
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)


class _Pump(Generic[T]):
    def __init__(self, source: AsyncIterator[T], queue: asyncio.Queue[object]) -> None:
        self.source = source
        self.queue = queue

    async def run(self) -> None:
        try:
            async for item in self.source:
                await self.queue.put(item)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("event source failed; ending the stream")
        _put_latest(self.queue, _END)


async def event_stream(
    first: T,
    source: AsyncIterator[T],
    encode: Callable[[T], Awaitable[str]],
    *,
    heartbeat_s: float,
    registry: StreamRegistry,
    retry_ms: int = 2000,
) -> AsyncIterator[str]:
    """``first`` (already taken from the source) and then the rest of ``source`` as SSE chunks."""
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=_QUEUE_SIZE)
    registry.add(queue)
    if registry.closed:
        _put_latest(queue, _END)
    pump = asyncio.create_task(_Pump(source, queue).run(), name="sse-pump")
    try:
        yield f"retry: {retry_ms}\n" + await encode(first)
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), heartbeat_s)
            except TimeoutError:
                yield HEARTBEAT
                continue
            if item is _END:
                yield format_event("end", "{}")
                return
            yield await encode(item)  # type: ignore[arg-type]
    finally:
        registry.discard(queue)
        pump.cancel()
        if pump.done():
            with contextlib.suppress(asyncio.CancelledError):
                pump.result()
