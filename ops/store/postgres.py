"""PostgreSQL back-end for production: psycopg 3 with a connection pool.

Getting a connection is retried with exponential backoff up to `retry_seconds`, so a database
restart pauses workers and producers instead of failing them; past the bound a
`StoreUnavailable` names the database and the last error.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from ops.store.base import Store, StoreUnavailable


class _Cursor:
    """psycopg cursor that takes the `?` placeholders the shared SQL is written with."""

    def __init__(self, cur: psycopg.Cursor) -> None:
        self._cur = cur

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        self._cur.execute(sql.replace("?", "%s"), params)
        return self

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cur.executemany(sql.replace("?", "%s"), rows)

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cur.fetchone()

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cur.fetchall()

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount


class PostgresStore(Store):
    dialect = "postgres"

    def __init__(self, url: str, *, pool_size: int = 8, retry_seconds: float = 30.0) -> None:
        self.url = url
        self.retry_seconds = retry_seconds
        self.pool = ConnectionPool(
            url, min_size=1, max_size=pool_size, open=False,
            timeout=min(5.0, max(retry_seconds, 0.5)),
            kwargs={"connect_timeout": 5}, check=ConnectionPool.check_connection,
        )
        self.pool.open(wait=False)

    @contextlib.contextmanager
    def tx(self) -> Iterator[Any]:
        with self._connection() as conn, conn.transaction():
            yield _Cursor(conn.cursor())

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.1
        while True:
            try:
                conn_cm = self.pool.connection()
                conn = conn_cm.__enter__()
            except (PoolTimeout, psycopg.OperationalError) as exc:
                if time.monotonic() + delay > deadline:
                    raise StoreUnavailable(
                        f"PostgreSQL unreachable for {self.retry_seconds:.0f}s: {exc}"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            break
        try:
            yield conn
        except BaseException as exc:
            conn_cm.__exit__(type(exc), exc, exc.__traceback__)
            raise
        conn_cm.__exit__(None, None, None)

    def close(self) -> None:
        self.pool.close()
