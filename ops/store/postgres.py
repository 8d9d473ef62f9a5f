"""PostgreSQL back-end for production: psycopg 3 with a connection pool.

A database restart pauses workers and producers instead of failing them: every store call is
retried with backoff up to `retry_seconds` (see `ops.store.core.retried`); past the bound a
`StoreUnavailable` carries the last error.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from ops.store.base import Store
from ops.store.core import TransientStoreError

log = logging.getLogger(__name__)

# Advisory lock key that serialises migrations across hosts (any constant no one else uses).
SCHEMA_LOCK = 0x62656D71  # "bemq"
# A pooled connection used this recently goes out again unchecked (see `PostgresStore._check`).
FRESH_SECONDS = 1.0
# A session left idle inside a transaction this long is ended by the server. bemq's own
# transactions run statement after statement, so only a client gone mid-transaction (a host
# cut off, a process frozen) ever idles there; meanwhile its row locks, the dispatch lock among
# them, would stop every worker's claims until TCP gave up on it (hours).
IDLE_IN_TRANSACTION_MS = 30_000
# Unacknowledged data this long fails the connection (instead of TCP's own retransmissions for
# up to about 15 minutes), on both ends: the client's, so that a worker cut off retries on a
# fresh connection; the server's, so that a session still sending a result to a host that has
# gone quiet (not idle, so the limit above does not end it) dies and lets go of its locks.
TCP_USER_TIMEOUT_MS = 10_000


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
    label = "PostgreSQL"

    def __init__(self, url: str, *, pool_size: int = 8, retry_seconds: float = 30.0) -> None:
        self.url = url
        self.retry_seconds = retry_seconds
        self.pool = ConnectionPool(
            url, min_size=1, max_size=pool_size, open=False,
            timeout=min(5.0, max(retry_seconds, 0.5)),
            kwargs={"connect_timeout": 5, "tcp_user_timeout": TCP_USER_TIMEOUT_MS},
            check=self._check, configure=_configure,
        )
        self._used: weakref.WeakKeyDictionary[psycopg.Connection, float] = \
            weakref.WeakKeyDictionary()
        self.pool.open(wait=False)

    def _check(self, conn: psycopg.Connection) -> None:
        """Check a connection as it leaves the pool only when it sat idle: a restarted server
        leaves every idle connection broken, but a check of one used a moment ago would cost a
        round trip on every call (a worker makes several per micro-batch) to learn nothing.
        A connection broken within that moment fails its first statement, and `retried`
        methods run again on a fresh one."""
        if time.monotonic() - self._used.get(conn, float("-inf")) > FRESH_SECONDS:
            ConnectionPool.check_connection(conn)

    @contextlib.contextmanager
    def tx(self) -> Iterator[Any]:
        """A transaction on a pooled connection. Connection-level failures (server down or
        restarted, connection dropped) become `TransientStoreError`, which `retried` methods
        re-run; errors in the SQL itself propagate unchanged."""
        try:
            with self.pool.connection() as conn:
                with conn.transaction():
                    yield _Cursor(conn.cursor())
                self._used[conn] = time.monotonic()  # only a connection that just worked
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise TransientStoreError(str(exc).strip().splitlines()[0]) from exc

    def _has_schema_table(self, cur: Any) -> bool:
        """Read from pg_class with this statement's snapshot: `to_regclass` looks in the
        catalog cache, which may not yet know a table another migrating host just created."""
        row = cur.execute("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c "
                          "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                          "WHERE c.relname = 'schema_version' AND c.relkind = 'r' "
                          "AND n.nspname = current_schema())").fetchone()
        return bool(row and row[0])

    def _lock_schema(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))

    def reclaim(self, tables: Sequence[str]) -> None:
        """A plain VACUUM (ANALYZE) of each table: it blocks neither reads nor writes, and it
        keeps the store from growing where autovacuum is off or lags behind a retention run.
        Each ANALYZE replaces the tables' rows in `pg_statistic` (a wide text column's
        histogram is TOASTed), so that catalog is vacuumed too: left alone it grew 0.5 MB in
        three minutes of a soak. VACUUM cannot run inside a transaction, hence the autocommit
        connection; a table it may not vacuum is skipped with a notice, logged here."""
        try:
            with self.pool.connection() as conn:
                conn.autocommit = True
                conn.add_notice_handler(_log_notice)
                try:
                    for table in tables:
                        conn.execute(f"VACUUM (ANALYZE) {table}")
                    conn.execute("VACUUM pg_catalog.pg_statistic")
                finally:
                    conn.remove_notice_handler(_log_notice)
                    conn.autocommit = False
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise TransientStoreError(str(exc).strip().splitlines()[0]) from exc

    def close(self) -> None:
        self.pool.close()


def _configure(conn: psycopg.Connection) -> None:
    """Settings of every pooled session, set as it opens (a SET, not a startup option, so that
    it also passes PgBouncer; behind one in transaction mode, set it on the role instead).

    Custom plans always: psycopg prepares a statement run five times, and PostgreSQL then
    switches it to a generic plan, which cannot see that few micro-batches are queued (the
    partial index on them) or which job a claim is for. In a profile of the dispatch claim its
    statements took about ten times as long on generic plans (2-3 ms, against 0.2-0.3 ms on
    custom ones); planning each time costs far less."""
    conn.execute(f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}")
    conn.execute(f"SET tcp_user_timeout = {TCP_USER_TIMEOUT_MS}")
    conn.execute("SET plan_cache_mode = force_custom_plan")
    # lz4 for the micro-batches' texts and token ids, where the server has it (built with lz4,
    # PostgreSQL 14 or newer; elsewhere this sets nothing): pglz, the default, spent about half
    # of a 50,000-line submit's store time compressing them (0.50-0.65 s against 0.22-0.36 s),
    # and a claim reads them back under the dispatch lock.
    conn.execute("SELECT set_config('default_toast_compression', 'lz4', false) FROM pg_settings "
                 "WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)")
    conn.commit()


def _log_notice(notice: psycopg.errors.Diagnostic) -> None:
    if notice.severity_nonlocalized in ("WARNING", "ERROR"):
        log.warning("store: %s", notice.message_primary)
