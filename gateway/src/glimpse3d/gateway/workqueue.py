"""The gateway's bounded, fair work queue: job ids waiting for a worker, one queue per tenant.

Admission is bounded twice: a request that would add work first takes a :class:`Slot`, raising
Overloaded (RESOURCE_EXHAUSTED) when ``capacity`` ids are already waiting or reserved, or when its
tenant already has ``max_per_tenant`` jobs in flight on this replica (waiting, reserved or running;
the error names the quota). Only then does it do its database write and enqueue, so a refusal comes
*before* anything is persisted. Work that has already been accepted, i.e. jobs resumed after a
restart, is enqueued with :meth:`put_accepted`, which never refuses (refusing would strand a
persisted job); that is why the queues are unbounded and the bounds are enforced here.

Excess work is refused rather than queued behind the quota: a tenant learns at once that it is over
its share, and the database never holds jobs that wait on a per-tenant limit.

Scheduling is round-robin between tenants: :meth:`get` takes the oldest id of the tenant whose
turn it is, and that tenant goes to the back of the line. A tenant with 64 jobs waiting therefore
delays another tenant's new job by at most one of its own per worker that frees up.

The app reports the end of a job's work with :meth:`finished` (its task ended and it has no other
entry waiting), which is what frees its place in the tenant's quota.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator
from contextlib import contextmanager

from glimpse3d.core.errors import Overloaded


class Slot:
    """A reserved place in the queue; :meth:`enqueue` uses it (at most once)."""

    def __init__(self, queue: WorkQueue, tenant: str) -> None:
        self._queue = queue
        self.tenant = tenant
        self.used = False

    def enqueue(self, job_id: str) -> None:
        if self.used:
            raise RuntimeError("a queue slot can be used only once")
        self.used = True
        self._queue.put_accepted(job_id, self.tenant)


class WorkQueue:
    """``capacity``: ids waiting or reserved, all tenants together; ``max_per_tenant``: jobs one
    tenant may have in flight on this replica (0: no per-tenant limit)."""

    def __init__(self, capacity: int, max_per_tenant: int = 0) -> None:
        self.capacity = capacity
        self.max_per_tenant = max_per_tenant
        self._waiting: OrderedDict[str, deque[str]] = OrderedDict()  # tenant -> ids, in turn order
        self._size = 0
        self._reserved = 0
        self._reserved_by: Counter[str] = Counter()  # tenant -> slots held for new jobs
        self._tenant_of: dict[str, str] = {}  # job id -> tenant, for jobs in flight
        self._in_flight: Counter[str] = Counter()  # tenant -> jobs in flight (distinct ids)
        self._getters: deque[asyncio.Future[None]] = deque()  # workers waiting in get()

    def qsize(self) -> int:
        return self._size

    def in_flight(self, tenant: str) -> int:
        """Jobs of ``tenant`` waiting or running on this replica, and slots reserved for new ones."""
        return self._in_flight[tenant] + self._reserved_by[tenant]

    def _over_quota(self, tenant: str, job_id: str) -> bool:
        if not self.max_per_tenant or job_id in self._tenant_of:  # a job already in flight adds none
            return False
        return self.in_flight(tenant) >= self.max_per_tenant

    def has_room(self, tenant: str = "", job_id: str = "") -> bool:
        """Whether :meth:`reserve` would succeed for work on ``job_id`` ("" = a new job) of ``tenant``."""
        return self._size + self._reserved < self.capacity and not self._over_quota(tenant, job_id)

    def overloaded(self, tenant: str = "", job_id: str = "") -> Overloaded:
        """The error for a refused reservation: the tenant quota when that is what is exhausted."""
        if self._over_quota(tenant, job_id):
            return Overloaded(
                f"tenant {tenant!r} already has {self.in_flight(tenant)} jobs in flight, its quota "
                f"(max_jobs_per_tenant = {self.max_per_tenant}); retry when one finishes",
                metadata={"quota": "max_jobs_per_tenant", "limit": str(self.max_per_tenant), "tenant": tenant},
            )
        return Overloaded(
            f"gateway queue is full ({self.capacity} jobs); retry later",
            metadata={"quota": "queue_size", "capacity": str(self.capacity)},
        )

    @contextmanager
    def reserve(self, tenant: str = "", job_id: str = "") -> Iterator[Slot]:
        """Hold a slot for the duration of the block; Overloaded if there is none."""
        if not self.has_room(tenant, job_id):
            raise self.overloaded(tenant, job_id)
        counts = not job_id or job_id not in self._tenant_of
        self._reserved += 1
        if counts:
            self._reserved_by[tenant] += 1
        try:
            yield Slot(self, tenant)
        finally:
            self._reserved -= 1
            if counts:
                self._reserved_by[tenant] -= 1
                if self._reserved_by[tenant] <= 0:
                    del self._reserved_by[tenant]

    def put_accepted(self, job_id: str, tenant: str = "") -> None:
        """Queue ``job_id`` at the back of its tenant's queue (never refuses)."""
        if job_id not in self._tenant_of:
            self._tenant_of[job_id] = tenant
            self._in_flight[tenant] += 1
        tenant = self._tenant_of[job_id]
        self._waiting.setdefault(tenant, deque()).append(job_id)
        self._size += 1
        self._wake_next()

    def _wake_next(self) -> None:
        while self._getters:
            waiter = self._getters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def get_nowait(self) -> str | None:
        """The next id in round-robin order between tenants, or None when nothing waits."""
        if not self._waiting:
            return None
        tenant, ids = next(iter(self._waiting.items()))
        job_id = ids.popleft()
        del self._waiting[tenant]
        if ids:
            self._waiting[tenant] = ids  # to the back of the line
        self._size -= 1
        return job_id

    async def get(self) -> str:
        while (job_id := self.get_nowait()) is None:
            waiter = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_next()  # woken and cancelled at once: pass the wake-up on
                raise
            finally:
                if waiter in self._getters:
                    self._getters.remove(waiter)
        return job_id

    def finished(self, job_id: str) -> None:
        """The work on ``job_id`` ended and it waits nowhere: its place in the tenant quota is free."""
        tenant = self._tenant_of.pop(job_id, None)
        if tenant is None:
            return
        self._in_flight[tenant] -= 1
        if self._in_flight[tenant] <= 0:
            del self._in_flight[tenant]
