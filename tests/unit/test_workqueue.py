"""The gateway work queue: capacity, the per-tenant quota of jobs in flight, round-robin between tenants."""

from __future__ import annotations

import asyncio

import pytest

from glimpse3d.core.errors import Overloaded
from glimpse3d.gateway.workqueue import WorkQueue


def fill(queue: WorkQueue, tenant: str, n: int, prefix: str = "") -> list[str]:
    ids = [f"{prefix or tenant}{i}" for i in range(n)]
    for job_id in ids:
        with queue.reserve(tenant) as slot:
            slot.enqueue(job_id)
    return ids


def drain(queue: WorkQueue) -> list[str]:
    order = []
    while (job_id := queue.get_nowait()) is not None:
        order.append(job_id)
    return order


def test_one_tenant_filling_the_queue_does_not_starve_another() -> None:
    queue = WorkQueue(capacity=100)
    a_jobs = fill(queue, "a", 64)
    assert queue.get_nowait() == "a0"  # a worker is already on A's first job
    fill(queue, "b", 1)
    order = drain(queue)
    assert order.index("b0") <= 1  # B starts after at most one more of A's
    assert order == ["a1", "b0", *a_jobs[2:]]


def test_round_robin_between_three_tenants_keeps_each_tenants_order() -> None:
    queue = WorkQueue(capacity=100)
    fill(queue, "a", 3)
    fill(queue, "b", 2)
    fill(queue, "c", 1)
    assert drain(queue) == ["a0", "b0", "c0", "a1", "b1", "a2"]
    assert queue.qsize() == 0


def test_a_simulated_worker_pool_serves_tenants_in_turn() -> None:
    """Two workers, each job taking one tick of a fake clock: B's job finishes in the second tick."""
    queue = WorkQueue(capacity=100)
    fill(queue, "a", 64)
    fill(queue, "b", 1)
    finished_at: dict[str, int] = {}
    tick = 0
    while queue.qsize():
        tick += 1
        for _worker in range(2):
            job_id = queue.get_nowait()
            if job_id is not None:
                finished_at[job_id] = tick
                queue.finished(job_id)
    assert finished_at["b0"] == 1  # started by the second worker in the first tick
    assert finished_at["a63"] == 33


def test_capacity_counts_waiting_and_reserved_ids() -> None:
    queue = WorkQueue(capacity=2)
    fill(queue, "a", 1)
    with queue.reserve("b"):
        assert not queue.has_room("c")
        with pytest.raises(Overloaded, match=r"queue is full \(2 jobs\)") as info:
            with queue.reserve("c"):
                pass
        assert info.value.metadata["quota"] == "queue_size"
    assert queue.has_room("c")


def test_tenant_quota_counts_jobs_in_flight_until_finished() -> None:
    queue = WorkQueue(capacity=100, max_per_tenant=2)
    fill(queue, "a", 2)
    with pytest.raises(Overloaded, match=r"tenant 'a' already has 2 jobs in flight") as info:
        with queue.reserve("a"):
            pass
    assert info.value.metadata == {"quota": "max_jobs_per_tenant", "limit": "2", "tenant": "a"}
    fill(queue, "b", 2)  # other tenants are not affected
    running = queue.get_nowait()
    assert running == "a0"
    assert not queue.has_room("a")  # running still counts
    queue.finished(running)
    assert queue.has_room("a") and queue.in_flight("a") == 1
    fill(queue, "a", 1, prefix="a-new")


def test_more_work_on_a_job_in_flight_is_not_a_new_job_for_the_quota() -> None:
    queue = WorkQueue(capacity=100, max_per_tenant=1)
    fill(queue, "a", 1)
    assert not queue.has_room("a")
    assert queue.has_room("a", "a0")  # e.g. an enhancement round of the job already in flight
    with queue.reserve("a", "a0") as slot:
        slot.enqueue("a0")
    assert queue.in_flight("a") == 1 and queue.qsize() == 2
    assert queue.has_room("b") and not queue.has_room("a", "other")


def test_reserved_slots_count_against_the_quota_and_are_returned() -> None:
    queue = WorkQueue(capacity=100, max_per_tenant=1)
    with queue.reserve("a"):
        assert not queue.has_room("a")
    assert queue.has_room("a") and queue.in_flight("a") == 0


def test_accepted_work_is_never_refused() -> None:
    queue = WorkQueue(capacity=1, max_per_tenant=1)
    queue.put_accepted("r1", "a")
    queue.put_accepted("r2", "a")  # resumed after a restart: over both limits, still queued
    assert queue.qsize() == 2 and queue.in_flight("a") == 2


def test_get_waits_for_work_and_wakes_one_worker_per_id() -> None:
    async def body() -> None:
        queue = WorkQueue(capacity=10)
        workers = [asyncio.create_task(queue.get()) for _ in range(3)]
        await asyncio.sleep(0)
        assert not any(w.done() for w in workers)
        queue.put_accepted("a0", "a")
        queue.put_accepted("b0", "b")
        await asyncio.wait(workers, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(0.01)
        got = sorted(w.result() for w in workers if w.done())
        assert got == ["a0", "b0"]
        (idle,) = [w for w in workers if not w.done()]
        idle.cancel()
        with pytest.raises(asyncio.CancelledError):
            await idle
        queue.put_accepted("c0", "c")
        assert await asyncio.wait_for(queue.get(), 1.0) == "c0"  # the cancelled waiter took nothing

    asyncio.run(body())
