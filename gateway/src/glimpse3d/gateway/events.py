"""In-process pub/sub of job events, keyed by job id, with a bounded queue per subscriber.

Events carry full job snapshots, so a subscriber that falls behind loses nothing essential by
skipping some: when its queue is full the *oldest* event is dropped to make room, which keeps
the newest snapshot (and therefore the terminal one) deliverable. Publishing never blocks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from glimpse3d.gateway.jobs import Job

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobEvent:
    """A job snapshot and what happened: "snapshot" (first event of a watch), "state",
    "progress" or "version"."""

    job: Job
    kind: str
    event_time: datetime = field(default_factory=lambda: datetime.now(UTC))


class EventHub:
    """Fan-out of :class:`JobEvent` to the subscribers of each job (one event loop)."""

    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._subscribers: dict[str, set[asyncio.Queue[JobEvent]]] = {}

    def publish(self, job: Job, kind: str) -> None:
        event = JobEvent(job, kind)
        for queue in self._subscribers.get(job.id, ()):
            if queue.full():
                queue.get_nowait()
                logger.debug("watch queue full; dropped the oldest event", extra={"job": job.name})
            queue.put_nowait(event)

    @contextmanager
    def subscribe(self, job_id: str) -> Iterator[asyncio.Queue[JobEvent]]:
        """A queue receiving every event of ``job_id`` published while the block runs."""
        queue: asyncio.Queue[JobEvent] = asyncio.Queue(maxsize=self._queue_size)
        self._subscribers.setdefault(job_id, set()).add(queue)
        try:
            yield queue
        finally:
            subscribers = self._subscribers.get(job_id)
            if subscribers is not None:
                subscribers.discard(queue)
                if not subscribers:
                    del self._subscribers[job_id]

    def subscriber_count(self, job_id: str) -> int:
        return len(self._subscribers.get(job_id, ()))
