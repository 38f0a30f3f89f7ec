"""The job store: jobs, versions, rounds and leases, written once for any :class:`~.db.Database`.

Every method is one transaction. A method that changes a job first locks its row, checks the state
machine (:mod:`glimpse3d.gateway.states`) and bumps the job's ``revision``, so read-modify-writes never
interleave, even between processes. A job that needs work is held by one replica (``owner``) until its
lease expires; the runner's writes are fenced by it (docs/deploy-state.md describes the leases).

Page tokens are ``base64url(JSON [create_time, id, mac])``: the keyset of the last job returned and an
HMAC-SHA256 over it and the tenant, keyed by the database's secret, so every replica accepts them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from glimpse3d.core.artifacts import ArtifactRef
from glimpse3d.core.errors import AlreadyExists, FailedPrecondition, InvalidInput, NotFound, Overloaded, shorten
from glimpse3d.gateway.jobs import (
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
from glimpse3d.gateway.store.db import Connection, Database, dump_json, marks, now_us
from glimpse3d.gateway.store.schema import SCHEMA_VERSION, migrate
from glimpse3d.gateway.store.sqlite import SqliteDatabase

if TYPE_CHECKING:
    from glimpse3d.gateway.config import GatewayConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_PAGE_TOKEN_CHARS = 512
DEFAULT_LEASE_S = 30.0
RESUMED_MESSAGE = "interrupted by a gateway restart; resuming"
_ACTIVE_SQL = "state IN ('QUEUED', 'RUNNING')"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class RequestIdReused(AlreadyExists):
    """A ``request_id`` came back with a request other than the one it was first used with.

    ALREADY_EXISTS rather than FAILED_PRECONDITION: the id names something that exists (the first
    request's job or round), and no change of state makes the call succeed; only a new id does."""

    reason = "REQUEST_ID_REUSED"


def request_hash(canonical: Any) -> str:
    """The sha256 of a request in canonical form (key-sorted compact JSON of ``canonical``)."""
    return hashlib.sha256(dump_json(canonical).encode()).hexdigest()


def round_request_hash(spec: RoundSpec) -> str:
    """What identifies an Enhance request: the round without its ``request_id``."""
    return request_hash({k: v for k, v in spec.to_json().items() if k != "request_id"})


def _check_same_request(stored: str | None, given: str, request_id: str, what: str) -> None:
    if stored and given and stored != given:
        raise RequestIdReused(
            f"request_id {shorten(request_id)} was already used for a different {what}; retry with the same "
            f"request to get its result, or use a new request_id", field="request_id")


class RoundOutcome(StrEnum):
    """What :meth:`JobStore.request_round` did."""

    STARTED = "started"  # the job was idle: it is RUNNING now, held by this replica, and needs a worker
    APPENDED = "appended"  # a round is running: this one runs after it, on the replica running the job
    DUPLICATE = "duplicate"  # the request_id was seen before: nothing changed
    NO_CAPACITY = "no_capacity"  # the job is idle but the caller had no queue slot: nothing changed


def default_owner() -> str:
    """This process's owner id: host name, pid and a random suffix (pids repeat across containers)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def normalize_page_size(page_size: int) -> int:
    """0 means the default, larger values are clamped to the maximum, negative is invalid."""
    if page_size < 0:
        raise InvalidInput(f"page_size must be >= 0, got {page_size}", field="page_size")
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def open_job_store(config: GatewayConfig, *, clock: Callable[[], int] = now_us) -> JobStore:
    """The store ``config`` asks for: PostgreSQL at ``db_url`` when set, else SQLite at ``db_path``."""
    database: Database
    if config.db_url:
        from glimpse3d.gateway.store.postgres import PostgresDatabase

        database = PostgresDatabase(config.db_url, pool_size=config.db_pool_size)
    else:
        database = SqliteDatabase(config.db_path)
    return JobStore(database, owner=config.replica_id or None, lease_s=config.job_lease_s, clock=clock)


class JobStore:
    """Jobs and versions in a :class:`Database`; a path opens a :class:`SqliteDatabase` there.

    ``owner`` names this replica in the leases it takes (default :func:`default_owner`); ``lease_s``
    is how long a lease lasts without renewal. The store owns ``database`` and closes it.
    """

    def __init__(
        self,
        database: Database | Path | str,
        *,
        owner: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        clock: Callable[[], int] = now_us,
    ) -> None:
        if not lease_s > 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s}")
        if isinstance(database, str) and "://" in database:
            raise ValueError("JobStore takes a SQLite path or a Database; open a URL with open_job_store")
        self._db: Database = SqliteDatabase(database) if isinstance(database, (str, Path)) else database
        self.owner = owner or default_owner()
        self.lease_s = lease_s
        self._lease_us = int(lease_s * 1_000_000)
        self._clock = clock
        try:
            self._migrate()
            self._token_key = self._load_token_key()
            if self._db.exclusive:
                self._tx(lambda db: db.execute(
                    "UPDATE jobs SET owner = NULL, lease_expiry = NULL WHERE owner IS NOT NULL"))
        except BaseException:
            self._db.close()
            raise
        logger.info("job store open", extra={"database": self._db.name, "schema_version": SCHEMA_VERSION,
                                             "owner": self.owner})

    @property
    def database(self) -> Database:
        return self._db

    def close(self) -> None:
        self._db.close()

    # ---- plumbing -------------------------------------------------------------------------------

    def _tx(self, fn: Callable[[Connection], T]) -> T:
        return self._db.transaction(fn)

    def _migrate(self) -> None:
        self._db.transaction(lambda db: migrate(db, clock=self._clock, database=self._db.name), migrate=True)

    def _load_token_key(self) -> bytes:
        def load(db: Connection) -> bytes:
            db.execute("INSERT INTO meta VALUES ('page_token_key', ?) ON CONFLICT DO NOTHING", (secrets.token_hex(32),))
            return bytes.fromhex(db.execute("SELECT value FROM meta WHERE key = 'page_token_key'").fetchone()["value"])

        return self._tx(load)

    def _versions(self, db: Connection, job_ids: Sequence[str]) -> dict[str, list[Version]]:
        found: dict[str, list[Version]] = {job_id: [] for job_id in job_ids}
        if not job_ids:
            return found
        rows = db.execute(
            f"SELECT * FROM versions WHERE job_id IN ({marks(job_ids)}) ORDER BY job_id, number", tuple(job_ids)
        ).fetchall()
        for row in rows:
            found[row["job_id"]].append(_version_from_row(row))
        return found

    def _row(self, db: Connection, job_id: str, *, lock: bool) -> Any:
        suffix = self._db.lock_clause if lock else ""
        return db.execute(f"SELECT * FROM jobs WHERE id = ?{suffix}", (job_id,)).fetchone()

    def _load(self, db: Connection, job_id: str) -> Job | None:
        row = self._row(db, job_id, lock=False)
        return None if row is None else _job_from_row(row, self._versions(db, [job_id])[job_id])

    def _require(self, db: Connection, job_id: str) -> Job:
        job = self._load(db, job_id)
        if job is None:
            raise NotFound(f"job {job_name(job_id)} not found", field="name")
        return job

    def _locked(self, db: Connection, job_id: str) -> tuple[Job, str | None, int | None]:
        """Lock the job's row for this transaction: the job, its lease owner and expiry; NotFound if absent."""
        row = self._row(db, job_id, lock=True)
        if row is None:
            raise NotFound(f"job {job_name(job_id)} not found", field="name")
        return _job_from_row(row, self._versions(db, [job_id])[job_id]), row["owner"], row["lease_expiry"]

    def _lease(self) -> dict[str, Any]:
        return {"owner": self.owner, "lease_expiry": self._clock() + self._lease_us}

    def _claimable(self, owner: str | None, expiry: int | None) -> bool:
        return owner is None or owner == self.owner or expiry is None or expiry <= self._clock()

    def _write(self, db: Connection, job: Job, **columns: Any) -> Job:
        """Update ``columns`` of ``job`` (checking any state change; a job that stops needing work
        loses its lease) and return the new snapshot."""
        if "state" in columns:
            state = JobState(columns["state"])
            check_transition(job.state, state, job=job.name)
            if state not in ACTIVE_STATES:
                columns.update(owner=None, lease_expiry=None)
        columns["update_time"] = self._clock()
        assignments = ", ".join(f"{column} = ?" for column in columns)
        db.execute(
            f"UPDATE jobs SET {assignments}, revision = revision + 1 WHERE id = ?",
            (*columns.values(), job.id),
        )
        return self._require(db, job.id)

    def _set_lease(self, db: Connection, job_id: str) -> None:
        """Take or extend the lease without changing what watchers see (no revision bump)."""
        lease = self._lease()
        db.execute("UPDATE jobs SET owner = ?, lease_expiry = ? WHERE id = ?", (lease["owner"], lease["lease_expiry"],
                                                                                  job_id))

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
        request_hash: str = "",
        rounds: Sequence[RoundSpec] = (),
    ) -> tuple[Job, bool]:
        """Insert a QUEUED job, held by this replica; returns ``(job, created)``. ``rounds`` (the extra
        photos of the request) are queued to run after version 1, before its automatic rounds.

        With a ``request_id`` already used by ``tenant`` (also by another replica, concurrently)
        nothing is inserted and the original job is returned with ``created=False`` (AIP-155), when
        ``request_hash`` (the canonical request's sha256) matches the one stored with it;
        :class:`RequestIdReused` when it differs.
        """
        job_id = job_id or uuid.uuid4().hex

        def create(db: Connection) -> tuple[Job, bool]:
            now = self._clock()
            inserted = db.execute(
                "INSERT INTO jobs (id, tenant, request_id, display_name, state, message, options, input_image,"
                " owner, lease_expiry, create_time, update_time, request_hash, pending_rounds)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, request_id) DO NOTHING",
                (job_id, tenant, request_id or None, display_name, JobState.QUEUED.value, "queued",
                 dump_json(options.to_json()), dump_json(artifact_to_json(input_image)), self.owner,
                 now + self._lease_us, now, now, (request_hash or None) if request_id else None,
                 dump_json([spec.to_json() for spec in rounds])),
            ).rowcount
            if not inserted:
                existing = self._by_request_id(db, tenant, request_id, request_hash)
                assert existing is not None, "ON CONFLICT skipped the insert but no job holds the request_id"
                return existing, False
            return self._require(db, job_id), True

        return self._tx(create)

    def _by_request_id(self, db: Connection, tenant: str, request_id: str, request_hash: str = "") -> Job | None:
        row = db.execute(
            "SELECT id, request_hash FROM jobs WHERE tenant = ? AND request_id = ?", (tenant, request_id)
        ).fetchone()
        if row is None:
            return None
        _check_same_request(row["request_hash"], request_hash, request_id, "job")
        return self._load(db, row["id"])

    def find_by_request_id(self, tenant: str, request_id: str, request_hash: str = "") -> Job | None:
        """The job ``tenant`` created with ``request_id``, or None; :class:`RequestIdReused` when
        ``request_hash`` differs from the one stored with it (an empty hash matches any)."""
        return self._tx(lambda db: self._by_request_id(db, tenant, request_id, request_hash))

    def get_job(self, tenant: str, job_id: str) -> Job:
        """The job if it belongs to ``tenant``; NotFound otherwise (other tenants' jobs are invisible)."""
        job = self.load_job(job_id)
        if job is None or job.tenant != tenant:
            raise NotFound(f"job {job_name(job_id)} not found", field="name")
        return job

    def delete_tenant(self, tenant: str) -> list[str]:
        """Delete every job of ``tenant`` (with its versions and queued rounds) in one transaction and
        return their ids. FailedPrecondition naming them while any is QUEUED or RUNNING: cancel those
        first (CancelJob), so that no replica's worker writes to a job being deleted."""
        return self.delete_tenant_jobs(tenant)[0]

    def delete_tenant_jobs(self, tenant: str) -> tuple[list[str], int]:
        """:meth:`delete_tenant`, also returning how many versions were deleted with the jobs."""
        def delete(db: Connection) -> tuple[list[str], int]:
            rows = db.execute(f"SELECT id, state FROM jobs WHERE tenant = ?{self._db.lock_clause}",
                              (tenant,)).fetchall()
            active = sorted(row["id"] for row in rows if row["state"] in {s.value for s in ACTIVE_STATES})
            if active:
                shown = ", ".join(job_name(job_id) for job_id in active[:5]) + (" ..." if len(active) > 5 else "")
                raise FailedPrecondition(
                    f"tenant {tenant!r} has {len(active)} job(s) queued or running ({shown}); cancel them first",
                    field="tenant")
            ids = [row["id"] for row in rows]
            versions = 0
            for start in range(0, len(ids), 500):
                chunk = tuple(ids[start:start + 500])
                versions += int(db.execute(f"SELECT COUNT(*) AS n FROM versions WHERE job_id IN ({marks(chunk)})",
                                           chunk).fetchone()["n"])
                db.execute(f"DELETE FROM enhance_requests WHERE job_id IN ({marks(chunk)})", chunk)
                db.execute(f"DELETE FROM versions WHERE job_id IN ({marks(chunk)})", chunk)
                db.execute(f"DELETE FROM jobs WHERE id IN ({marks(chunk)})", chunk)
            return ids, versions

        deleted, versions = self._tx(delete)
        logger.info("deleted the jobs of a tenant",
                    extra={"tenant": tenant, "jobs": len(deleted), "versions": versions})
        return deleted, versions

    # The columns that hold artifact references (inside their JSON), rewritten by rewrite_artifact_uris.
    _URI_COLUMNS = (("jobs", ("id",), ("input_image", "options", "pending_rounds", "error")),
                    ("versions", ("job_id", "number"), ("splat", "confidence", "camera", "report", "metrics")))

    def rewrite_artifact_uris(self, rewrite: Callable[[str], str], *, dry_run: bool = False) -> int:
        """Apply ``rewrite`` (old text -> new text, the same when nothing is to change) to every column
        of every job and version that may hold an artifact URI, in one transaction per table; the number
        of rows changed (counted, not written, with ``dry_run``). Used to move artifact references (see
        ``glimpse3d.gateway.tenants.migrate_legacy_artifacts``)."""
        changed = 0
        for table, keys, columns in self._URI_COLUMNS:
            def apply(db: Connection, table: str = table, keys: tuple[str, ...] = keys,
                      columns: tuple[str, ...] = columns) -> int:
                rows = db.execute(f"SELECT {', '.join(keys + columns)} FROM {table}{self._db.lock_clause}").fetchall()
                count = 0
                for row in rows:
                    updates = {c: rewrite(row[c]) for c in columns if row[c] is not None}
                    updates = {c: v for c, v in updates.items() if v != row[c]}
                    if not updates:
                        continue
                    count += 1
                    if not dry_run:
                        sets = ", ".join(f"{c} = ?" for c in updates)
                        where = " AND ".join(f"{k} = ?" for k in keys)
                        db.execute(f"UPDATE {table} SET {sets} WHERE {where}",
                                   (*updates.values(), *(row[k] for k in keys)))
                return count

            changed += self._tx(apply)
        return changed

    def load_job(self, job_id: str) -> Job | None:
        """The job regardless of tenant (for the runner), or None."""
        return self._tx(lambda db: self._load(db, job_id))

    def list_jobs(self, tenant: str, page_size: int = 0, page_token: str = "") -> tuple[list[Job], str]:
        """One page of ``tenant``'s jobs, newest first, and the token of the next page ("" at the end)."""
        size = normalize_page_size(page_size)
        after = self._decode_token(tenant, page_token) if page_token else None
        query, params = "SELECT * FROM jobs WHERE tenant = ?", [tenant]
        if after is not None:
            query += " AND (create_time < ? OR (create_time = ? AND id < ?))"
            params += [after[0], after[0], after[1]]
        query += " ORDER BY create_time DESC, id DESC LIMIT ?"

        def page(db: Connection) -> tuple[list[Any], dict[str, list[Version]]]:
            rows = db.execute(query, (*params, size + 1)).fetchall()
            return rows, self._versions(db, [row["id"] for row in rows[:size]])

        rows, versions = self._tx(page)
        jobs = [_job_from_row(row, versions[row["id"]]) for row in rows[:size]]
        token = self._encode_token(tenant, rows[size - 1]["create_time"], rows[size - 1]["id"]) if len(rows) > size \
            else ""
        return jobs, token

    def _mac(self, tenant: str, create_time: int, job_id: str) -> str:
        message = dump_json([tenant, create_time, job_id]).encode()
        return hmac.new(self._token_key, message, hashlib.sha256).hexdigest()[:32]

    def _encode_token(self, tenant: str, create_time: int, job_id: str) -> str:
        payload = dump_json([create_time, job_id, self._mac(tenant, create_time, job_id)])
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

    # ---- the runner's transitions (fenced by the lease) -----------------------------------------

    def start_run(self, job_id: str) -> Job | None:
        """Claim a job for a worker of this replica: QUEUED -> RUNNING; a RUNNING job (rounds
        queued, or resumed) is returned as it is. None when there is nothing to run or another
        replica holds an unexpired lease on it."""

        def claim(db: Connection) -> Job | None:
            row = self._row(db, job_id, lock=True)
            if row is None or JobState(row["state"]) not in ACTIVE_STATES:
                return None
            if not self._claimable(row["owner"], row["lease_expiry"]):
                return None
            job = self._require(db, job_id)
            if job.state is JobState.QUEUED:
                return self._write(db, job, state=JobState.RUNNING.value, message="running", **self._lease())
            self._set_lease(db, job_id)
            return job

        return self._tx(claim)

    def update_progress(self, job_id: str, progress: Progress) -> Job | None:
        """Record progress of a RUNNING job this replica holds; None (and no write) otherwise."""

        def update(db: Connection) -> Job | None:
            row = self._row(db, job_id, lock=True)
            if row is None or row["state"] != JobState.RUNNING.value or row["owner"] != self.owner:
                return None
            job = self._require(db, job_id)
            return self._write(db, job, stage=progress.stage, fraction=progress.fraction, message=progress.message)

        return self._tx(update)

    def _running_here(self, db: Connection, job_id: str, dropped: str) -> Job:
        """The job, locked, when it is RUNNING and held by this replica; else FailedPrecondition."""
        job, owner, _ = self._locked(db, job_id)
        if job.state is not JobState.RUNNING:
            raise FailedPrecondition(f"job {job.name} is {job.state.value}, not RUNNING; {dropped}")
        if owner != self.owner:
            raise FailedPrecondition(f"job {job.name} is held by another gateway replica; {dropped}")
        return job

    def add_version(
        self, job_id: str, result: VersionResult, *, completes_round: bool, then_rounds: Sequence[RoundSpec] = ()
    ) -> Job:
        """Append the next version of a RUNNING job this replica holds; ``completes_round`` pops the
        round it came from, ``then_rounds`` are queued after the others (the automatic rounds after
        version 1). FailedPrecondition if the job stopped running meanwhile (it was cancelled) or
        another replica took it over."""

        def add(db: Connection) -> Job:
            job = self._running_here(db, job_id, "version dropped")
            db.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, len(job.versions) + 1, dump_json(artifact_to_json(result.splat)),
                 None if result.confidence is None else dump_json(artifact_to_json(result.confidence)),
                 None if result.camera is None else dump_json(camera_to_json(result.camera)),
                 None if result.report is None else dump_json(result.report.to_json()),
                 dump_json({k: float(v) for k, v in result.metrics.items()}), self._clock()),
            )
            pending = list(job.pending_rounds[1:] if completes_round else job.pending_rounds) + list(then_rounds)
            return self._write(db, job, pending_rounds=dump_json([spec.to_json() for spec in pending]))

        return self._tx(add)

    def skip_round(self, job_id: str, error: JobError) -> Job:
        """The running round of a RUNNING job this replica holds ended without a version (the gateway
        rejected it: it would have made the model worse): pop it, keep the rounds queued behind it, and
        record why in ``error`` (kept until the next Enhance). FailedPrecondition as in :meth:`add_version`."""

        def skip(db: Connection) -> Job:
            job = self._running_here(db, job_id, "round outcome dropped")
            pending = list(job.pending_rounds[1:])
            return self._write(db, job, pending_rounds=dump_json([spec.to_json() for spec in pending]),
                               error=dump_json(error.to_json()), message=error.message)

        return self._tx(skip)

    def next_round_or_succeed(self, job_id: str) -> tuple[Job, RoundSpec | None]:
        """The round to run next, or, when none is left, RUNNING -> SUCCEEDED (one transaction, so
        a round appended concurrently, through any replica, is never stranded). A job that is no
        longer RUNNING, or no longer held by this replica, gets ``(job, None)`` unchanged."""

        def step(db: Connection) -> tuple[Job, RoundSpec | None]:
            job, owner, _ = self._locked(db, job_id)
            if job.state is not JobState.RUNNING or owner != self.owner:
                return job, None
            if job.pending_rounds:
                return job, job.pending_rounds[0]
            # ``error`` stays: a round of this run may have been rejected (skip_round); Enhance clears it.
            return self._write(db, job, state=JobState.SUCCEEDED.value, fraction=1.0, message="done"), None

        return self._tx(step)

    def finish_with_error(self, job_id: str, error: JobError, *, cancelled: bool = False,
                          held_only: bool = False) -> Job:
        """Stop an active job: without versions it becomes FAILED (or CANCELLED); with versions it
        returns to SUCCEEDED, keeping them, with ``error`` set. Queued rounds are dropped. A job
        that is already done is returned unchanged (cancelling a finished job is a no-op), and so
        is one another replica holds when ``held_only`` (the runner's own failures)."""

        def finish(db: Connection) -> Job:
            job, owner, _ = self._locked(db, job_id)
            if job.state not in ACTIVE_STATES or (held_only and owner != self.owner):
                return job
            if job.versions:
                state = JobState.SUCCEEDED
            else:
                state = JobState.CANCELLED if cancelled else JobState.FAILED
            return self._write(db, job, state=state.value, error=dump_json(error.to_json()),
                               message=error.message, pending_rounds="[]")

        return self._tx(finish)

    def request_round(
        self, tenant: str, job_id: str, spec: RoundSpec, *, max_pending: int, can_start: bool
    ) -> tuple[Job, RoundOutcome]:
        """Accept an Enhance call (see :class:`RoundOutcome`); ``can_start`` says whether the caller
        holds a queue slot for an idle job. FailedPrecondition for a job that has no version yet or
        is FAILED/CANCELLED; Overloaded when ``max_pending`` rounds already wait."""

        def request(db: Connection) -> tuple[Job, RoundOutcome]:
            job, _, _ = self._locked(db, job_id)
            if job.tenant != tenant:
                raise NotFound(f"job {job.name} not found", field="name")
            fingerprint = round_request_hash(spec) if spec.request_id else ""
            seen = spec.request_id and db.execute(
                "SELECT request_hash FROM enhance_requests WHERE job_id = ? AND request_id = ?",
                (job_id, spec.request_id),
            ).fetchone()
            if seen:
                _check_same_request(seen["request_hash"], fingerprint, spec.request_id, "enhancement round")
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
                db.execute("INSERT INTO enhance_requests (job_id, request_id, create_time, request_hash)"
                           " VALUES (?, ?, ?, ?)", (job_id, spec.request_id, self._clock(), fingerprint))
            pending = dump_json([s.to_json() for s in (*job.pending_rounds, spec)])
            if job.state is JobState.RUNNING:
                return self._write(db, job, pending_rounds=pending), RoundOutcome.APPENDED
            job = self._write(db, job, state=JobState.RUNNING.value, pending_rounds=pending, error=None,
                              stage=Stage.ENHANCE.value, fraction=0.0, message="enhancement round queued",
                              **self._lease())
            return job, RoundOutcome.STARTED

        return self._tx(request)

    # ---- leases ---------------------------------------------------------------------------------

    def renew_leases(self, job_ids: Iterable[str]) -> set[str]:
        """Extend this replica's leases on ``job_ids``; returns those it still holds (active and
        owned). The others were cancelled, finished, or taken over after the lease expired."""
        ids = sorted(set(job_ids))
        if not ids:
            return set()

        def renew(db: Connection) -> set[str]:
            rows = db.execute(
                f"UPDATE jobs SET lease_expiry = ? WHERE owner = ? AND {_ACTIVE_SQL} AND id IN ({marks(ids)})"
                " RETURNING id",
                (self._clock() + self._lease_us, self.owner, *ids),
            ).fetchall()
            return {row["id"] for row in rows}

        return self._tx(renew)

    def release(self, job_ids: Iterable[str]) -> None:
        """Give up this replica's leases on ``job_ids`` (a graceful stop): other replicas, or this
        one after a restart, adopt the jobs at once instead of waiting for the leases to expire."""
        ids = sorted(set(job_ids))
        if ids:
            self._tx(lambda db: db.execute(
                f"UPDATE jobs SET owner = NULL, lease_expiry = NULL WHERE owner = ? AND id IN ({marks(ids)})",
                (self.owner, *ids)))

    def claim_orphans(self, limit: int) -> list[Job]:
        """Adopt up to ``limit`` QUEUED and RUNNING jobs that no live replica holds (no lease, or an
        expired one), oldest first; RUNNING ones are marked as resumed. Rows another replica is
        claiming at the same moment are skipped, never adopted twice."""
        if limit <= 0:
            return []

        def claim(db: Connection) -> list[Job]:
            rows = db.execute(
                f"SELECT id, state FROM jobs WHERE {_ACTIVE_SQL} AND (owner IS NULL OR lease_expiry IS NULL"
                f" OR lease_expiry <= ?) ORDER BY create_time, id LIMIT ?{self._db.claim_clause}",
                (self._clock(), limit),
            ).fetchall()
            jobs = []
            for row in rows:
                if row["state"] == JobState.RUNNING.value:
                    jobs.append(self._write(db, self._require(db, row["id"]), message=RESUMED_MESSAGE,
                                            **self._lease()))
                else:
                    self._set_lease(db, row["id"])
                    jobs.append(self._require(db, row["id"]))
            return jobs

        jobs = self._tx(claim)
        if jobs:
            logger.info("adopted %d jobs no live replica held", len(jobs), extra={"owner": self.owner})
        return jobs



def _to_datetime(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _version_from_row(row: Any) -> Version:
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


def _job_from_row(row: Any, versions: Sequence[Version]) -> Job:
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
