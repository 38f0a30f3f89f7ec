"""The gateway's bounded work queue: job ids waiting for a worker.

Admission is bounded: a request that would add work first takes a :class:`Slot` (raising
Overloaded when ``capacity`` ids are already waiting or reserved), does its database write, and
only then enqueues, so a full queue is reported *before* anything is persisted. Work that has
already been accepted, i.e. jobs resumed after a restart, is enqueued with :meth:`put_accepted`,
which never refuses (refusing would strand a persisted job); that is why the underlying
``asyncio.Queue`` is unbounded and the bound is enforced here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from glimpse3d.core.errors import Overloaded


class Slot:
    """A reserved place in the queue; :meth:`enqueue` uses it (at most once)."""

    def __init__(self, queue: WorkQueue) -> None:
        self._queue = queue
        self.used = False

    def enqueue(self, job_id: str) -> None:
        if self.used:
            raise RuntimeError("a queue slot can be used only once")
        self.used = True
        self._queue.put_accepted(job_id)


class WorkQueue:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._reserved = 0

    def qsize(self) -> int:
        return self._queue.qsize()

    def has_room(self) -> bool:
        return self._queue.qsize() + self._reserved < self.capacity

    def overloaded(self) -> Overloaded:
        return Overloaded(
            f"gateway queue is full ({self.capacity} jobs); retry later",
            metadata={"capacity": str(self.capacity)},
        )

    @contextmanager
    def reserve(self) -> Iterator[Slot]:
        """Hold a slot for the duration of the block; Overloaded if there is none."""
        if not self.has_room():
            raise self.overloaded()
        self._reserved += 1
        try:
            yield Slot(self)
        finally:
            self._reserved -= 1

    def put_accepted(self, job_id: str) -> None:
        self._queue.put_nowait(job_id)

    async def get(self) -> str:
        return await self._queue.get()
