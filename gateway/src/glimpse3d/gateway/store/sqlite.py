"""SQLite backend of the job store (the embedded default): one gateway process per file."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from glimpse3d.gateway.store.db import Connection

T = TypeVar("T")


class SqliteDatabase:
    """One SQLite file (``":memory:"`` for a throwaway one): one connection in WAL mode, used under
    a lock, ``BEGIN IMMEDIATE`` per transaction (writers never interleave)."""

    exclusive = True
    lock_clause = ""
    claim_clause = ""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.name = str(path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=5000"):
            self._conn.execute(f"PRAGMA {pragma}")

    def transaction(self, fn: Callable[[Connection], T], *, migrate: bool = False) -> T:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result

    def close(self) -> None:
        with self._lock:
            self._conn.close()
