"""What :class:`~glimpse3d.gateway.store.jobs.JobStore` needs from a database backend, and SQL helpers.

A backend (:mod:`.sqlite`, :mod:`.postgres`) supplies a :class:`Database`: transactions, row-locking
clauses and its errors. The store's SQL uses ``?`` placeholders and types both databases understand.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol, TypeVar

from glimpse3d.core.errors import Unavailable

T = TypeVar("T")


class DatabaseUnavailable(Unavailable):
    """The job database cannot be used right now: unreachable, stayed busy through every retry, its
    disk is full or read-only, or its storage fails. The caller may retry later (UNAVAILABLE)."""

    reason = "JOB_STORE_UNAVAILABLE"


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """One open transaction; rows are read by column name (``row["id"]``)."""

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor: ...


class Database(Protocol):
    """What a backend supplies to the job store."""

    name: str  # for logs and errors: a path, or a URL without its password
    exclusive: bool  # one process at a time: opening voids the leases left by earlier processes
    lock_clause: str  # appended to a SELECT that reads rows it will update
    claim_clause: str  # appended to a SELECT that claims rows other processes may be claiming

    def transaction(self, fn: Callable[[Connection], T], *, migrate: bool = False) -> T:
        """Run ``fn`` in one transaction and return its result (all or nothing); ``migrate`` also
        serializes it against other processes migrating the same database."""
        ...

    def close(self) -> None: ...


def now_us() -> int:
    """The store's clock: integer microseconds since the Unix epoch."""
    return time.time_ns() // 1000


def dump_json(value: Any) -> str:
    """Compact, key-sorted JSON, as the store writes it into TEXT columns."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def marks(values: Collection[Any]) -> str:
    """``?,?,...``: one placeholder per value, for ``IN (...)``."""
    return ",".join("?" * len(values))
