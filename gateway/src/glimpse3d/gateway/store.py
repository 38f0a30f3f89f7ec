"""Persistent job store on SQLite (the embedded default; production swaps in PostgreSQL).

One connection in WAL mode, used under a lock, so the store is safe to call from any thread; the
application layer calls it through ``asyncio.to_thread``. Every method that changes a job runs in
one ``BEGIN IMMEDIATE`` transaction, checks the state machine (:mod:`glimpse3d.gateway.states`)
and bumps the job's ``revision``, so a read-modify-write never interleaves with another one and
watchers can order snapshots. One gateway process owns a database file at a time.

Tables (see :data:`MIGRATIONS`; ``schema_migrations`` records which have been applied):

- ``jobs``: one row per job. ``request_id`` is NULL when the caller sent none, and
  ``UNIQUE(tenant, request_id)`` makes CreateJob idempotent (AIP-155). ``pending_rounds`` is the
  JSON list of enhancement rounds still to run, the running one first; ``error`` is the JSON
  google.rpc.Status of the last failure. Times are integer microseconds since the Unix epoch.
- ``versions``: the splat versions of each job, numbered from 1.
- ``enhance_requests``: the ``request_id`` of every accepted Enhance call, so a retry does not
  start a second round.
- ``meta``: the secret that signs page tokens, created with the database.

Page tokens are ``base64url(JSON [create_time, id, mac])``: the keyset of the last job returned
plus an HMAC-SHA256 over it and the tenant, keyed by the database's secret. A token from another
tenant, an edited token or garbage is rejected with InvalidInput("page_token is invalid").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from glimpse3d.core.artifacts import ArtifactRef
from glimpse3d.core.errors import FailedPrecondition, InvalidInput, NotFound, Overloaded
from glimpse3d.gateway.models import (
    Job,
    JobError,
    JobOptions,
    Progress,
    RoundReport,
    RoundSpec,
    Version,
    VersionResult,
    artifact_from_json,
    artifact_to_json,
    camera_from_json,
    camera_to_json,
    job_name,
)
from glimpse3d.gateway.states import ACTIVE_STATES, JobState, Stage, check_transition

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_PAGE_TOKEN_CHARS = 512

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, (
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            request_id TEXT,
            display_name TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL,
            stage TEXT NOT NULL DEFAULT '',
            fraction REAL NOT NULL DEFAULT 0,
            message TEXT NOT NULL DEFAULT '',
            options TEXT NOT NULL,
            input_image TEXT NOT NULL,
            error TEXT,
            pending_rounds TEXT NOT NULL DEFAULT '[]',
            revision INTEGER NOT NULL DEFAULT 1,
            create_time INTEGER NOT NULL,
            update_time INTEGER NOT NULL,
            UNIQUE (tenant, request_id)
        )""",
        "CREATE INDEX jobs_by_tenant_time ON jobs (tenant, create_time DESC, id DESC)",
        "CREATE INDEX jobs_by_state ON jobs (state)",
        """CREATE TABLE versions (
            job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            number INTEGER NOT NULL,
            splat TEXT NOT NULL,
            confidence TEXT,
            camera TEXT,
            report TEXT,
            metrics TEXT NOT NULL DEFAULT '{}',
            create_time INTEGER NOT NULL,
            PRIMARY KEY (job_id, number)
        )""",
        """CREATE TABLE enhance_requests (
            job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            request_id TEXT NOT NULL,
            create_time INTEGER NOT NULL,
            PRIMARY KEY (job_id, request_id)
        )""",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    )),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


class RoundOutcome(StrEnum):
    """What :meth:`JobStore.request_round` did."""

    STARTED = "started"  # the job was idle: it is RUNNING now and needs a worker
    APPENDED = "appended"  # a round is running: this one runs after it, on the same worker
    DUPLICATE = "duplicate"  # the request_id was seen before: nothing changed
    NO_CAPACITY = "no_capacity"  # the job is idle but the caller had no queue slot: nothing changed


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _now_us() -> int:
    return time.time_ns() // 1000


def _to_datetime(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def normalize_page_size(page_size: int) -> int:
    """0 means the default, larger values are clamped to the maximum, negative is invalid."""
    if page_size < 0:
        raise InvalidInput(f"page_size must be >= 0, got {page_size}", field="page_size")
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


class JobStore:
    """Jobs and versions in one SQLite file (``":memory:"`` for a throwaway store)."""

    def __init__(self, path: Path | str, *, clock: Callable[[], int] = _now_us) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA busy_timeout=5000")
        try:
            self._migrate()
            self._token_key = self._load_token_key()
        except BaseException:
            self._conn.close()
            raise
        logger.info("job store open", extra={"path": str(path), "schema_version": SCHEMA_VERSION})

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ---- plumbing -------------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                       "(version INTEGER PRIMARY KEY, applied_time INTEGER NOT NULL)")
            current = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise FailedPrecondition(
                    f"job database schema version {current} is newer than this gateway supports "
                    f"({SCHEMA_VERSION})"
                )
            for version, statements in MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    db.execute(statement)
                db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, self._clock()))
                logger.info("applied job store migration %d", version)

    def _load_token_key(self) -> bytes:
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('page_token_key', ?)", (secrets.token_hex(32),))
            return bytes.fromhex(db.execute("SELECT value FROM meta WHERE key = 'page_token_key'").fetchone()[0])

    def _versions(self, db: sqlite3.Connection, job_ids: Sequence[str]) -> dict[str, list[Version]]:
        found: dict[str, list[Version]] = {job_id: [] for job_id in job_ids}
        if not job_ids:
            return found
        marks = ",".join("?" * len(job_ids))
        rows = db.execute(f"SELECT * FROM versions WHERE job_id IN ({marks}) ORDER BY job_id, number", job_ids)
        for row in rows:
            found[row["job_id"]].append(_version_from_row(row))
        return found

    def _load(self, db: sqlite3.Connection, job_id: str) -> Job | None:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job_from_row(row, self._versions(db, [job_id])[job_id])

    def _require(self, db: sqlite3.Connection, job_id: str) -> Job:
        job = self._load(db, job_id)
        if job is None:
            raise NotFound(f"job {job_name(job_id)} not found", field="name")
        return job

    def _write(self, db: sqlite3.Connection, job: Job, **columns: Any) -> Job:
        """Update ``columns`` of ``job`` (checking any state change) and return the new snapshot."""
        if "state" in columns:
            check_transition(job.state, JobState(columns["state"]), job=job.name)
        columns["update_time"] = self._clock()
        assignments = ", ".join(f"{column} = ?" for column in columns)
        db.execute(
            f"UPDATE jobs SET {assignments}, revision = revision + 1 WHERE id = ?",
            (*columns.values(), job.id),
        )
        return self._require(db, job.id)

    # ---- create / read --------------------------------------------------------------------------

    def create_job(
        self,
        *,
        tenant: str,
        options: JobOptions,
        input_image: ArtifactRef,
        request_id: str = "",
        display_name: str = "",
        job_id: str | None = None,
    ) -> tuple[Job, bool]:
        """Insert a QUEUED job; returns ``(job, created)``.

        With a ``request_id`` already used by ``tenant`` nothing is inserted and the original job
        is returned with ``created=False``, whatever the rest of the request says (AIP-155).
        """
        job_id = job_id or uuid.uuid4().hex
        now = self._clock()
        with self._tx() as db:
            if request_id and (existing := self._by_request_id(db, tenant, request_id)) is not None:
                return existing, False
            db.execute(
                "INSERT INTO jobs (id, tenant, request_id, display_name, state, message, options,"
                " input_image, create_time, update_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, tenant, request_id or None, display_name, JobState.QUEUED.value, "queued",
                 _dump(options.to_json()), _dump(artifact_to_json(input_image)), now, now),
            )
            return self._require(db, job_id), True

    def _by_request_id(self, db: sqlite3.Connection, tenant: str, request_id: str) -> Job | None:
        row = db.execute(
            "SELECT id FROM jobs WHERE tenant = ? AND request_id = ?", (tenant, request_id)
        ).fetchone()
        return None if row is None else self._load(db, row["id"])

    def find_by_request_id(self, tenant: str, request_id: str) -> Job | None:
        with self._tx() as db:
            return self._by_request_id(db, tenant, request_id)

    def get_job(self, tenant: str, job_id: str) -> Job:
        """The job if it belongs to ``tenant``; NotFound otherwise (other tenants' jobs are invisible)."""
        job = self.load_job(job_id)
        if job is None or job.tenant != tenant:
            raise NotFound(f"job {job_name(job_id)} not found", field="name")
        return job

    def load_job(self, job_id: str) -> Job | None:
        """The job regardless of tenant (for the runner), or None."""
        with self._tx() as db:
            return self._load(db, job_id)

    def list_jobs(self, tenant: str, page_size: int = 0, page_token: str = "") -> tuple[list[Job], str]:
        """One page of ``tenant``'s jobs, newest first, and the token of the next page ("" at the end)."""
        size = normalize_page_size(page_size)
        after = self._decode_token(tenant, page_token) if page_token else None
        query, params = "SELECT * FROM jobs WHERE tenant = ?", [tenant]
        if after is not None:
            query += " AND (create_time < ? OR (create_time = ? AND id < ?))"
            params += [after[0], after[0], after[1]]
        query += " ORDER BY create_time DESC, id DESC LIMIT ?"
        with self._tx() as db:
            rows = db.execute(query, (*params, size + 1)).fetchall()
            page = rows[:size]
            versions = self._versions(db, [row["id"] for row in page])
        jobs = [_job_from_row(row, versions[row["id"]]) for row in page]
        token = self._encode_token(tenant, page[-1]["create_time"], page[-1]["id"]) if len(rows) > size else ""
        return jobs, token

    def _mac(self, tenant: str, create_time: int, job_id: str) -> str:
        message = _dump([tenant, create_time, job_id]).encode()
        return hmac.new(self._token_key, message, hashlib.sha256).hexdigest()[:32]

    def _encode_token(self, tenant: str, create_time: int, job_id: str) -> str:
        payload = _dump([create_time, job_id, self._mac(tenant, create_time, job_id)])
        return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")

    def _decode_token(self, tenant: str, token: str) -> tuple[int, str]:
        invalid = InvalidInput("page_token is invalid", field="page_token")
        if not isinstance(token, str) or len(token) > MAX_PAGE_TOKEN_CHARS:
            raise invalid
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            create_time, job_id, mac = json.loads(raw)
        except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
            raise invalid from None
        if not (isinstance(create_time, int) and isinstance(job_id, str) and isinstance(mac, str)):
            raise invalid
        if not hmac.compare_digest(mac, self._mac(tenant, create_time, job_id)):
            raise invalid
        return create_time, job_id

    # ---- the runner's transitions ---------------------------------------------------------------

    def start_run(self, job_id: str) -> Job | None:
        """Claim a job for a worker: QUEUED -> RUNNING; a RUNNING job (rounds queued, or resumed
        after a restart) is returned as it is. None when there is nothing to run."""
        with self._tx() as db:
            job = self._load(db, job_id)
            if job is None or job.state not in ACTIVE_STATES:
                return None
            if job.state is JobState.QUEUED:
                return self._write(db, job, state=JobState.RUNNING.value, message="running")
            return job

    def update_progress(self, job_id: str, progress: Progress) -> Job | None:
        """Record progress of a RUNNING job; None (and no write) if the job is not running."""
        with self._tx() as db:
            job = self._load(db, job_id)
            if job is None or job.state is not JobState.RUNNING:
                return None
            return self._write(db, job, stage=progress.stage, fraction=progress.fraction,
                               message=progress.message)

    def add_version(
        self, job_id: str, result: VersionResult, *, completes_round: bool, then_rounds: Sequence[RoundSpec] = ()
    ) -> Job:
        """Append the next version of a RUNNING job; ``completes_round`` pops the round it came
        from, ``then_rounds`` are queued after the others (the automatic rounds after version 1).
        FailedPrecondition if the job stopped running meanwhile (it was cancelled)."""
        with self._tx() as db:
            job = self._require(db, job_id)
            if job.state is not JobState.RUNNING:
                raise FailedPrecondition(f"job {job.name} is {job.state.value}, not RUNNING; version dropped")
            number = len(job.versions) + 1
            db.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, number, _dump(artifact_to_json(result.splat)),
                 None if result.confidence is None else _dump(artifact_to_json(result.confidence)),
                 None if result.camera is None else _dump(camera_to_json(result.camera)),
                 None if result.report is None else _dump(result.report.to_json()),
                 _dump({k: float(v) for k, v in result.metrics.items()}), self._clock()),
            )
            pending = list(job.pending_rounds[1:] if completes_round else job.pending_rounds) + list(then_rounds)
            return self._write(db, job, pending_rounds=_dump([spec.to_json() for spec in pending]))

    def next_round_or_succeed(self, job_id: str) -> tuple[Job, RoundSpec | None]:
        """The round to run next, or, when none is left, RUNNING -> SUCCEEDED (one transaction, so
        a round appended concurrently is never stranded). A job that is no longer RUNNING gets
        ``(job, None)`` unchanged."""
        with self._tx() as db:
            job = self._require(db, job_id)
            if job.state is not JobState.RUNNING:
                return job, None
            if job.pending_rounds:
                return job, job.pending_rounds[0]
            return self._write(db, job, state=JobState.SUCCEEDED.value, fraction=1.0, message="done",
                               error=None), None

    def finish_with_error(self, job_id: str, error: JobError, *, cancelled: bool = False) -> Job:
        """Stop an active job: without versions it becomes FAILED (or CANCELLED); with versions it
        returns to SUCCEEDED, keeping them, with ``error`` set. Queued rounds are dropped. A job
        that is already done is returned unchanged (cancelling a finished job is a no-op)."""
        with self._tx() as db:
            job = self._require(db, job_id)
            if job.state not in ACTIVE_STATES:
                return job
            if job.versions:
                state = JobState.SUCCEEDED
            else:
                state = JobState.CANCELLED if cancelled else JobState.FAILED
            return self._write(db, job, state=state.value, error=_dump(error.to_json()),
                               message=error.message, pending_rounds="[]")

    def request_round(
        self, tenant: str, job_id: str, spec: RoundSpec, *, max_pending: int, can_start: bool
    ) -> tuple[Job, RoundOutcome]:
        """Accept an Enhance call (see :class:`RoundOutcome`); ``can_start`` says whether the caller
        holds a queue slot for an idle job. FailedPrecondition for a job that has no version yet or
        is FAILED/CANCELLED; Overloaded when ``max_pending`` rounds already wait."""
        with self._tx() as db:
            job = self._require(db, job_id)
            if job.tenant != tenant:
                raise NotFound(f"job {job.name} not found", field="name")
            if spec.request_id and db.execute(
                "SELECT 1 FROM enhance_requests WHERE job_id = ? AND request_id = ?", (job_id, spec.request_id)
            ).fetchone():
                return job, RoundOutcome.DUPLICATE
            if job.state.final:
                raise FailedPrecondition(f"job {job.name} is {job.state.value}; it cannot be enhanced", field="name")
            if not job.versions:
                raise FailedPrecondition(
                    f"job {job.name} has no version yet; enhance it once it has succeeded", field="name"
                )
            if len(job.pending_rounds) >= max_pending:
                raise Overloaded(
                    f"job {job.name} already has {len(job.pending_rounds)} enhancement rounds queued; retry later"
                )
            if job.state is not JobState.RUNNING and not can_start:
                return job, RoundOutcome.NO_CAPACITY
            if spec.request_id:
                db.execute("INSERT INTO enhance_requests VALUES (?, ?, ?)", (job_id, spec.request_id, self._clock()))
            pending = _dump([s.to_json() for s in (*job.pending_rounds, spec)])
            if job.state is JobState.RUNNING:
                return self._write(db, job, pending_rounds=pending), RoundOutcome.APPENDED
            job = self._write(db, job, state=JobState.RUNNING.value, pending_rounds=pending, error=None,
                              stage=Stage.ENHANCE.value, fraction=0.0, message="enhancement round queued")
            return job, RoundOutcome.STARTED

    def recoverable_jobs(self) -> list[Job]:
        """QUEUED and RUNNING jobs, oldest first, for the runner to resume after a restart. RUNNING
        jobs are marked with a message saying their work was interrupted."""
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET message = 'interrupted by a gateway restart; resuming', revision = revision + 1,"
                " update_time = ? WHERE state = ?",
                (self._clock(), JobState.RUNNING.value),
            )
            ids = [row["id"] for row in db.execute(
                "SELECT id FROM jobs WHERE state IN (?, ?) ORDER BY create_time, id",
                (JobState.QUEUED.value, JobState.RUNNING.value),
            )]
            return [self._require(db, job_id) for job_id in ids]


def _version_from_row(row: sqlite3.Row) -> Version:
    return Version(
        job_id=row["job_id"],
        number=row["number"],
        splat=artifact_from_json(json.loads(row["splat"])),
        confidence=None if row["confidence"] is None else artifact_from_json(json.loads(row["confidence"])),
        camera=None if row["camera"] is None else camera_from_json(json.loads(row["camera"])),
        report=None if row["report"] is None else RoundReport.from_json(json.loads(row["report"])),
        metrics=json.loads(row["metrics"]),
        create_time=_to_datetime(row["create_time"]),
    )


def _job_from_row(row: sqlite3.Row, versions: Sequence[Version]) -> Job:
    return Job(
        id=row["id"],
        tenant=row["tenant"],
        request_id=row["request_id"] or "",
        display_name=row["display_name"],
        state=JobState(row["state"]),
        progress=Progress(row["stage"], row["fraction"], row["message"]),
        options=JobOptions.from_json(json.loads(row["options"])),
        input_image=artifact_from_json(json.loads(row["input_image"])),
        error=None if row["error"] is None else JobError.from_json(json.loads(row["error"])),
        pending_rounds=tuple(RoundSpec.from_json(spec) for spec in json.loads(row["pending_rounds"])),
        versions=tuple(versions),
        create_time=_to_datetime(row["create_time"]),
        update_time=_to_datetime(row["update_time"]),
        revision=row["revision"],
    )
