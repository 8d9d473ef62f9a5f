"""A GPU worker's pipeline: the device never waits for the host.

The micro-batch task only claims and decodes (the `runner.claim` stage) and hands the work to a
bounded queue; a forward thread (`bemq-forward`, the only batch-job user of the device) embeds
one micro-batch after another; a write thread (`bemq-write`) serialises shards and completes
each. While micro-batch k runs its forward, k+1 is claimed and decoded and k-1 is written.

Guarantees kept: one forward at a time (one forward thread; online forwards share the device
through the same `ForwardGate`); a micro-batch is completed at most once (`Store.complete` is
guarded); every claimed micro-batch holds its lease (renewed by `rt.leases`) until it is
completed or given back. A store or blob outage in a later stage gives the micro-batch back
(its lease released, its message sent again with a backoff); if the store itself is down, the
lease runs out and `jobs.reconcile` sends it again. Queues hold at most `depth` micro-batches,
so a worker never holds more leases than it can soon run.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable

from ops.blobs import BlobsUnavailable
from ops.store import ClaimOutcome, StoreUnavailable
from workers import runner
from workers.runtime import Runtime

log = logging.getLogger(__name__)

Resend = Callable[[str, int, float], None]  # (job_id, seq, countdown seconds)
_DONE = None  # the sentinel that ends a stage


class Pipeline:
    def __init__(self, rt: Runtime, resend: Resend, depth: int = 2) -> None:
        self.rt = rt
        self.resend = resend
        self.forwards: queue.Queue[runner.Work | None] = queue.Queue(maxsize=depth)
        self.writes: queue.Queue[runner.Work | None] = queue.Queue(maxsize=depth)
        self._threads = [
            threading.Thread(target=self._forward_loop, name="bemq-forward", daemon=True),
            threading.Thread(target=self._write_loop, name="bemq-write", daemon=True),
        ]
        self._stopped = False

    def start(self) -> Pipeline:
        for t in self._threads:
            t.start()
        return self

    def take(self, job_id: str, seq: int) -> str:
        """Claim and decode a delivered micro-batch and queue it for the forward (blocking while
        the queue is full); returns the claim's outcome. Store and blob errors propagate to
        the task, which retries as before."""
        if self._stopped:
            raise RuntimeError("the worker's pipeline is stopping")
        work = runner.claim(self.rt, job_id, seq)
        if isinstance(work, str):
            return work
        (self.writes if work.dead else self.forwards).put(work)
        return (ClaimOutcome.DEAD if work.dead else ClaimOutcome.RUN).value

    def stop(self, timeout: float) -> None:
        """Finish what was taken (a warm shutdown keeps its promise), then end both threads."""
        self._stopped = True
        self.forwards.put(_DONE)
        for t in self._threads:
            t.join(timeout)
        if any(t.is_alive() for t in self._threads):
            log.warning("pipeline did not drain in %.0f s; its leases will run out and "
                        "jobs.reconcile sends the micro-batches again", timeout)

    def _forward_loop(self) -> None:
        while (work := self.forwards.get()) is not _DONE:
            try:
                begun = runner.forward(self.rt, work)
            except Exception as exc:
                self._give_back(work, exc)
                continue
            if begun:
                self.writes.put(work)
            else:
                self.rt.leases.drop(work.mb)
        self.writes.put(_DONE)

    def _write_loop(self) -> None:
        while (work := self.writes.get()) is not _DONE:
            try:
                runner.write(self.rt, work)
            except Exception as exc:
                self._give_back(work, exc)
            else:
                self.rt.leases.drop(work.mb)

    def _give_back(self, work: runner.Work, exc: Exception) -> None:
        """A stage failed for a reason that is not the items' (a model error on an item is
        bisected and written as that item's error, inside the stage): release the lease so
        the re-sent message can claim at once, and send it again after a backoff."""
        mb = work.mb
        self.rt.leases.drop(mb)
        reason = f"{type(exc).__name__}: {exc}"
        countdown = float(min(60, 2 ** min(mb.deliveries, 6)))
        if not isinstance(exc, StoreUnavailable | BlobsUnavailable):
            log.exception("micro-batch %s/%s failed outside its items", mb.job_id, mb.seq,
                          exc_info=exc)
        log.warning("micro-batch %s/%s given back (%s); sent again in %.0f s",
                    mb.job_id, mb.seq, reason, countdown)
        with contextlib.suppress(StoreUnavailable):
            self.rt.store.release(mb.job_id, mb.seq, self.rt.name, reason)
        try:
            self.resend(mb.job_id, mb.seq, countdown)
        except Exception as send_exc:  # the broker is down too: jobs.reconcile re-sends
            log.warning("could not send %s/%s again (%r); jobs.reconcile will",
                        mb.job_id, mb.seq, send_exc)
