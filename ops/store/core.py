"""What every part of the store shares: the transaction contract, the cursor it yields, and the
retry policy for connection failures."""

from __future__ import annotations

import abc
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreUnavailable(RuntimeError):
    """The store could not be reached within the configured retry bound."""


class TransientStoreError(RuntimeError):
    """A connection-level failure (server restart, dropped connection): worth a retry."""


class Cursor(Protocol):
    """The slice of a DB-API cursor the store uses, with `?` placeholders on both back-ends
    (sqlite3's own cursor; a thin psycopg wrapper)."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def fetchone(self) -> tuple[Any, ...] | None: ...

    def fetchall(self) -> list[tuple[Any, ...]]: ...

    @property
    def rowcount(self) -> int: ...


class Transactional(abc.ABC):
    label: str
    retry_seconds: float = 30.0

    @abc.abstractmethod
    def tx(self) -> contextlib.AbstractContextManager[Cursor]:
        """A transaction; commits on normal exit, rolls back on an exception."""

    @abc.abstractmethod
    def close(self) -> None: ...


def retried(method: Callable[..., T]) -> Callable[..., T]:
    """Re-run a store method on transient failures with exponential backoff, up to the store's
    `retry_seconds`. Safe because every method is written to be re-runnable: updates are
    guarded by the state they expect and inserts ignore a row that is already there."""

    @functools.wraps(method)
    def wrapper(self: Transactional, *args: Any, **kwargs: Any) -> T:
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.1
        while True:
            try:
                return method(self, *args, **kwargs)
            except (TransientStoreError, StoreUnavailable) as exc:
                if time.monotonic() + delay > deadline:
                    raise StoreUnavailable(
                        f"{self.label} unreachable for {self.retry_seconds:.0f}s: {exc}"
                    ) from exc
                log.warning("store call %s failed (%s); retrying in %.1fs",
                            method.__name__, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    return wrapper


def storable(identifier: str) -> bool:
    """Whether a caller's id could name a row: PostgreSQL text holds no NUL character, so an
    id with one names nothing (a lookup answers "not found", not a server error)."""
    return "\x00" not in identifier
