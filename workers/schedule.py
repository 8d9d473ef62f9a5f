"""The worker's own schedule: beat entries run by a thread inside a GPU worker, for a deployment
with no celery beat and no ops worker (the embedded default), so that lost work still comes
back and canaries, drift checks and backups still happen.

One worker per host runs them: the thread that holds an exclusive lock on a file under
BEMQ_HOME. The kernel drops the lock when its holder dies, however it dies, and the next worker
to try takes over. Tasks run in this process, one at a time, through the same task functions
and intervals as beat's (`celeryconfig.build(...)["beat_schedule"]`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# How often a worker without the lock tries for it: the longest a dead holder's duties wait.
LOCK_RETRY_SECONDS = 1.0


class WorkerSchedule:
    """Runs `entries` (name → (function, interval seconds)) while holding `lock_path`."""

    def __init__(self, entries: dict[str, tuple[Callable[[], Any], float]],
                 lock_path: Path) -> None:
        self.entries = entries
        self.lock_path = lock_path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bemq-schedule", daemon=True)

    def start(self) -> WorkerSchedule:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the thread to stop and wait for the task it is running, if any."""
        self._stop.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        with _host_lock(self.lock_path, self._stop) as held:
            if not held:
                return
            log.info("running the worker schedule: %s", ", ".join(self.entries))
            now = time.monotonic()
            due = {name: now + interval for name, (_, interval) in self.entries.items()}
            while not self._stop.is_set():
                name = min(due, key=due.__getitem__)
                if self._stop.wait(max(0.0, due[name] - time.monotonic())):
                    return
                fn, interval = self.entries[name]
                try:
                    fn()
                except Exception:  # a failed run is logged and retried at its next interval
                    log.exception("scheduled %s failed", name)
                due[name] = time.monotonic() + interval


@contextlib.contextmanager
def _host_lock(path: Path, stop: threading.Event) -> Iterator[bool]:
    """Wait for the exclusive lock on `path`; yields True once held, False if stopped first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if stop.wait(LOCK_RETRY_SECONDS):
                    yield False
                    return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
