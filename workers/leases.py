"""One thread per worker that renews the lease of every micro-batch the worker holds, so that a
slow micro-batch, or one waiting in the worker's pipeline, is never taken as lost."""

from __future__ import annotations

import logging
import threading

from ops.store import Store
from schemas.microbatch import MicroBatch

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, store: Store, worker: str, lease_seconds: float) -> None:
        self.store = store
        self.worker = worker
        self.lease_seconds = lease_seconds
        self._held: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, mb: MicroBatch) -> None:
        with self._lock:
            self._held.add((mb.job_id, mb.seq))
            if self._thread is None:
                self._thread = threading.Thread(target=self._renew, name="bemq-lease",
                                                daemon=True)
                self._thread.start()

    def drop(self, mb: MicroBatch) -> None:
        with self._lock:
            self._held.discard((mb.job_id, mb.seq))

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            with self._lock:
                held = sorted(self._held)
            for job_id, seq in held:
                try:
                    self.store.renew_lease(job_id, seq, self.worker, self.lease_seconds)
                except Exception as exc:  # a missed renewal only risks a duplicate run
                    log.warning("lease renewal failed for %s/%s: %r", job_id, seq, exc)
