"""SQLite backend of the job store (the embedded default): one gateway process per file."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from glimpse3d.core.errors import IntegrityError
from glimpse3d.gateway.store.db import Connection, DatabaseUnavailable

T = TypeVar("T")

# SQLite's primary result codes (sqlite3.h) that mean the database file or its storage cannot be used
# right now (not that the SQL is wrong): busy/locked past busy_timeout, read-only file or file system,
# I/O error, disk full, cannot open, out of memory, lock protocol failure, permission denied.
_UNAVAILABLE_CODES = {
    5: "busy",
    6: "locked",
    8: "read-only",
    10: "I/O error",
    13: "disk full",
    14: "cannot open",
    7: "out of memory",
    15: "lock protocol error",
    3: "access denied",
    23: "access denied",
}
_CORRUPT_CODES = {11: "corrupt", 26: "not a database"}


def translate(err: sqlite3.Error, database: str) -> Exception:
    """The domain error for a failed SQLite call: DatabaseUnavailable for storage faults (retryable),
    IntegrityError (DATA_LOSS) for a corrupt file, ``err`` itself for the rest (a bug: wrong SQL,
    a violated constraint)."""
    code = getattr(err, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in _UNAVAILABLE_CODES or (primary is None and isinstance(err, sqlite3.OperationalError)):
        what = _UNAVAILABLE_CODES.get(primary or 0, "unavailable")
        return DatabaseUnavailable(
            f"job database is unavailable ({what}): {err}", metadata={"store": "jobs", "condition": what}
        )
    if primary in _CORRUPT_CODES:
        return IntegrityError(f"job database is {_CORRUPT_CODES[primary]}: {err}", metadata={"store": "jobs"})
    return err


class SqliteDatabase:
    """One SQLite file (``":memory:"`` for a throwaway one): one connection in WAL mode, used under
    a lock, ``BEGIN IMMEDIATE`` per transaction (writers never interleave)."""

    exclusive = True
    lock_clause = ""
    claim_clause = ""

    def __init__(self, path: Path | str) -> None:
        self.name = str(path)
        self._lock = threading.Lock()
        try:
            if str(path) != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=5000"):
                self._conn.execute(f"PRAGMA {pragma}")
        except OSError as err:
            raise DatabaseUnavailable(
                f"job database {self.name} cannot be opened: {err.strerror or err}", metadata={"store": "jobs"}
            ) from err
        except sqlite3.Error as err:
            raise translate(err, self.name) from err

    def transaction(self, fn: Callable[[Connection], T], *, migrate: bool = False) -> T:
        """Run ``fn`` in one transaction; storage faults (disk full, read-only, I/O error, busy) become
        :class:`DatabaseUnavailable`, and the transaction is rolled back whatever happened."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(self._conn)
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
                try:
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as err:
                translated = translate(err, self.name)
                if translated is err:
                    raise
                raise translated from err
            return result

    def close(self) -> None:
        with self._lock:
            self._conn.close()
