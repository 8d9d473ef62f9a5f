"""The store, the single source of truth: jobs, micro-batches, files, adapters, worker
heartbeats, canaries and drift features.

`open_store(url)` picks the implementation from the URL: `sqlite:///PATH` (embedded default)
or `postgresql://...` (production, psycopg 3 with a connection pool).
"""

from __future__ import annotations

from urllib.parse import urlparse

from ops.store.base import Completion, Store
from ops.store.core import StoreUnavailable
from ops.store.dispatch import Claim, ClaimOutcome, Claims, TenantQueue, Window


def open_store(url: str, *, pool_size: int = 8, retry_seconds: float = 30.0) -> Store:
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        from ops.store.sqlite import SqliteStore

        return SqliteStore(url, retry_seconds=retry_seconds)
    if scheme in {"postgresql", "postgres"}:
        from ops.store.postgres import PostgresStore

        return PostgresStore(url, pool_size=pool_size, retry_seconds=retry_seconds)
    raise ValueError(f"unsupported store URL {url!r}: expected sqlite:/// or postgresql://")


__all__ = ["Claim", "ClaimOutcome", "Claims", "Completion", "Store", "StoreUnavailable",
           "TenantQueue", "Window", "open_store"]
