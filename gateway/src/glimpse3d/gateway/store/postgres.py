"""PostgreSQL backend of the job store (``GLIMPSE3D_DB_URL``), for several gateway replicas.

psycopg 3 with its pool; one transaction per store method at READ COMMITTED. What differs from
SQLite: ``%s`` placeholders, ``FOR UPDATE [SKIP LOCKED]`` row locks, migrations under an advisory
lock, serialization failures and deadlocks retried, an unreachable server reported as
:class:`~.db.DatabaseUnavailable`. A password in the URL is never logged: only
:attr:`PostgresDatabase.name` is, which has none (docs/deploy-state.md has the settings).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, LiteralString, TypeVar, cast

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from glimpse3d.core.config import ConfigError
from glimpse3d.gateway.config import check_db_url
from glimpse3d.gateway.store.db import Connection, Cursor, DatabaseUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_POOL_SIZE = 10
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRIES = 4
# pg_advisory_xact_lock key held while migrating ("g3d" "jobs" in ASCII); any constant works.
MIGRATION_LOCK_KEY = 0x673364_6A6F6273
_RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)


def describe(params: dict[str, Any]) -> str:
    """``postgresql://user@host:port/dbname`` from libpq parameters (and libpq's environment
    defaults for the parts left out), without the password."""
    user = params.get("user") or os.environ.get("PGUSER", "")
    host = params.get("host") or os.environ.get("PGHOST") or "localhost"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or user
    return f"postgresql://{user + '@' if user else ''}{host}:{port}/{dbname}"


def _log_retry(state: RetryCallState) -> None:
    err = state.outcome.exception() if state.outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    logger.info("job database transaction retried: %s", _first_line(err) if err else "",
                extra={"attempt": state.attempt_number, "delay_s": round(delay, 3)})


def retry_policy(attempts: int) -> Retrying:
    """The store's one retry policy: serialization failures and deadlocks are retried with jittered
    exponential backoff (20 ms doubling, at most 1 s) for ``attempts`` attempts in all, then re-raised."""
    return Retrying(retry=retry_if_exception_type(_RETRYABLE), stop=stop_after_attempt(attempts),
                    wait=wait_exponential_jitter(multiplier=0.02, max=1.0, jitter=0.02),
                    before_sleep=_log_retry, reraise=True)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


@lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    return sql.replace("?", "%s")


class _PgConnection:
    """The store's :class:`~.db.Connection` over a psycopg connection."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        # psycopg accepts only literal SQL; the store's statements are its own constants (values go in params).
        return self._conn.execute(cast(LiteralString, _pg_sql(sql)), tuple(params) or None)


class PostgresDatabase:
    """A pool of connections to one PostgreSQL database (see the module docstring)."""

    exclusive = False
    lock_clause = " FOR UPDATE"
    claim_clause = " FOR UPDATE SKIP LOCKED"

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        check_db_url(url)
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as err:
            raise ConfigError(f"db_url is not a valid PostgreSQL URL: {_first_line(err)}", field="db_url") from None
        self.name = describe(params)
        self._password = str(params.get("password") or "")
        self._retries = max(1, retries)
        self._retrying = retry_policy(self._retries)
        self._timeout_s = timeout_s
        kwargs: dict[str, Any] = {"autocommit": True, "row_factory": dict_row}
        if "connect_timeout" not in params:
            kwargs["connect_timeout"] = max(1, round(timeout_s))
        if "application_name" not in params:
            kwargs["application_name"] = "glimpse3d-gateway"
        try:  # one direct connection first: libpq's own reason when the server cannot be reached
            psycopg.connect(url, **kwargs).close()
        except psycopg.OperationalError as err:
            raise self._unavailable(err) from err
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url, kwargs=kwargs, min_size=1, max_size=max(1, pool_size), timeout=timeout_s,
            check=ConnectionPool.check_connection, name="glimpse3d-jobs", open=False,
        )
        self._pool.open()
        logger.info("job database connected", extra={"database": self.name, "pool_size": pool_size})

    def _unavailable(self, err: BaseException, what: str = "is unavailable") -> DatabaseUnavailable:
        reason = _first_line(err)
        if self._password:
            reason = reason.replace(self._password, "***")
        return DatabaseUnavailable(f"job database {self.name} {what}: {reason}",
                                   metadata={"store": "jobs", "database": self.name})

    def transaction(self, fn: Callable[[Connection], T], *, migrate: bool = False) -> T:
        def attempt() -> T:
            with self._pool.connection() as conn, conn.transaction():
                if migrate:
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
                return fn(_PgConnection(conn))

        try:
            return self._retrying.copy()(attempt)  # a copy per call: its state is per call
        except _RETRYABLE as err:
            raise self._unavailable(err, f"stayed busy through {self._retries} attempts") from err
        except (psycopg.OperationalError, pg_errors.ReadOnlySqlTransaction) as err:
            # OperationalError includes the pool's PoolTimeout, a lost connection, a server shutting down
            # and disk full (class 53); a read-only transaction means a standby answered (failover).
            raise self._unavailable(err) from err

    def close(self) -> None:
        self._pool.close()
