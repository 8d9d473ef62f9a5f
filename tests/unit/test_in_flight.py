"""The gateway's bound on embeddings calls in flight: a call past it is refused, and the bound
follows the answers' latency (grows while they stay near the unloaded time and the bound is in
use, shrinks in proportion when they queue with the bound reached), between its floor and its
ceiling, starting at the ceiling."""

from __future__ import annotations

import pytest

from producers.http.in_flight import TOLERANCE, WINDOW_CALLS, WINDOW_SECONDS, AdaptiveLimit


def window(limit: AdaptiveLimit, now: float, rtt: float, busy: int | None = None) -> float:
    """One window of answers taking `rtt` each (`busy` calls in flight at a time, as many as
    the limit lets by default; the last answer just past `WINDOW_SECONDS` after the first),
    judged at its last answer; the time after it."""
    busy = int(limit.limit) if busy is None else busy
    start, calls = now, WINDOW_CALLS * busy
    step = WINDOW_SECONDS * 0.99 / (calls - 1)  # every answer but the last inside the window
    for n in range(WINDOW_CALLS):
        for _ in range(busy):
            assert limit.acquire()
        for k in range(busy):
            last = n == WINDOW_CALLS - 1 and k == busy - 1
            limit.release(start + WINDOW_SECONDS * 1.01 if last else now, rtt)
            now += step
    return start + WINDOW_SECONDS * 1.01 + step


def test_a_call_past_the_limit_is_refused_until_one_ends() -> None:
    limit = AdaptiveLimit(ceiling=3, floor=1, initial=3)
    assert [limit.acquire() for _ in range(4)] == [True, True, True, False]
    limit.release(0.0, None)  # an error: frees its place, says nothing of load
    assert limit.acquire() and not limit.acquire()
    assert limit.limit == 3


def test_fast_answers_grow_a_limit_in_use_and_only_one_in_use() -> None:
    limit = AdaptiveLimit(ceiling=100, initial=10)
    now = window(limit, 0.0, 0.01, busy=1)  # the unloaded time: 10 ms, one call at a time
    assert limit.limit == 10  # not in use: no reason to grow
    for _ in range(5):
        now = window(limit, now, 0.01 * TOLERANCE * 0.9, busy=8)
    assert limit.limit == 15  # one a window


def test_queueing_answers_shrink_it_in_proportion_down_to_the_floor() -> None:
    limit = AdaptiveLimit(ceiling=100, floor=4, initial=40)
    now = window(limit, 0.0, 0.01, busy=4)
    now = window(limit, now, 0.01 * TOLERANCE * 1.25)  # a quarter past the tolerance, limit full
    assert limit.limit == pytest.approx(40 / 1.25)
    for _ in range(10):
        now = window(limit, now, 10.0)  # far slower: halved each window at most
    assert limit.limit == 4


def test_it_starts_at_the_ceiling_and_callers_below_it_are_never_refused() -> None:
    """A pool of callers that wait for each answer queues no more calls than it has: however
    slow its answers, a limit it does not reach stays where it is (refusing some of them would
    only make them ask again); arrivals that fill the limit shrink it."""
    limit = AdaptiveLimit(ceiling=64)
    assert limit.limit == 64
    now = window(limit, 0.0, 0.01, busy=1)
    for _ in range(20):
        now = window(limit, now, 0.01 * TOLERANCE * 5, busy=32)  # 32 callers, 10× slower
    assert limit.limit == 64
    window(limit, now, 0.01 * TOLERANCE * 5)  # 64 in flight: reached
    assert limit.limit == 32


def test_calls_shed_further_in_count_as_overload_below_the_limit() -> None:
    """When the workers are the bottleneck, the online queue sheds the calls past it (429
    `deadline`): they leave at once and never fill the limit, yet arrivals exceed what is
    answered, so slow answers then shrink it."""
    limit = AdaptiveLimit(ceiling=64)
    now = window(limit, 0.0, 0.01, busy=1)
    now = window(limit, now, 0.01 * TOLERANCE * 2, busy=8)
    assert limit.limit == 64
    assert limit.acquire()
    limit.release(now, None, shed=True)
    window(limit, now, 0.01 * TOLERANCE * 2, busy=8)
    assert limit.limit == 32


def test_the_unloaded_time_is_forgotten_after_a_minute() -> None:
    """A deployment that became slower for good (a bigger model) is not held to the old time
    for ever: after two baseline periods its slower answers are the new unloaded time."""
    limit = AdaptiveLimit(ceiling=100, floor=4, initial=20)
    now = window(limit, 0.0, 0.01, busy=10)
    lowest = limit.limit
    while now < 70:  # a long stretch of answers 5× slower, the limit full, then 4 in flight
        now = window(limit, now, 0.05, busy=None if lowest > 4 else 4)
        lowest = min(lowest, limit.limit)
    assert lowest == 4  # held to the old time, it fell to the floor
    assert limit.limit == 9  # then grew again, while 4 calls in flight used half of it


def test_the_ceiling_holds() -> None:
    limit = AdaptiveLimit(ceiling=6, initial=50)
    assert limit.limit == 6
    now = window(limit, 0.0, 0.01, busy=6)
    window(limit, now, 0.01, busy=6)
    assert limit.limit == 6
