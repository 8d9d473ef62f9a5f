"""A GPU worker's pipeline: the device never waits for the host.

The dispatch task only claims and decodes (the `runner.claim` stage) and hands the work to a
bounded queue; a forward thread (`bemq-forward`, the only batch-job user of the device) embeds
one micro-batch after another; a write thread (`bemq-write`) serialises shards and completes
each. While micro-batch k runs its forward, k+1 is claimed and decoded and k-1 is written.

A claim is made only once the forward queue has room for it, and the forward thread takes what
it holds in dispatch order (`Claim.rank`), so the store's choice is made as late as it can be:
a job that arrives while this worker is busy runs after the forward now running and the one
already taken, not after everything the worker might have claimed ahead. A message may claim
`claim_size` micro-batches at once (fewer round trips under the store's dispatch lock); it
waits for that much room, so new work then waits behind up to the queue's depth.

Guarantees kept: one forward at a time (one forward thread; online forwards share the device
through the same `ForwardGate`); a micro-batch is completed at most once (`Store.complete` is
guarded); every claimed micro-batch holds its lease (renewed by `rt.leases`) until it is
completed or given back. A store or blob outage in a later stage gives the micro-batch back
(its lease released with a backoff, a dispatch message sent for when it ends); if the store
itself is down, the lease runs out and `jobs.reconcile` puts it back in the queue. The forward
queue holds at most `depth` micro-batches, so a worker never holds more leases than it can
soon run.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time

from ops.blobs import BlobsUnavailable
from ops.store import StoreUnavailable
from workers import runner
from workers.runtime import Runtime

log = logging.getLogger(__name__)

_DONE = None  # the sentinel that ends a stage
_LAST = (float("inf"), 0)  # the rank that puts the sentinel behind every micro-batch


class Room:
    """Places in the forward queue: taken (several at once, or none) before a claim, given back
    one by one as the forward takes what was claimed. Taking them all at once, not one by one,
    keeps two dispatch threads from each holding part of what both wait for."""

    def __init__(self, places: int) -> None:
        self._free = places
        self._cond = threading.Condition()

    def take(self, n: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._free >= n)
            self._free -= n

    def give(self, n: int = 1) -> None:
        if n:
            with self._cond:
                self._free += n
                self._cond.notify_all()


class Pipeline:
    def __init__(self, rt: Runtime, send: runner.Send, depth: int = 2,
                 claim_size: int = 1) -> None:
        if not 1 <= claim_size <= depth:
            raise ValueError(f"claim_size: must be from 1 to the depth ({depth}), "
                             f"got {claim_size}")
        self.rt = rt
        self.send = send
        self.claim_size = claim_size
        self._room = Room(depth)
        self._order = itertools.count()
        self.forwards: queue.PriorityQueue[tuple[tuple[float, int], int,
                                                 runner.Work | None]] = \
            queue.PriorityQueue(maxsize=depth + 1)
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

    def take(self, token: str) -> str:
        """Use a dispatch message: once the forward queue has room for `claim_size`
        micro-batches, claim those that go next and queue them; returns what the message did.
        Store errors propagate to the task, which sends the message again."""
        if self._stopped:
            raise RuntimeError("the worker's pipeline is stopping")
        k = self.claim_size
        self._room.take(k)
        try:
            got = runner.claim(self.rt, token, self.send, k)
        except BaseException:
            self._room.give(k)
            raise
        if isinstance(got, str):
            self._room.give(k)
            return got
        self._room.give(k - sum(not work.dead for work in got))
        for work in got:
            if work.dead:
                self.writes.put(work)
            else:
                self.forwards.put((work.rank, next(self._order), work))
        return ", ".join(work.outcome for work in got)

    def stop(self, timeout: float) -> None:
        """Finish what was taken (a warm shutdown keeps its promise), then end both threads."""
        self._stopped = True
        self.forwards.put((_LAST, next(self._order), _DONE))
        for t in self._threads:
            t.join(timeout)
        if any(t.is_alive() for t in self._threads):
            log.warning("pipeline did not drain in %.0f s; its leases will run out and "
                        "jobs.reconcile puts the micro-batches back in the queue", timeout)

    def _forward_loop(self) -> None:
        while (work := self._next_forward()) is not _DONE:
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

    def _next_forward(self) -> runner.Work | None:
        _, _, work = self.forwards.get()
        if work is not _DONE:
            self._room.give()
        return work

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
        bisected and written as that item's error, inside the stage): give the micro-batch
        back to the queue with a backoff, and send a dispatch message for when it ends."""
        mb = work.mb
        self.rt.leases.drop(mb)
        reason = f"{type(exc).__name__}: {exc}"
        backoff = float(min(60, 2 ** min(mb.deliveries, 6)))
        if not isinstance(exc, StoreUnavailable | BlobsUnavailable):
            log.exception("micro-batch %s/%s failed outside its items", mb.job_id, mb.seq,
                          exc_info=exc)
        log.warning("micro-batch %s/%s given back (%s); dispatched again in %.0f s",
                    mb.job_id, mb.seq, reason, backoff)
        try:
            due = time.time() + backoff
            self.rt.store.release(mb.job_id, mb.seq, self.rt.name, reason, not_before=due)
            self.send([self.rt.store.add_token(due)], backoff)
        except Exception as send_exc:  # store or broker down too: its lease runs out, and
            # jobs.reconcile puts it back in the queue and refills the window
            log.warning("could not give %s/%s back (%r); jobs.reconcile will",
                        mb.job_id, mb.seq, send_exc)
