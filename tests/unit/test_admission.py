"""Online admission's arithmetic: the live workers' measured rates make the queue's bound, a
worker's rate is what it answers while busy, and a wait ends as soon as no worker is left."""

from __future__ import annotations

import asyncio

import pytest

from ops.admission import Capacity, WorkersGone, answer_unless_gone, queue_bound
from workers.service_rate import ServiceRate


def worker(queues: str, rps: float | None) -> dict[str, object]:
    return {"name": "w", "queues": queues, "online_rps": rps}


def test_capacity_sums_the_live_online_workers_rates() -> None:
    cap = Capacity.of([worker("gpu,online", 40.0), worker("online", 60.0), worker("gpu", 99.0),
                       worker("online", None)])
    assert cap == Capacity(alive=True, rps=100.0)
    assert Capacity.of([worker("gpu", 5.0)]) == Capacity(alive=False, rps=None)
    assert Capacity.of([worker("online", None)]) == Capacity(alive=True, rps=None)


def test_the_bound_is_the_deadline_or_the_fixed_cap_whichever_is_smaller() -> None:
    assert queue_bound(Capacity(True, 50.0), 1000, 2.0) == (50, "deadline")  # half a deadline
    assert queue_bound(Capacity(True, 5000.0), 1000, 2.0) == (1000, "queue_full")
    assert queue_bound(Capacity(True, None), 1000, 2.0) == (1000, "queue_full")  # unmeasured
    assert queue_bound(Capacity(True, 0.1), 1000, 2.0) == (1, "deadline")  # never zero


def test_a_service_rate_counts_busy_time_only_and_follows_the_load() -> None:
    rate = ServiceRate(decay=0.5)
    assert rate.per_second is None
    rate.add(10, 0.1)  # 100/s
    assert rate.per_second == pytest.approx(100.0)
    for _ in range(20):
        rate.add(1, 0.1)  # 10/s: the old batches fade
    assert rate.per_second == pytest.approx(10.0, rel=0.01)


def test_a_wait_ends_when_no_worker_is_left() -> None:
    cancelled = asyncio.Event()

    async def never() -> bytes:
        try:
            await asyncio.sleep(60)
        finally:
            cancelled.set()
        return b""

    async def gone() -> Capacity:
        return Capacity(alive=False, rps=None)

    async def alive() -> Capacity:
        return Capacity(alive=True, rps=None)

    async def scenario() -> None:
        with pytest.raises(WorkersGone):
            await answer_unless_gone(never(), gone, every=0.01)
        assert cancelled.is_set()  # the call was cancelled: a queued request is withdrawn

        async def quick() -> bytes:
            await asyncio.sleep(0.05)
            return b"answer"

        assert await answer_unless_gone(quick(), alive, every=0.01) == b"answer"

    asyncio.run(asyncio.wait_for(scenario(), 10))
