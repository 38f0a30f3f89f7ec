"""The gateway's job store and job state machine.

The store tests run against both backends (``backend`` is parametrized: SQLite in a temp dir, and a
fresh database on the session's real PostgreSQL server, see tests/postgres_server.py). What only
several replicas sharing PostgreSQL can show is in tests/service/test_gateway_store_pg.py.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from glimpse3d.core.artifacts import ArtifactRef
from glimpse3d.core.cameras import orbit_camera
from glimpse3d.core.config import ConfigError, load_config
from glimpse3d.core.errors import FailedPrecondition, InvalidInput, NotFound, Overloaded
from glimpse3d.gateway.config import GatewayConfig
from glimpse3d.gateway.jobs import (
    JobError,
    JobOptions,
    Progress,
    RoundReport,
    RoundSpec,
    VersionResult,
    artifact_to_json,
    check_tenant,
    parse_export_name,
    parse_job_name,
)
from glimpse3d.gateway.states import TRANSITIONS, JobState, can_transition, check_transition
from glimpse3d.gateway.store import DEFAULT_LEASE_S, MIGRATIONS, RESUMED_MESSAGE, SCHEMA_VERSION, JobStore, RoundOutcome


def ref(tag: str, media_type: str = "image/png") -> ArtifactRef:
    sha = hashlib.sha256(tag.encode()).hexdigest()
    return ArtifactRef(f"file:///artifacts/sha256/{sha[:2]}/{sha}", sha, len(tag), media_type)


class Clock:
    """Deterministic microsecond clock; ``step`` 0 makes every job share one create_time."""

    def __init__(self, step: int = 1000) -> None:
        self.now = 1_700_000_000_000_000
        self.step = step

    def __call__(self) -> int:
        self.now += self.step
        return self.now


class Backend:
    """One database of one kind for a test: opens stores on it and runs raw SQL against it."""

    def __init__(self, kind: str, tmp_path: Path, postgres=None) -> None:
        self.kind = kind
        self.path = tmp_path / "db" / "jobs.sqlite3"
        self.url = postgres.url(postgres.create_database()) if postgres is not None else ""

    def open(self, **kwargs) -> JobStore:
        if self.kind == "sqlite":
            return JobStore(self.path, **kwargs)
        from glimpse3d.gateway.store.postgres import PostgresDatabase

        return JobStore(PostgresDatabase(self.url, pool_size=4), **kwargs)

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        """Run one statement (``?`` placeholders) in its own transaction; its rows, if any."""
        if self.kind == "sqlite":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path)
            try:
                with conn:
                    return conn.execute(statement, params).fetchall()
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.url) as conn:
            cursor = conn.execute(statement.replace("?", "%s"), params or None)
            return cursor.fetchall() if cursor.description else []


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path: Path) -> Backend:
    postgres = request.getfixturevalue("postgres") if request.param == "postgres" else None
    return Backend(request.param, tmp_path, postgres)


@pytest.fixture
def store(backend: Backend) -> JobStore:
    s = backend.open(clock=Clock())
    yield s
    s.close()


def new_job(store: JobStore, tenant: str = "acme", **kwargs):
    job, _ = store.create_job(tenant=tenant, options=kwargs.pop("options", JobOptions()),
                               input_image=ref(kwargs.pop("image", "img")), **kwargs)
    return job


def version_result(tag: str = "v", with_round: bool = False) -> VersionResult:
    if not with_round:
        return VersionResult(splat=ref(tag, "application/x-glimpse3d-splat+ply"), metrics={"num_gaussians": 10})
    return VersionResult(
        splat=ref(tag, "application/x-glimpse3d-splat+ply"), confidence=ref(tag + "c", "application/x-npy"),
        camera=orbit_camera(30.0, 10.0, 2.7, width=64, height=64, fov_y_deg=40.0),
        report=RoundReport(accepted_fraction=0.8, clip_score=None, steps=5), metrics={"seconds": 1.5},
    )


# ---- state machine --------------------------------------------------------------------------------


def test_transitions_table() -> None:
    allowed = {(s, d) for s, ds in TRANSITIONS.items() for d in ds}
    assert allowed == {
        (JobState.QUEUED, JobState.RUNNING), (JobState.QUEUED, JobState.CANCELLED),
        (JobState.RUNNING, JobState.SUCCEEDED), (JobState.RUNNING, JobState.FAILED),
        (JobState.RUNNING, JobState.CANCELLED), (JobState.SUCCEEDED, JobState.RUNNING),
    }
    for src, dst in itertools.product(JobState, JobState):
        assert can_transition(src, dst) == ((src, dst) in allowed)


def test_illegal_transition_names_both_states() -> None:
    with pytest.raises(FailedPrecondition) as err:
        check_transition(JobState.FAILED, JobState.RUNNING, job="jobs/abc")
    assert "jobs/abc" in err.value.message and "FAILED" in err.value.message and "RUNNING" in err.value.message
    assert err.value.metadata == {"from": "FAILED", "to": "RUNNING"}
    check_transition(JobState.SUCCEEDED, JobState.RUNNING)


def test_done_is_derived() -> None:
    assert [s for s in JobState if s.done] == [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED]
    assert [s for s in JobState if s.final] == [JobState.FAILED, JobState.CANCELLED]


# ---- validation and names -------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"num_views": 17}, "options.num_views"),
    ({"enhance_rounds": 11}, "options.enhance_rounds"),
    ({"prompt": "x" * 1001}, "options.prompt"),
    ({"resolution": 63}, "options.resolution"),
    ({"resolution": 1025}, "options.resolution"),
    ({"seed": -1}, "options.seed"),
])
def test_options_ranges(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        JobOptions(**kwargs)
    assert err.value.field == field


def test_options_defaults() -> None:
    assert JobOptions().effective_resolution == 256
    assert JobOptions(resolution=64, num_views=16, enhance_rounds=10, seed=2**64 - 1).effective_resolution == 64


def test_round_spec_validation() -> None:
    for kwargs, field in (({"strength": 1.5}, "strength"), ({"strength": float("nan")}, "strength"),
                          ({"prompt": "p" * 1001}, "prompt"), ({"request_id": "r" * 129}, "request_id")):
        with pytest.raises(InvalidInput) as err:
            RoundSpec(**kwargs)
        assert err.value.field == field


def test_names_and_tenants() -> None:
    assert parse_job_name("jobs/abc-1") == "abc-1"
    assert parse_export_name("jobs/abc") == ("abc", None)
    assert parse_export_name("jobs/abc/versions/3") == ("abc", 3)
    for bad in ("job/abc", "jobs/", "jobs/a/b", "jobs/../x", "", "jobs/abc/versions/0"):
        with pytest.raises(InvalidInput):
            parse_export_name(bad)
    with pytest.raises(InvalidInput):
        parse_job_name("jobs/abc/versions/1")
    assert check_tenant("team-a.prod_1") == "team-a.prod_1"
    for bad in ("", "-x", "a b", "a/b", "x" * 64, "ünï"):
        with pytest.raises(InvalidInput) as err:
            check_tenant(bad)
        assert err.value.field == "x-glimpse3d-tenant"


# ---- create / read / idempotency ------------------------------------------------------------------


def test_create_and_get(store: JobStore) -> None:
    job = new_job(store, display_name="mug", request_id="r1", options=JobOptions(num_views=2, prompt="a mug"))
    assert job.state is JobState.QUEUED and not job.done and job.name == f"jobs/{job.id}"
    got = store.get_job("acme", job.id)
    assert got == job
    assert got.options == JobOptions(num_views=2, prompt="a mug")
    assert got.input_image == ref("img") and got.display_name == "mug" and got.request_id == "r1"
    assert got.versions == () and got.error is None and got.pending_rounds == ()


def test_other_tenant_and_unknown_job_not_found(store: JobStore) -> None:
    job = new_job(store)
    with pytest.raises(NotFound) as err:
        store.get_job("other", job.id)
    assert f"jobs/{job.id}" in err.value.message
    with pytest.raises(NotFound, match="jobs/missing"):
        store.get_job("acme", "missing")


def test_request_id_is_idempotent_per_tenant(store: JobStore) -> None:
    first, created = store.create_job(tenant="acme", options=JobOptions(), input_image=ref("a"), request_id="same")
    again, created_again = store.create_job(tenant="acme", options=JobOptions(num_views=3), input_image=ref("b"),
                                            request_id="same", display_name="different payload")
    assert created and not created_again and again == first  # AIP-155: the original, unchanged
    other, created_other = store.create_job(tenant="other", options=JobOptions(), input_image=ref("a"),
                                            request_id="same")
    assert created_other and other.id != first.id
    assert store.find_by_request_id("acme", "same") == first
    # No request_id: every call creates a job.
    assert new_job(store).id != new_job(store).id


# ---- paging ---------------------------------------------------------------------------------------


def page_through(store: JobStore, tenant: str, size: int) -> list[list[str]]:
    pages, token = [], ""
    while True:
        jobs, token = store.list_jobs(tenant, size, token)
        pages.append([j.id for j in jobs])
        if not token:
            return pages


@pytest.mark.parametrize("step", [1000, 0])  # distinct and identical create times (keyset ties)
def test_list_jobs_pages_newest_first(backend: Backend, step: int) -> None:
    store = backend.open(clock=Clock(step))
    ids = [new_job(store, job_id=f"job{i:02d}").id for i in range(7)]
    new_job(store, tenant="other")
    pages = page_through(store, "acme", 3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == list(reversed(ids))
    exact = page_through(store, "acme", 7)
    assert exact == [list(reversed(ids))]
    assert len(store.list_jobs("acme", 0)[0]) == 7 and len(store.list_jobs("acme", 5000)[0]) == 7
    assert store.list_jobs("nobody") == ([], "")
    store.close()


def test_list_jobs_rejects_bad_page_size(store: JobStore) -> None:
    with pytest.raises(InvalidInput) as err:
        store.list_jobs("acme", -1)
    assert err.value.field == "page_size"


def test_forged_page_tokens_are_rejected(store: JobStore) -> None:
    for i in range(3):
        new_job(store, job_id=f"j{i}")
    _, token = store.list_jobs("acme", 1)
    assert token
    raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[0] += 1  # edit the keyset, keep the mac
    edited = base64.urlsafe_b64encode(json.dumps(raw).encode()).decode()
    forged_mac = base64.urlsafe_b64encode(json.dumps([raw[0], raw[1], "0" * 32]).encode()).decode()
    for bad in ("garbage!", "e30", edited, forged_mac, "A" * 600, base64.urlsafe_b64encode(b"[1,2]").decode()):
        with pytest.raises(InvalidInput) as err:
            store.list_jobs("acme", 1, bad)
        assert err.value.message == "page_token is invalid" and err.value.field == "page_token"
    with pytest.raises(InvalidInput, match="page_token is invalid"):
        store.list_jobs("other", 1, token)  # bound to its tenant


def test_page_tokens_survive_restart(backend: Backend) -> None:
    store = backend.open(clock=Clock())
    for i in range(3):
        new_job(store, job_id=f"j{i}")
    _, token = store.list_jobs("acme", 1)
    store.close()
    reopened = backend.open()  # or another replica: the signing key lives in the database
    assert [j.id for j in reopened.list_jobs("acme", 5, token)[0]] == ["j1", "j0"]
    reopened.close()


# ---- runner transitions ---------------------------------------------------------------------------


def test_initial_run_then_rounds(store: JobStore) -> None:
    job = new_job(store)
    running = store.start_run(job.id)
    assert running.state is JobState.RUNNING and running.revision > job.revision
    assert store.start_run(job.id).state is JobState.RUNNING  # idempotent for a RUNNING job
    progressed = store.update_progress(job.id, Progress("reconstruct", 0.5, "fitting"))
    assert progressed.progress == Progress("reconstruct", 0.5, "fitting")
    autos = [RoundSpec(seed=1), RoundSpec(seed=2)]
    after_v1 = store.add_version(job.id, version_result("v1"), completes_round=False, then_rounds=autos)
    assert [v.name for v in after_v1.versions] == [f"jobs/{job.id}/versions/1"]
    assert after_v1.pending_rounds == tuple(autos)
    for expected_seed in (1, 2):
        current, spec = store.next_round_or_succeed(job.id)
        assert spec.seed == expected_seed and current.state is JobState.RUNNING
        store.add_version(job.id, version_result(f"r{expected_seed}", with_round=True), completes_round=True)
    done, spec = store.next_round_or_succeed(job.id)
    assert spec is None and done.state is JobState.SUCCEEDED and done.done and done.progress.fraction == 1.0
    v2 = done.versions[1]
    assert v2.number == 2 and v2.report == RoundReport(accepted_fraction=0.8, steps=5)
    assert np.allclose(v2.camera.world_to_camera, orbit_camera(30.0, 10.0, 2.7, width=64, height=64).world_to_camera)
    assert v2.confidence is not None and v2.metrics == {"seconds": 1.5}
    assert store.update_progress(job.id, Progress("x", 0.1, "late")) is None  # not RUNNING: no write


def test_failure_without_versions(store: JobStore) -> None:
    job = new_job(store)
    store.start_run(job.id)
    error = JobError(14, "depth service unavailable", "UNAVAILABLE")
    failed = store.finish_with_error(job.id, error)
    assert failed.state is JobState.FAILED and failed.error == error
    assert store.finish_with_error(job.id, JobError(1, "x", "CANCELLED"), cancelled=True) == failed  # no-op
    with pytest.raises(FailedPrecondition):
        store.add_version(job.id, version_result(), completes_round=False)
    assert store.start_run(job.id) is None


def test_cancel_queued_and_round(store: JobStore) -> None:
    queued = new_job(store)
    cancelled = store.finish_with_error(queued.id, JobError(1, "cancelled by the caller", "CANCELLED"), cancelled=True)
    assert cancelled.state is JobState.CANCELLED
    job = new_job(store)
    store.start_run(job.id)
    store.add_version(job.id, version_result(), completes_round=False, then_rounds=[RoundSpec(), RoundSpec()])
    back = store.finish_with_error(job.id, JobError(1, "cancelled by the caller", "CANCELLED"), cancelled=True)
    assert back.state is JobState.SUCCEEDED and back.error.reason == "CANCELLED"
    assert back.pending_rounds == () and len(back.versions) == 1


def test_request_round_outcomes(store: JobStore) -> None:
    job = new_job(store)
    with pytest.raises(FailedPrecondition, match="no version yet"):
        store.request_round("acme", job.id, RoundSpec(), max_pending=2, can_start=True)
    store.start_run(job.id)
    store.add_version(job.id, version_result(), completes_round=False)
    store.next_round_or_succeed(job.id)  # -> SUCCEEDED
    with pytest.raises(NotFound):
        store.request_round("other", job.id, RoundSpec(), max_pending=2, can_start=True)
    idle, outcome = store.request_round("acme", job.id, RoundSpec(request_id="a"), max_pending=2, can_start=False)
    assert outcome is RoundOutcome.NO_CAPACITY and idle.state is JobState.SUCCEEDED
    started, outcome = store.request_round("acme", job.id, RoundSpec(request_id="a"), max_pending=2, can_start=True)
    assert outcome is RoundOutcome.STARTED and started.state is JobState.RUNNING
    assert started.progress.stage == "enhance"
    _, outcome = store.request_round("acme", job.id, RoundSpec(request_id="a"), max_pending=2, can_start=True)
    assert outcome is RoundOutcome.DUPLICATE
    appended, outcome = store.request_round("acme", job.id, RoundSpec(request_id="b"), max_pending=2,
                                            can_start=False)
    assert outcome is RoundOutcome.APPENDED and len(appended.pending_rounds) == 2
    with pytest.raises(Overloaded, match="2 enhancement rounds queued"):
        store.request_round("acme", job.id, RoundSpec(request_id="c"), max_pending=2, can_start=True)
    failed = new_job(store)
    store.start_run(failed.id)
    store.finish_with_error(failed.id, JobError(13, "boom", "INTERNAL"))
    with pytest.raises(FailedPrecondition, match="FAILED"):
        store.request_round("acme", failed.id, RoundSpec(), max_pending=2, can_start=True)


# ---- persistence ----------------------------------------------------------------------------------


def test_restart_keeps_jobs_and_adopts_orphans(backend: Backend) -> None:
    clock = Clock()
    store = backend.open(clock=clock, owner="first")
    new_job(store, job_id="q")
    running, done = new_job(store, job_id="r"), new_job(store, job_id="d")
    store.start_run(running.id)
    store.start_run(done.id)
    store.add_version(done.id, version_result(), completes_round=False)
    store.next_round_or_succeed(done.id)
    store.close()  # without releasing its leases, as a crash would

    reopened = backend.open(clock=clock, owner="second")
    assert reopened.get_job("acme", "d").state is JobState.SUCCEEDED
    assert len(reopened.get_job("acme", "d").versions) == 1
    # SQLite has one process at a time, so opening voided the leases of the first; PostgreSQL waits for
    # them to expire (the first might be another replica, alive).
    adopted = reopened.claim_orphans(10)
    assert len(adopted) == (2 if backend.kind == "sqlite" else 0)
    if not adopted:
        clock.now += int(DEFAULT_LEASE_S * 1e6)
        adopted = reopened.claim_orphans(10)
    assert [j.id for j in adopted] == ["q", "r"]
    assert adopted[1].progress.message == RESUMED_MESSAGE and adopted[1].state is JobState.RUNNING
    assert adopted[0].progress.message == "queued" and adopted[0].state is JobState.QUEUED
    assert reopened.claim_orphans(10) == []  # held by "second" now
    assert reopened.start_run("r").state is JobState.RUNNING
    reopened.close()


def test_leases_of_one_replica(store: JobStore) -> None:
    a, _, c = (new_job(store, job_id=i) for i in "abc")
    assert store.claim_orphans(5) == []  # created jobs are held by their creator
    assert store.renew_leases(["a", "b", "c", "missing"]) == {"a", "b", "c"}
    store.finish_with_error("b", JobError(1, "cancelled by the caller", "CANCELLED"), cancelled=True)
    assert store.renew_leases(["a", "b"]) == {"a"}  # a finished job is held no more
    store.release(["a", "c"])
    assert store.renew_leases(["a", "c"]) == set()
    assert [j.id for j in store.claim_orphans(1)] == ["a"]  # oldest first, at most ``limit``
    assert [j.id for j in store.claim_orphans(5)] == ["c"]
    assert store.claim_orphans(0) == [] and store.renew_leases([]) == set()
    assert store.get_job("acme", "a").revision == a.revision  # lease changes are invisible to watchers
    store.start_run("a")
    store.add_version("a", version_result(), completes_round=False)
    done, _ = store.next_round_or_succeed("a")
    assert done.state is JobState.SUCCEEDED and store.renew_leases(["a"]) == set()
    assert {c.id} == store.renew_leases(["c"])


def test_schema_is_versioned(backend: Backend) -> None:
    backend.open().close()
    backend.open().close()  # reopening applies nothing twice
    versions = [r[0] for r in backend.sql("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [v for v, _ in MIGRATIONS] and versions[-1] == SCHEMA_VERSION
    backend.sql("INSERT INTO schema_migrations VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises(FailedPrecondition, match="newer than this gateway supports"):
        backend.open()


def test_upgrade_from_schema_1_keeps_jobs(backend: Backend) -> None:
    """A database written by a gateway before leases existed: migrated on open, its jobs resumable."""
    backend.sql("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_time BIGINT NOT NULL)")
    for statement in MIGRATIONS[0][1]:
        backend.sql(statement)
    backend.sql("INSERT INTO schema_migrations VALUES (1, 0)")
    backend.sql("INSERT INTO jobs (id, tenant, state, options, input_image, create_time, update_time)"
                " VALUES ('old', 'acme', 'RUNNING', ?, ?, 1, 1)",
                (json.dumps(JobOptions().to_json()), json.dumps(artifact_to_json(ref("img")))))
    store = backend.open()
    applied = [r[0] for r in backend.sql("SELECT version FROM schema_migrations ORDER BY version")]
    assert applied == [v for v, _ in MIGRATIONS]
    [job] = store.claim_orphans(5)
    assert job.id == "old" and job.state is JobState.RUNNING and job.input_image == ref("img")
    store.close()


def test_sqlite_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    JobStore(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    with pytest.raises(ValueError, match="open_job_store"):
        JobStore("postgresql://user@db:5432/jobs")


# ---- configuration --------------------------------------------------------------------------------


def test_gateway_config_from_env() -> None:
    config = load_config(GatewayConfig, env={
        "GLIMPSE3D_DB_PATH": "/data/jobs.sqlite3", "GLIMPSE3D_QUEUE_SIZE": "3", "GLIMPSE3D_WORKERS": "4",
        "GLIMPSE3D_DEPTH_ADDR": "depth:50051", "GLIMPSE3D_REFINE_DEADLINE_S": "12.5",
        "GLIMPSE3D_PRESIGN_EXPIRY_S": "60",
    })
    assert config.db_path == Path("/data/jobs.sqlite3") and config.queue_size == 3 and config.workers == 4
    assert config.depth_addr == "depth:50051" and config.refine_deadline_s == 12.5
    assert config.presign_expiry.total_seconds() == 60
    for variable, value in (("GLIMPSE3D_QUEUE_SIZE", "0"), ("GLIMPSE3D_DEPTH_ADDR", "nohost"),
                            ("GLIMPSE3D_ENHANCE_DEADLINE_S", "0"), ("GLIMPSE3D_PRESIGN_EXPIRY_S", "864000"),
                            ("GLIMPSE3D_WORKERS", "many")):
        with pytest.raises(ConfigError):
            load_config(GatewayConfig, env={variable: value})
