"""The gateway's bound on embeddings calls in flight: a call past it is refused, and the bound
follows the answers' latency (grows while they stay near the unloaded time and the bound is in
use, shrinks in proportion when they queue), between its floor and its ceiling."""

from __future__ import annotations

import pytest

from producers.http.in_flight import TOLERANCE, WINDOW_CALLS, WINDOW_SECONDS, AdaptiveLimit


def window(limit: AdaptiveLimit, now: float, rtt: float, busy: int) -> float:
    """One window of answers taking `rtt` each (`busy` calls in flight at a time, the last
    answer just past `WINDOW_SECONDS` after the first), judged at its last answer; the time
    after it."""
    step = WINDOW_SECONDS * 1.01 / (WINDOW_CALLS * busy - 1)
    for _ in range(WINDOW_CALLS):
        for _ in range(busy):
            assert limit.acquire()
        for _ in range(busy):
            limit.release(now, rtt)
            now += step
    return now


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
    now = window(limit, now, 0.01 * TOLERANCE * 1.25, busy=4)  # a quarter past the tolerance
    assert limit.limit == pytest.approx(40 / 1.25)
    for _ in range(10):
        now = window(limit, now, 10.0, busy=4)  # far slower: halved each window at most
    assert limit.limit == 4


def test_the_unloaded_time_is_forgotten_after_a_minute() -> None:
    """A deployment that became slower for good (a bigger model) is not held to the old time
    for ever: after two baseline periods its slower answers are the new unloaded time."""
    limit = AdaptiveLimit(ceiling=100, floor=4, initial=20)
    now = window(limit, 0.0, 0.01, busy=10)
    lowest = limit.limit
    while now < 70:  # a long stretch of answers 5× slower, with 4 calls in flight
        now = window(limit, now, 0.05, busy=4)
        lowest = min(lowest, limit.limit)
    assert lowest == 4  # held to the old time, it fell to the floor
    assert limit.limit == 9  # then grew again, while 4 calls in flight used half of it


def test_the_ceiling_holds() -> None:
    limit = AdaptiveLimit(ceiling=6, initial=50)
    assert limit.limit == 6
    now = window(limit, 0.0, 0.01, busy=6)
    window(limit, now, 0.01, busy=6)
    assert limit.limit == 6
