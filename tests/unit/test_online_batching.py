"""Dynamic batching rules and the online-first forward gate (logic only; the live path is in
tests/integration/test_http.py)."""

from __future__ import annotations

import collections
import threading
import time

import pytest

from ops.online import OnlineQueue, OnlineRequest
from workers.gate import ForwardGate

pytestmark = pytest.mark.timeout(60)


class MemoryQueue(OnlineQueue):
    def __init__(self) -> None:
        self.items: collections.deque[OnlineRequest] = collections.deque()

    def push(self, request: OnlineRequest, max_waiting: int = 1000) -> bool:
        if len(self.items) >= max_waiting:
            return False
        self.items.append(request)
        return True

    def put_results(self, answered: object) -> None:
        raise NotImplementedError

    def _take(self, timeout: float) -> OnlineRequest | None:
        deadline = time.monotonic() + timeout
        while not self.items and time.monotonic() < deadline:
            time.sleep(0.001)
        return self.items.popleft() if self.items else None

    def _give_back(self, request: OnlineRequest) -> None:
        self.items.appendleft(request)


def req(n: int, length: int = 10, age: float = 0.0) -> OnlineRequest:
    return OnlineRequest(id=str(n), tenant="t", model="minilm", texts=["x"], adapter=None,
                         lengths=[length], enqueued_at=time.time() - age)


def test_queued_requests_join_even_when_the_oldest_is_overdue() -> None:
    q = MemoryQueue()
    for n in range(10):
        q.push(req(n, age=1.0))
    batch = q.pop_batch(max_tokens=10_000, max_rows=64, max_delay=0.005, block=0.1,
                        stale_after=30)
    assert [r.id for r in batch] == [str(n) for n in range(10)]


def test_batch_closes_at_token_budget_and_row_cap_keeping_order() -> None:
    q = MemoryQueue()
    for n in range(6):
        q.push(req(n, length=100))
    first = q.pop_batch(max_tokens=350, max_rows=64, max_delay=0.005, block=0.1, stale_after=30)
    assert [r.id for r in first] == ["0", "1", "2"]
    second = q.pop_batch(max_tokens=10_000, max_rows=2, max_delay=0.005, block=0.1,
                         stale_after=30)
    assert [r.id for r in second] == ["3", "4"]


def test_waits_for_more_only_up_to_the_delay() -> None:
    q = MemoryQueue()
    q.push(req(0))
    threading.Timer(0.02, lambda: q.push(req(1))).start()
    assert [r.id for r in q.pop_batch(max_tokens=10_000, max_rows=64, max_delay=0.5,
                                      block=0.1, stale_after=30)] == ["0", "1"]
    q.push(req(2))
    threading.Timer(0.6, lambda: q.push(req(3))).start()
    started = time.monotonic()
    assert [r.id for r in q.pop_batch(max_tokens=10_000, max_rows=64, max_delay=0.02,
                                      block=0.1, stale_after=30)] == ["2"]
    assert time.monotonic() - started < 0.5


def test_stale_requests_are_dropped() -> None:
    q = MemoryQueue()
    q.push(req(0, age=60))
    q.push(req(1))
    batch = q.pop_batch(max_tokens=10_000, max_rows=64, max_delay=0.0, block=0.1,
                        stale_after=30)
    assert [r.id for r in batch] == ["1"]


def test_gate_serves_online_first_but_never_starves_batch() -> None:
    gate = ForwardGate(burst=2)
    order: list[str] = []
    release = threading.Event()

    def forward(kind: str) -> None:
        with gate.hold(kind == "online"):
            order.append(kind)
            if kind == "first":
                release.wait(5)

    def queued(online: int, batch: int) -> None:
        deadline = time.monotonic() + 5
        while gate._waiting != {True: online, False: batch}:
            assert time.monotonic() < deadline, gate._waiting
            time.sleep(0.001)

    threads = [threading.Thread(target=forward, args=("first",))]
    threads[0].start()
    while not order:  # "first" (a batch forward) holds the gate; others queue behind it
        time.sleep(0.001)
    for n, kind in enumerate(["batch", "online", "online", "online", "online"]):
        t = threading.Thread(target=forward, args=(kind,))
        t.start()
        threads.append(t)
        queued(online=n, batch=1)
    release.set()
    for t in threads:
        t.join(5)
    assert order[0] == "first"
    assert order[1:4] == ["online", "online", "batch"]  # two online, then the waiting batch
    assert order[4:] == ["online", "online"]
    assert gate.online_recently()
