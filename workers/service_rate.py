"""How many online requests this worker answers per second while it is busy answering them:
the gateway's admission (`ops.admission`) divides the queue by the live workers' rates to tell
how long a new request would wait.

Requests and busy seconds are summed over batches with older batches weighing less (each new
batch scales the sums by `decay`), so the rate follows a changing load within a few dozen
batches and a single odd batch moves it little. Idle time does not count: the rate is what the
worker can do, not what it was asked to.
"""

from __future__ import annotations

import threading


class ServiceRate:
    def __init__(self, decay: float = 0.95) -> None:
        self.decay = decay
        self._requests = 0.0
        self._seconds = 0.0
        self._lock = threading.Lock()

    def add(self, requests: int, seconds: float) -> None:
        """One batch of `requests` answered in `seconds` (taken to answered)."""
        if seconds <= 0:
            return
        with self._lock:
            self._requests = self._requests * self.decay + requests
            self._seconds = self._seconds * self.decay + seconds

    @property
    def per_second(self) -> float | None:
        """Requests a second while busy; None before the first batch."""
        with self._lock:
            return self._requests / self._seconds if self._seconds else None
