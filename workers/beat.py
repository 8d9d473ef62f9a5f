"""The beat scheduler on Redis: RedBeat's one leader across hosts, kept through a broker failover
or a partition.

RedBeat holds a lock in Redis: one beat leads and extends it at every tick, the others wait to
take it. As shipped, a leader whose Redis connection breaks (a Sentinel failover, a cut link)
dies at the next extension, since that call is not retried, and one whose lock expired while it
was cut off dies of `LockNotOwnedError` when it comes back: either way that host runs no beat
again until it is restarted, and after the next loss no host does. Here a leader that cannot
reach Redis sends nothing and tries again a second later, and one that finds its lock gone goes
back to waiting for it. A beat sends only right after extending its lock, so two never lead at
once (RedBeat's guarantee: up to the lock's expiry)."""

from __future__ import annotations

import logging
import time
import types
from typing import Any

import redis
from redbeat.schedulers import RedBeatScheduler, acquire_distributed_beat_lock

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)


class LeaderScheduler(RedBeatScheduler):
    def tick(self, *args: Any, **kwargs: Any) -> float:
        if self.lock_key and self.lock is None:  # never led, or lost the lock
            self._wait_for_lock()
        try:
            return super().tick(*args, **kwargs)
        except UNREACHABLE as exc:
            log.warning("beat: Redis unreachable (%s); sending nothing, retrying in %.0fs",
                        exc, RETRY_SECONDS)
            return RETRY_SECONDS
        except redis.exceptions.LockError:
            log.warning("beat: lost the beat lock (it expired while Redis was out of reach, "
                        "and another beat may lead now); waiting to lead again")
            self.lock = None
            return 0.0

    def _wait_for_lock(self) -> None:
        """Block until this beat holds the lock, as at start (RedBeat's own acquisition)."""
        while True:
            try:
                acquire_distributed_beat_lock(sender=types.SimpleNamespace(scheduler=self))
                return
            except UNREACHABLE as exc:
                log.warning("beat: Redis unreachable while waiting for the lock (%s)", exc)
                time.sleep(RETRY_SECONDS)
