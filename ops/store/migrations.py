"""Numbered schema migrations, the same SQL for SQLite and PostgreSQL.

`schemas/sql/migrations/NNNN_name.sql` is the step to version NNNN; version 3 is the baseline
(the schema stores had before steps existed, and which they record). Each step runs in one
transaction that also records its version, under a lock (PostgreSQL: an advisory lock;
SQLite: the write lock every transaction takes), and re-reads the version inside it: two hosts
migrating at once apply each step once. A process refuses a store whose version is not the one
it knows, naming both and the command to run.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from importlib import resources

from ops.store.core import Cursor

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class SchemaMismatch(RuntimeError):
    """The store's schema is not the version this bemq knows."""


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """Every step, in version order."""
    found = []
    for entry in resources.files("schemas").joinpath("sql/migrations").iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        sql = "\n".join(line for line in entry.read_text().splitlines()
                        if not line.lstrip().startswith("--"))
        statements = tuple(s.strip() for s in sql.split(";") if s.strip())
        found.append(Migration(int(match.group(1)), match.group(2), statements))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version: {versions}")
    return tuple(found)


def latest() -> int:
    """The schema version this bemq knows: the newest step's."""
    return migrations()[-1].version


def read_version(cur: Cursor, has_table: bool) -> int:
    """The store's applied version; 0 for an empty store."""
    if not has_table:
        return 0
    row = cur.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def apply(cur: Cursor, step: Migration) -> None:
    for statement in step.statements:
        cur.execute(statement)
    cur.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (step.version, time.time()))


def check(version: int) -> None:
    """Raise `SchemaMismatch` unless `version` is the one this bemq knows."""
    want = latest()
    if version == want:
        return
    if version > want:
        raise SchemaMismatch(f"the store's schema is version {version}, newer than this bemq "
                             f"knows ({want}): upgrade bemq on this host")
    have = "has no schema" if version == 0 else f"is at schema version {version}"
    raise SchemaMismatch(f"the store {have}; this bemq needs version {want}: run `bemq migrate`")
