"""Several gateway replicas sharing one PostgreSQL job database, on a real server (tests/postgres_server.py).

The single-replica behaviour of the store runs against PostgreSQL in tests/service/test_gateway_store.py;
here: leases between replicas (claims, fencing, expiry, adoption), idempotent creation racing
across replicas, rounds and cancellations that go through another replica than the one running
the job, error mapping, connection settings, and the gateway's queue gauges.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import grpc
import pytest
from postgres_server import PASSWORD, ROLE, PostgresServer, free_port
from prometheus_client import CollectorRegistry
from test_gateway_app import TestPipeline, png
from test_gateway_store import Clock, new_job, ref, version_result

from glimpse3d.core.artifacts import FileArtifactStore
from glimpse3d.core.config import ConfigError, load_config
from glimpse3d.core.errors import FailedPrecondition, Unavailable
from glimpse3d.core.rpc.errors import status_code_for
from glimpse3d.gateway.app import GatewayApp
from glimpse3d.gateway.config import GatewayConfig
from glimpse3d.gateway.jobs import Job, JobError, JobOptions, Progress, RoundSpec
from glimpse3d.gateway.states import JobState
from glimpse3d.gateway.store import (
    DEFAULT_LEASE_S,
    RESUMED_MESSAGE,
    DatabaseUnavailable,
    JobStore,
    RoundOutcome,
    SqliteDatabase,
    open_job_store,
)
from glimpse3d.gateway.store.postgres import PostgresDatabase

LEASE_US = int(DEFAULT_LEASE_S * 1e6)
TIMEOUT = 15.0


@pytest.fixture
def url(postgres: PostgresServer) -> str:
    return postgres.url(postgres.create_database())


def replica(url: str, owner: str, clock: Clock | None = None, **kwargs) -> JobStore:
    return JobStore(PostgresDatabase(url, pool_size=4), owner=owner, **({"clock": clock} if clock else {}), **kwargs)


def in_parallel(*calls: Callable[[], object]) -> list[object]:
    """Run ``calls`` in threads released together; their results in order."""
    barrier = threading.Barrier(len(calls))

    def go(call: Callable[[], object]) -> object:
        barrier.wait(5)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result(timeout=30) for f in [pool.submit(go, c) for c in calls]]


# ---- store level: leases between replicas ---------------------------------------------------------


def test_concurrent_create_with_one_request_id_makes_one_job(url: str) -> None:
    a, b = replica(url, "a"), replica(url, "b")
    try:
        for i in range(8):
            made = in_parallel(*(lambda s=s, i=i: s.create_job(tenant="acme", options=JobOptions(),
                                                               input_image=ref("x"), request_id=f"r{i}")
                                 for s in (a, b)))
            (job_a, created_a), (job_b, created_b) = made
            assert job_a.id == job_b.id and [created_a, created_b].count(True) == 1
        assert len(a.list_jobs("acme", 100)[0]) == 8
    finally:
        a.close()
        b.close()


def test_live_lease_excludes_others_and_expiry_hands_over(url: str) -> None:
    clock = Clock()
    a, b = replica(url, "a", clock), replica(url, "b", clock)
    try:
        job = new_job(a)
        a.start_run(job.id)
        assert b.start_run(job.id) is None and b.claim_orphans(5) == []  # a live replica holds it
        clock.now += LEASE_US // 2
        assert a.renew_leases([job.id]) == {job.id}
        clock.now += LEASE_US // 2 + 1000
        assert b.claim_orphans(5) == []  # renewed, so not expired yet
        clock.now += LEASE_US  # a stops renewing: its lease runs out
        [adopted] = b.claim_orphans(5)
        assert adopted.id == job.id and adopted.progress.message == RESUMED_MESSAGE
        # a's runner is fenced off: nothing it writes lands, and its heartbeat learns it lost the job.
        assert a.update_progress(job.id, Progress("reconstruct", 0.5, "late")) is None
        with pytest.raises(FailedPrecondition, match="held by another gateway replica"):
            a.add_version(job.id, version_result(), completes_round=False)
        assert a.next_round_or_succeed(job.id) == (b.load_job(job.id), None)
        assert a.finish_with_error(job.id, JobError(13, "boom", "INTERNAL"), held_only=True).state is JobState.RUNNING
        assert a.start_run(job.id) is None and a.renew_leases([job.id]) == set()
        b.add_version(job.id, version_result(), completes_round=False)
        done, spec = b.next_round_or_succeed(job.id)
        assert spec is None and done.state is JobState.SUCCEEDED and len(done.versions) == 1
    finally:
        a.close()
        b.close()


def test_concurrent_adoption_never_takes_a_job_twice(url: str) -> None:
    clock = Clock()
    dead = replica(url, "dead", clock)
    ids = [new_job(dead, job_id=f"j{i:02d}").id for i in range(24)]
    dead.close()
    clock.now += 2 * LEASE_US
    b, c = replica(url, "b", clock), replica(url, "c", clock)
    try:
        got_b, got_c = in_parallel(lambda: b.claim_orphans(16), lambda: c.claim_orphans(16))
        ids_b, ids_c = {j.id for j in got_b}, {j.id for j in got_c}
        assert not ids_b & ids_c and len(ids_b) + len(ids_c) == 24 and ids_b | ids_c == set(ids)
        assert b.renew_leases(ids) == ids_b and c.renew_leases(ids) == ids_c
    finally:
        b.close()
        c.close()


def test_rounds_requested_through_another_replica_are_never_stranded(url: str) -> None:
    """The holder finishing its last round races an Enhance through another replica: either the
    holder picks the round up, or the job was idle and the other replica starts (and holds) it."""
    a, b = replica(url, "a"), replica(url, "b")
    try:
        for i in range(10):
            job = new_job(a)
            a.start_run(job.id)
            a.add_version(job.id, version_result(), completes_round=False)
            (step, spec), (requested, outcome) = in_parallel(
                lambda job=job: a.next_round_or_succeed(job.id),
                lambda job=job, i=i: b.request_round("acme", job.id, RoundSpec(seed=i), max_pending=4, can_start=True))
            if outcome is RoundOutcome.APPENDED:
                assert spec is not None and spec.seed == i and step.state is JobState.RUNNING
                assert a.renew_leases([job.id]) == {job.id}  # still the holder's to run
            else:
                assert outcome is RoundOutcome.STARTED and spec is None and step.state is JobState.SUCCEEDED
                assert requested.pending_rounds == (RoundSpec(seed=i),) and b.start_run(job.id) is not None
                assert a.start_run(job.id) is None  # b holds it now
    finally:
        a.close()
        b.close()


def test_deadlocks_are_retried(url: str) -> None:
    store = replica(url, "a")
    attempts = {"x": 0, "y": 0}
    both_hold_one = threading.Barrier(2)

    def lock_in_order(first: str, second: str) -> Callable[[object], str]:
        def body(db) -> str:
            attempts[first] += 1
            db.execute("SELECT id FROM jobs WHERE id = ? FOR UPDATE", (first,))
            if attempts[first] == 1:
                both_hold_one.wait(5)  # each holds one row and wants the other's: PostgreSQL aborts one
            db.execute("SELECT id FROM jobs WHERE id = ? FOR UPDATE", (second,))
            return first

        return body

    try:
        new_job(store, job_id="x")
        new_job(store, job_id="y")
        results = in_parallel(lambda: store.database.transaction(lock_in_order("x", "y")),
                              lambda: store.database.transaction(lock_in_order("y", "x")))
        assert results == ["x", "y"] and sum(attempts.values()) == 3  # one of them ran twice
    finally:
        store.close()


# ---- errors and connection settings ---------------------------------------------------------------


def test_unreachable_database_is_unavailable_without_the_password(postgres: PostgresServer, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    closed = free_port()
    with pytest.raises(DatabaseUnavailable) as err:
        PostgresDatabase(f"postgresql://{ROLE}:hunter2-secret@127.0.0.1:{closed}/jobs", timeout_s=2)
    assert f"postgresql://{ROLE}@127.0.0.1:{closed}/jobs is unavailable: connection failed" in err.value.message
    assert status_code_for(err.value) is grpc.StatusCode.UNAVAILABLE and isinstance(err.value, Unavailable)
    with pytest.raises(DatabaseUnavailable, match="password authentication failed") as wrong:
        PostgresDatabase(postgres.url("postgres").replace(PASSWORD, "hunter2-secret"))
    for text in (err.value.message, wrong.value.message, caplog.text):
        assert "hunter2" not in text and PASSWORD not in text


def test_password_from_pgpassword_or_passfile(postgres: PostgresServer, url: str, tmp_path: Path, monkeypatch,
                                              caplog) -> None:
    caplog.set_level(logging.DEBUG)
    bare = url.replace(f":{PASSWORD}@", "@")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "absent"))
    with pytest.raises(DatabaseUnavailable, match="password"):
        PostgresDatabase(bare, timeout_s=2)
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    config = load_config(GatewayConfig, env={"GLIMPSE3D_DB_URL": bare, "GLIMPSE3D_REPLICA_ID": "pod-0"})
    store = open_job_store(config)
    assert isinstance(store.database, PostgresDatabase) and store.owner == "pod-0"
    assert store.database.name == f"postgresql://{ROLE}@{postgres.host}:{postgres.port}/{bare.rsplit('/', 1)[1]}"
    store.close()
    monkeypatch.delenv("PGPASSWORD")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"{postgres.host}:{postgres.port}:*:{ROLE}:{PASSWORD}\n")
    passfile.chmod(0o600)
    JobStore(PostgresDatabase(f"{bare}?passfile={passfile}")).close()
    assert PASSWORD not in caplog.text


def test_db_url_selects_the_backend(tmp_path: Path) -> None:
    store = open_job_store(GatewayConfig(db_path=tmp_path / "jobs.sqlite3"))
    assert isinstance(store.database, SqliteDatabase)
    store.close()
    for bad, shown in (("mysql://u:pw@h/db", "scheme 'mysql'"), ("/var/jobs.db", "no scheme"),
                       ("sqlite:///jobs.db", "scheme 'sqlite'")):
        with pytest.raises(ConfigError, match=shown) as err:
            GatewayConfig(db_url=bad)
        assert err.value.field == "db_url" and "pw" not in err.value.message
    with pytest.raises(ConfigError, match="not a valid URL"):
        GatewayConfig(db_url="postgresql://u@h:port/db")
    for field, value in (("job_lease_s", 0.0), ("watch_poll_s", float("inf")), ("db_pool_size", 0),
                         ("replica_id", "x" * 129)):
        with pytest.raises(ConfigError) as err:
            GatewayConfig(**{field: value})
        assert err.value.field == field
    assert GatewayConfig(db_url="postgres://gw@db.internal:5432/glimpse?sslmode=require").db_url


def test_connections_lost_or_refused_mid_flight(postgres: PostgresServer, url: str) -> None:
    dbname = url.rsplit("/", 1)[1]
    store = JobStore(PostgresDatabase(url, pool_size=2, timeout_s=1.5))
    job = new_job(store)
    kill = f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}'"
    postgres.admin(kill)
    assert store.load_job(job.id) == job  # the pool checks connections: a dropped one is replaced
    postgres.admin(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
    postgres.admin(kill)
    try:
        with pytest.raises(DatabaseUnavailable, match=f"postgresql://{ROLE}@127.0.0.1:{postgres.port}/{dbname}"):
            store.load_job(job.id)
    finally:
        postgres.admin(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
    deadline = time.monotonic() + 10
    while True:  # the pool reconnects in the background once the database takes connections again
        try:
            assert store.load_job(job.id) == job
            break
        except DatabaseUnavailable:
            assert time.monotonic() < deadline
    store.close()


# ---- two gateway apps on one database ------------------------------------------------------------


@dataclasses.dataclass
class Replica:
    app: GatewayApp
    pipeline: TestPipeline
    store: JobStore


@asynccontextmanager
async def replicas(tmp_path: Path, url: str, names: tuple[str, ...] = ("a", "b"), *, lease_s: float = 2.0,
                   **overrides: object) -> AsyncIterator[dict[str, Replica]]:
    """Gateway apps named ``names`` on one database and one artifact store, each with its own pipeline."""
    artifacts = FileArtifactStore(tmp_path / "artifacts")
    async with AsyncExitStack() as stack:
        running = {}
        for name in names:
            config = GatewayConfig(db_url=url, artifacts_url=str(tmp_path / "artifacts"), replica_id=name,
                                   job_lease_s=lease_s, watch_poll_s=0.05, **overrides)
            store = await asyncio.to_thread(open_job_store, config)
            stack.callback(store.close)
            pipeline = TestPipeline(artifacts)
            app = GatewayApp(config, store, artifacts, pipeline)
            await app.start()
            stack.push_async_callback(app.close)
            running[name] = Replica(app, pipeline, store)
        yield running


async def wait_job(app: GatewayApp, name: str, predicate: Callable[[Job], bool], timeout: float = TIMEOUT) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        job = await app.get_job("acme", name)
        if predicate(job):
            return job
        assert time.monotonic() < deadline, f"timed out; {name} is {job.state.value}: {job.progress.message}"
        await asyncio.sleep(0.02)


def done(job: Job) -> bool:
    return job.done


def running(job: Job) -> bool:
    return job.state is JobState.RUNNING


def run(body: Callable[[], object]) -> None:
    asyncio.run(asyncio.wait_for(body(), 60))  # type: ignore[arg-type]


def test_two_replicas_process_each_job_once(tmp_path: Path, url: str) -> None:
    async def body() -> None:
        async with replicas(tmp_path, url) as r:
            apps = [r["a"].app, r["b"].app]
            jobs = [await apps[i % 2].create_job("acme", png(i), JobOptions(enhance_rounds=1)) for i in range(6)]
            same = await asyncio.gather(*(app.create_job("acme", png(99), request_id="same") for app in apps))
            assert same[0].id == same[1].id
            for job in [*jobs, same[0]]:
                assert (await wait_job(apps[1], job.name, done)).state is JobState.SUCCEEDED
            calls = r["a"].pipeline.calls + r["b"].pipeline.calls
            for job in jobs:
                assert calls.count(("initial", job.id)) == 1 and calls.count(("round", job.id)) == 1
            assert calls.count(("initial", same[0].id)) == 1
            assert len((await apps[0].list_jobs("acme", 100))[0]) == 7

    run(body)


def test_dead_replicas_jobs_resume_elsewhere_but_live_ones_stay(tmp_path: Path, url: str) -> None:
    async def body() -> None:
        lease_s = 1.5  # heartbeats every 0.5 s: a busy machine may stall one without losing a lease
        dead = replica(url, "dead", lease_s=lease_s)  # a replica that dies mid-job: its rows, no process
        halfway = new_job(dead, options=JobOptions(enhance_rounds=1))
        dead.start_run(halfway.id)
        version_1 = await TestPipeline(FileArtifactStore(tmp_path / "artifacts")).run_initial(halfway, _ignore)
        dead.add_version(halfway.id, version_1, completes_round=False, then_rounds=[RoundSpec(seed=1)])
        waiting = new_job(dead)
        dead.close()
        # a's one worker is busy with its own job, so only b has room to adopt the dead replica's jobs.
        async with replicas(tmp_path, url, ("a",), lease_s=lease_s, workers=1) as first:
            a = first["a"]
            a.pipeline.gate.clear()
            kept = await a.app.create_job("acme", png(1))
            await wait_job(a.app, kept.name, lambda j: j.progress.stage == "matting_depth")
            async with replicas(tmp_path, url, ("b",), lease_s=lease_s) as second:
                b = second["b"]
                for name in (halfway.name, waiting.name):
                    assert (await wait_job(b.app, name, done)).state is JobState.SUCCEEDED
                await asyncio.sleep(2 * lease_s)  # several heartbeats of both replicas
                assert (await b.app.get_job("acme", kept.name)).state is JobState.RUNNING
                assert sorted(b.pipeline.calls) == sorted([("round", halfway.id), ("initial", waiting.id)])
                resumed = await b.app.get_job("acme", halfway.name)
                assert len(resumed.versions) == 2 and resumed.error is None
                a.pipeline.gate.set()
                assert (await wait_job(b.app, kept.name, done)).state is JobState.SUCCEEDED
            assert a.pipeline.calls == [("initial", kept.id)]

    run(body)


def test_rounds_and_cancels_through_the_other_replica(tmp_path: Path, url: str) -> None:
    async def body() -> None:
        async with replicas(tmp_path, url) as r:
            a, b = r["a"], r["b"]
            job = await wait_job(b.app, (await a.app.create_job("acme", png())).name, done)
            assert a.pipeline.calls == [("initial", job.id)]
            a.pipeline.gate.clear()
            assert (await a.app.enhance("acme", job.name, seed=1)).state is JobState.RUNNING  # starts on a
            await wait_job(b.app, job.name, lambda j: j.progress.stage == "enhance" and j.progress.fraction > 0)
            queued = await b.app.enhance("acme", job.name, seed=2, request_id="via-b")  # queued behind a's round
            assert len(queued.pending_rounds) == 2
            events = asyncio.ensure_future(_collect(b.app.watch_job("acme", job.name)))  # b watches a's work
            a.pipeline.gate.set()
            final = await wait_job(b.app, job.name, lambda j: j.done and len(j.versions) == 3)
            assert b.pipeline.calls == [] and [c[0] for c in a.pipeline.calls] == ["initial", "round", "round"]
            seen = await asyncio.wait_for(events, TIMEOUT)
            assert seen[-1].job.revision == final.revision and "version" in [e.kind for e in seen]
            # An idle job enhanced through b runs on b.
            await b.app.enhance("acme", job.name, seed=3)
            assert len((await wait_job(a.app, job.name, lambda j: j.done and len(j.versions) == 4)).versions) == 4
            assert b.pipeline.calls == [("round", job.id)]
            # Cancelling through b stops a's work on the job within a heartbeat, and a writes nothing.
            a.pipeline.gate.clear()
            other = await a.app.create_job("acme", png(5))
            await wait_job(b.app, other.name, lambda j: j.progress.stage == "matting_depth")
            cancelled = await b.app.cancel_job("acme", other.name)
            assert cancelled.state is JobState.CANCELLED
            deadline = time.monotonic() + TIMEOUT
            while a.pipeline.cancelled == 0:
                assert time.monotonic() < deadline, "the holder never stopped the cancelled work"
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            after = await a.app.get_job("acme", other.name)
            assert after.state is JobState.CANCELLED and after.revision == cancelled.revision

    run(body)


async def _ignore(*_: object) -> None:
    pass


async def _collect(events: AsyncIterator) -> list:
    return [event async for event in events]


def test_closing_a_replica_hands_its_jobs_over_at_once(tmp_path: Path, url: str) -> None:
    async def body() -> None:
        async with replicas(tmp_path, url, ("b",), lease_s=3.0) as second:
            async with replicas(tmp_path, url, ("a",), lease_s=60.0, workers=1) as first:
                first["a"].pipeline.gate.clear()
                jobs = [await first["a"].app.create_job("acme", png(i)) for i in range(2)]
                await wait_job(first["a"].app, jobs[0].name, running)
                assert first["a"].store.renew_leases(j.id for j in jobs) == {j.id for j in jobs}
            # a released its leases on close (a running job and a queued one): b adopts them on its next
            # heartbeat (every second), not a minute later when a's leases would have expired.
            for job in jobs:
                assert (await wait_job(second["b"].app, job.name, done, timeout=10)).state is JobState.SUCCEEDED
            assert sorted(second["b"].pipeline.calls) == sorted(("initial", j.id) for j in jobs)

    run(body)


# ---- metrics --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_queue_depth_and_active_gauges_follow_the_work(tmp_path: Path, request, kind: str) -> None:
    registry = CollectorRegistry()

    def sample() -> tuple[float | None, float | None]:
        return (registry.get_sample_value("glimpse3d_gateway_queue_depth"),
                registry.get_sample_value("glimpse3d_gateway_jobs_active"))

    async def body() -> None:
        db_url = request.getfixturevalue("url") if kind == "postgres" else ""
        config = GatewayConfig(db_path=tmp_path / "jobs.sqlite3", db_url=db_url, workers=1,
                               artifacts_url=str(tmp_path / "artifacts"))
        store = await asyncio.to_thread(open_job_store, config)
        artifacts = FileArtifactStore(tmp_path / "artifacts")
        pipeline = TestPipeline(artifacts)
        async with GatewayApp(config, store, artifacts, pipeline) as app:
            app.register_metrics(registry)
            assert sample() == (0, 0) and registry.get_sample_value("glimpse3d_gateway_workers") == 1
            pipeline.gate.clear()
            first = await app.create_job("acme", png(0))
            await wait_job(app, first.name, running)
            others = [await app.create_job("acme", png(i)) for i in (1, 2)]
            assert sample() == (2, 1)
            pipeline.gate.set()
            for job in [first, *others]:
                await wait_job(app, job.name, done)
            await asyncio.sleep(0.05)
            assert sample() == (0, 0)
        store.close()

    run(body)
