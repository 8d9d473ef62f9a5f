"""A value a gateway reads from the store at most once per `ttl` seconds, on its event loop.

The gateway answers thousands of requests a second; what they share (canary routes, whether an
online worker is alive) may be a second old, and is read in a worker thread so that the loop
never waits on the store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Cached(Generic[T]):
    def __init__(self, read: Callable[[], T], ttl: float = 1.0) -> None:
        self.read, self.ttl = read, ttl
        self._value: T | None = None
        self._until = 0.0

    async def get(self) -> T:
        if self._value is None or time.monotonic() >= self._until:
            value = await asyncio.to_thread(self.read)
            self._value, self._until = value, time.monotonic() + self.ttl
            return value
        return self._value
