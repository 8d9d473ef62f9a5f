"""SQLite back-end for the embedded default: one file, WAL mode, shared by every local process."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ops.store.base import Store
from ops.store.core import TransientStoreError


class SqliteStore(Store):
    label = "SQLite"

    def __init__(self, url: str, *, retry_seconds: float = 30.0) -> None:
        path = urlparse(url).path
        if not path or path == "/":
            raise ValueError(f"sqlite URL needs a file path: {url!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Writers wait for each other rather than failing: the busy timeout is the retry bound.
        self.busy_timeout = max(retry_seconds, 5.0)
        self.retry_seconds = retry_seconds
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def tx(self) -> Iterator[Any]:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:  # locked past the busy timeout
            raise TransientStoreError(str(exc)) from exc
        try:
            yield conn.cursor()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _has_schema_table(self, cur: Any) -> bool:
        return cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                           "AND name = 'schema_version'").fetchone() is not None

    def _lock_schema(self, cur: Any) -> None:
        """Nothing to add: `tx` begins IMMEDIATE, which holds the database's write lock."""

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
