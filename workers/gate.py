"""One model forward at a time per process, online first.

Online requests wait at most one forward: when both kinds wait, an online forward goes next,
but after `burst` online forwards in a row a waiting batch-job forward gets its turn, so a large
job keeps moving under any online load. While online requests flow, the runtime also caps
batch-job forwards (`online_recently`), so that one forward is short.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator


class ForwardGate:
    def __init__(self, burst: int = 4) -> None:
        self.burst = burst
        self._cond = threading.Condition()
        self._busy = False
        self._waiting = {True: 0, False: 0}  # online? → waiters
        self._streak = 0  # online forwards since the last batch forward
        self._last_online = float("-inf")

    def online_recently(self, within: float = 1.0) -> bool:
        """An online forward ran or waited in the last `within` seconds."""
        return time.monotonic() - self._last_online < within or self._waiting[True] > 0

    @contextlib.contextmanager
    def hold(self, online: bool) -> Iterator[None]:
        with self._cond:
            self._waiting[online] += 1
            while not self._may_enter(online):
                self._cond.wait()
            self._waiting[online] -= 1
            self._busy = True
            if online:
                self._last_online = time.monotonic()
            self._streak = self._streak + 1 if online else 0
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _may_enter(self, online: bool) -> bool:
        if self._busy:
            return False
        if online:
            return self._waiting[False] == 0 or self._streak < self.burst
        return self._waiting[True] == 0 or self._streak >= self.burst
