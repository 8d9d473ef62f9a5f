"""Consistent snapshots of the store and their restore, per back-end.

PostgreSQL: every table is read inside one REPEATABLE READ, read-only transaction with
`COPY (SELECT ... ORDER BY every column) TO STDOUT`, so all tables come from one instant and a
table's bytes (hence its sha256) depend only on its rows. Restore is `COPY ... FROM STDIN` for
every table in one transaction. SQLite: the online backup API copies the whole file at one
instant; table digests hash the rows in the same order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from urllib.parse import urlparse

import psycopg

from ops.backup.manifest import TableEntry
from ops.store import open_store

# Parents before children (foreign keys). Live state is not backed up: worker heartbeats, the
# embedded deployment's token buckets and in-flight online requests, and dispatch state (the
# window of dispatch messages, tenants' virtual times: a restored store starts them afresh).
TABLES = ("jobs", "micro_batches", "files", "adapters", "canaries", "canary_decisions",
          "canary_samples", "features", "drift_baselines", "drift_reports", "api_keys",
          "tenants")
SQLITE_OBJECT = "store.sqlite3"

Put = Callable[[str, Iterable[bytes]], tuple[str, int]]


class RestoreRefused(RuntimeError):
    """The target is not empty or not the backup's kind; nothing was changed."""


def kind_of(url: str) -> str:
    return "sqlite" if urlparse(url).scheme == "sqlite" else "postgresql"


def table_object(table: str) -> str:
    return f"tables/{table}.copy"


# -- PostgreSQL ----------------------------------------------------------------------------
def _pg_columns(cur: psycopg.Cursor, table: str) -> list[str]:
    rows = cur.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = %s ORDER BY ordinal_position", (table,)).fetchall()
    return [r[0] for r in rows]


def _pg_copy_out(cur: psycopg.Cursor, table: str, columns: list[str]) -> Iterator[bytes]:
    cols = ", ".join(columns)
    order = ", ".join(str(i + 1) for i in range(len(columns)))
    with cur.copy(f"COPY (SELECT {cols} FROM {table} ORDER BY {order}) TO STDOUT") as copy:
        for block in copy:
            yield bytes(block)


def pg_dump(url: str, put: Put) -> dict[str, TableEntry]:
    tables = {}
    with psycopg.connect(url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction(), conn.cursor() as cur:
            for table in TABLES:
                columns = _pg_columns(cur, table)
                rows = 0

                def counted(chunks: Iterable[bytes]) -> Iterator[bytes]:
                    nonlocal rows
                    for chunk in chunks:
                        rows += chunk.count(b"\n")
                        yield chunk

                digest, _ = put(table_object(table), counted(_pg_copy_out(cur, table, columns)))
                tables[table] = TableEntry(rows=rows, sha256=digest, columns=columns)
    return tables


def pg_digests(url: str) -> dict[str, TableEntry]:
    """The same digests as `pg_dump`, of a live database (to compare after a restore)."""

    def digest_only(_: str, chunks: Iterable[bytes]) -> tuple[str, int]:
        h, size = hashlib.sha256(), 0
        for chunk in chunks:
            h.update(chunk)
            size += len(chunk)
        return h.hexdigest(), size

    return pg_dump(url, digest_only)


def pg_restore(url: str, objects: Mapping[str, bytes], tables: Mapping[str, TableEntry],
               version: int, *, upgrade: bool) -> dict[str, int]:
    """Create the backup's schema `version` in the empty database at `url`, load every table in
    one transaction, then (`upgrade`) migrate to this bemq's version."""
    _migrate(url, version)
    with psycopg.connect(url) as conn:
        with conn.cursor() as cur:
            for table in TABLES:
                found = cur.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
                if found and found[0]:
                    raise RestoreRefused(f"target is not empty: {table} has {found[0]} rows; "
                                         "restore into an empty database")
        with conn.transaction(), conn.cursor() as cur:
            for table in TABLES:
                entry = tables.get(table)
                if entry is None:  # a table newer than the backup: stays empty
                    continue
                with cur.copy(f"COPY {table} ({', '.join(entry.columns)}) FROM STDIN") as copy:
                    copy.write(objects[table_object(table)])
    if upgrade:
        _migrate(url, None)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        return {t: cur.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                for t in TABLES}


@contextlib.contextmanager
def pg_scratch(url: str, name: str) -> Iterator[str]:
    """A new empty database beside the store's (same server and credentials), dropped after."""
    parts = urlparse(url)
    scratch = parts._replace(path=f"/{name}").geturl()
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield scratch
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _migrate(url: str, target: int | None) -> None:
    store = open_store(url, retry_seconds=5)
    try:
        store.migrate(target)
    finally:
        store.close()


# -- SQLite --------------------------------------------------------------------------------
def _sqlite_path(url: str) -> Path:
    return Path(urlparse(url).path).resolve()


def sqlite_digests(path: Path) -> dict[str, TableEntry]:
    out = {}
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        for table in TABLES:
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            if not columns:  # the file predates this table
                continue
            h, rows = hashlib.sha256(), 0
            order = ", ".join(str(i + 1) for i in range(len(columns)))
            for row in conn.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}"):
                h.update(json.dumps(row).encode() + b"\n")
                rows += 1
            out[table] = TableEntry(rows=rows, sha256=h.hexdigest(), columns=columns)
    finally:
        conn.close()
    return out


def sqlite_dump(url: str, put: Put) -> dict[str, TableEntry]:
    path = _sqlite_path(url)
    if not path.exists():
        raise FileNotFoundError(f"no store at {path}")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / SQLITE_OBJECT
        src = sqlite3.connect(path)
        dst = sqlite3.connect(copy)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        tables = sqlite_digests(copy)
        put(SQLITE_OBJECT, [copy.read_bytes()])
    return tables


def sqlite_restore(url: str, objects: Mapping[str, bytes], tables: Mapping[str, TableEntry],
                   version: int, *, upgrade: bool) -> dict[str, int]:
    """Put the backup's file in place (it holds schema `version`), then (`upgrade`) migrate to
    this bemq's version."""
    path = _sqlite_path(url)
    if path.exists():
        try:
            found = sqlite_digests(path)
        except sqlite3.DatabaseError as exc:
            raise RestoreRefused(f"target {path} is not a SQLite store ({exc})") from None
        if any(e.rows for e in found.values()):
            raise RestoreRefused(f"target {path} is not empty; restore into a new file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".restore")
    with os.fdopen(fd, "wb") as f:
        f.write(objects[SQLITE_OBJECT])
    for leftover in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)
    os.replace(tmp, path)
    _migrate(url, None if upgrade else version)
    return {t: e.rows for t, e in sqlite_digests(path).items()}
