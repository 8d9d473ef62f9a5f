"""How busy this worker keeps its device: seconds inside model forwards ÷ wall seconds.

A GPU worker that waits on Python shows it here first: a ratio well under 1 while work is
queued means the host path, not the device, sets the pace. Exported as the
`bem_worker_busy_ratio` gauge over the last `window` seconds (the same figure over any range is
`rate(bem_inference_latency_seconds_sum[...])`).
"""

from __future__ import annotations

import collections
import threading
import time


class BusyMeter:
    def __init__(self, window: float = 60.0, clock=time.perf_counter) -> None:  # type: ignore[no-untyped-def]
        self.window = window
        self._clock = clock
        self._born = clock()
        self._spans: collections.deque[tuple[float, float]] = collections.deque()
        self._lock = threading.Lock()

    def add(self, start: float, end: float) -> None:
        """Record one forward that ran from `start` to `end` (this meter's clock)."""
        with self._lock:
            self._spans.append((start, end))
            self._trim(end)

    def ratio(self) -> float:
        """Busy share of the last `window` seconds (of the meter's life, when younger)."""
        now = self._clock()
        with self._lock:
            self._trim(now)
            since = max(now - self.window, self._born)
            busy = sum(min(e, now) - max(s, since) for s, e in self._spans if e > since)
        return busy / (now - since) if now > since else 0.0

    def _trim(self, now: float) -> None:
        while self._spans and self._spans[0][1] <= now - self.window:
            self._spans.popleft()
