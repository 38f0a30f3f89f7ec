"""The job store's tables and their migrations, one list for SQLite and PostgreSQL.

- ``jobs``: one row per job; ``UNIQUE (tenant, request_id)`` makes CreateJob idempotent (AIP-155).
  ``pending_rounds`` is the JSON list of rounds still to run, the running one first; ``error`` the JSON
  google.rpc.Status of the last failure; ``owner`` / ``lease_expiry`` the lease. Times are integer
  microseconds since the Unix epoch.
- ``versions``: the splat versions of each job, numbered from 1.
- ``enhance_requests``: the ``request_id`` of every accepted Enhance call, so a retry starts no second round.
- ``request_hash`` (jobs, enhance_requests): the sha256 of the canonical request the ``request_id`` came with;
  the same id with another request is refused (ALREADY_EXISTS) instead of answered with the first one.
- ``meta``: the secret that signs page tokens, created with the database.
- ``schema_migrations``: which versions of :data:`MIGRATIONS` have been applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from glimpse3d.core.errors import FailedPrecondition
from glimpse3d.gateway.store.db import Connection

logger = logging.getLogger(__name__)

# One list for both databases. SQLite reads BIGINT as INTEGER and DOUBLE PRECISION as REAL (its type
# affinities), the types version 1 was first written with, so files created before are unchanged.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, (
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            request_id TEXT,
            display_name TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL,
            stage TEXT NOT NULL DEFAULT '',
            fraction DOUBLE PRECISION NOT NULL DEFAULT 0,
            message TEXT NOT NULL DEFAULT '',
            options TEXT NOT NULL,
            input_image TEXT NOT NULL,
            error TEXT,
            pending_rounds TEXT NOT NULL DEFAULT '[]',
            revision BIGINT NOT NULL DEFAULT 1,
            create_time BIGINT NOT NULL,
            update_time BIGINT NOT NULL,
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
            create_time BIGINT NOT NULL,
            PRIMARY KEY (job_id, number)
        )""",
        """CREATE TABLE enhance_requests (
            job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            request_id TEXT NOT NULL,
            create_time BIGINT NOT NULL,
            PRIMARY KEY (job_id, request_id)
        )""",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    )),
    (2, (  # leases: which replica works on a job, and until when
        "ALTER TABLE jobs ADD COLUMN owner TEXT",
        "ALTER TABLE jobs ADD COLUMN lease_expiry BIGINT",
    )),
    (3, (  # the sha256 of the canonical request a request_id was first used with (NULL: not recorded)
        "ALTER TABLE jobs ADD COLUMN request_hash TEXT",
        "ALTER TABLE enhance_requests ADD COLUMN request_hash TEXT",
    )),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrate(db: Connection, *, clock: Callable[[], int], database: str) -> None:
    """Apply the versions of :data:`MIGRATIONS` that ``db`` lacks (run it in a ``migrate`` transaction);
    FailedPrecondition when the database's schema is newer than this code."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
               "(version INTEGER PRIMARY KEY, applied_time BIGINT NOT NULL)")
    current = db.execute("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations").fetchone()["v"]
    if current > SCHEMA_VERSION:
        raise FailedPrecondition(
            f"job database schema version {current} is newer than this gateway supports ({SCHEMA_VERSION})"
        )
    for version, statements in MIGRATIONS:
        if version <= current:
            continue
        for statement in statements:
            db.execute(statement)
        db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, clock()))
        logger.info("applied job store migration %d", version, extra={"database": database})
