"""The gateway's persistent job store: :class:`JobStore` on SQLite (default) or PostgreSQL.

:mod:`.jobs` holds the logic, :mod:`.schema` the tables, :mod:`.db` what a backend supplies,
:mod:`.sqlite` and :mod:`.postgres` the backends (the latter is imported only when a URL asks for it).
"""

from glimpse3d.gateway.store.db import Connection, Cursor, Database, DatabaseUnavailable
from glimpse3d.gateway.store.jobs import (
    DEFAULT_LEASE_S,
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    MAX_PAGE_TOKEN_CHARS,
    RESUMED_MESSAGE,
    JobStore,
    RequestIdReused,
    RoundOutcome,
    default_owner,
    normalize_page_size,
    open_job_store,
    request_hash,
)
from glimpse3d.gateway.store.schema import MIGRATIONS, SCHEMA_VERSION
from glimpse3d.gateway.store.sqlite import SqliteDatabase

__all__ = [
    "DEFAULT_LEASE_S",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "MAX_PAGE_TOKEN_CHARS",
    "MIGRATIONS",
    "RESUMED_MESSAGE",
    "SCHEMA_VERSION",
    "Connection",
    "Cursor",
    "Database",
    "DatabaseUnavailable",
    "JobStore",
    "RequestIdReused",
    "RoundOutcome",
    "SqliteDatabase",
    "default_owner",
    "normalize_page_size",
    "open_job_store",
    "request_hash",
]
