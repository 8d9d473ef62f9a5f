"""Admission of online requests at the gateway: how many may wait, decided from the workers'
heartbeats, so that a request that cannot be served in time is refused at once.

A request waits behind the queue; the live workers answer `rps` requests a second between them
(each measures its own rate while busy and records it with its heartbeat). A request that
finds more than `rps × deadline / 2` requests ahead would not leave its batch's forward the
other half of its deadline, so the queue's bound is the smaller of that and
`BEMQ_ONLINE_MAX_QUEUE`. Before the first measurement only the fixed bound
holds.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


class WorkersGone(RuntimeError):
    """Every worker serving online requests stopped while a request waited."""


@dataclasses.dataclass(frozen=True)
class Capacity:
    alive: bool  # some worker serving online requests has a recent heartbeat
    rps: float | None  # their measured rates together; None before any is measured

    @classmethod
    def of(cls, workers: Iterable[dict[str, Any]]) -> Capacity:
        """From `Store.live_workers` rows."""
        online = [w for w in workers if "online" in w["queues"]]
        rates = [w["online_rps"] for w in online if w.get("online_rps")]
        return cls(alive=bool(online), rps=sum(rates) if rates else None)


def queue_bound(capacity: Capacity, max_queue: int, deadline: float) -> tuple[int, str]:
    """How many requests may wait, and which bound that is: "deadline" (the measured rate
    would serve no more before the deadline) or "queue_full" (`max_queue`)."""
    if capacity.rps:
        # Half the deadline to wait in the queue, half for its own batch's forward (a worker
        # sizes its batches to half a deadline's work, `workers.online`).
        by_deadline = max(1, int(capacity.rps * deadline / 2))
        if by_deadline < max_queue:
            return by_deadline, "deadline"
    return max_queue, "queue_full"


async def answer_unless_gone(call: Awaitable[T], capacity: Callable[[], Awaitable[Capacity]],
                             every: float = 1.0) -> T:
    """Await `call`, checking every `every` seconds that a worker is still alive to answer it;
    `WorkersGone` (and `call` cancelled, which withdraws a queued request) when none is."""
    task = asyncio.ensure_future(call)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=every)
            if done:
                return task.result()
            if not (await capacity()).alive:
                raise WorkersGone
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
