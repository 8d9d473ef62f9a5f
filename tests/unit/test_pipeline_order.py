"""The pipeline's order logic, with the stages replaced: a claim waits for room in the forward
queue (for all it may claim), and the forward thread runs what it holds in dispatch order, not
in claim order."""

from __future__ import annotations

import threading
import types

import numpy as np
import pytest

from schemas.microbatch import MicroBatch, MicroBatchState
from workers import pipeline, runner

pytestmark = pytest.mark.timeout(30)


def work(seq: int, rank: tuple[float, int]) -> runner.Work:
    mb = MicroBatch(job_id="batch_x", seq=seq, state=MicroBatchState.RUNNING, items=[])
    return runner.Work(mb, False, [], np.zeros(0), np.zeros(0), rank)


def test_claims_wait_for_room_and_forwards_follow_dispatch_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    claims = iter([work(0, (0.0, 0)), work(1, (8.0, 1)), work(2, (12.0, 2)),
                   work(3, (4.0, 3))])
    ran: list[int] = []
    first_started, release = threading.Event(), {0: threading.Event(), 1: threading.Event()}

    def forward(_rt: object, w: runner.Work) -> bool:
        ran.append(w.mb.seq)
        if w.mb.seq == 0:
            first_started.set()
        if w.mb.seq in release:
            release[w.mb.seq].wait(10)
        return True

    monkeypatch.setattr(runner, "claim", lambda _rt, _token, _send, _count: [next(claims)])
    monkeypatch.setattr(runner, "forward", forward)
    monkeypatch.setattr(runner, "write", lambda _rt, _w: None)
    rt = types.SimpleNamespace(leases=types.SimpleNamespace(drop=lambda _mb: None))
    pipe = pipeline.Pipeline(rt, lambda _tokens, _countdown: None, depth=2).start()  # type: ignore[arg-type]

    pipe.take("t0")
    assert first_started.wait(10)  # micro-batch 0 is in its forward
    pipe.take("t1")
    pipe.take("t2")  # the forward queue is full now (depth 2)
    third = threading.Thread(target=pipe.take, args=("t3",), name="test-take")
    third.start()
    third.join(0.3)
    assert third.is_alive(), "a claim was made without room in the forward queue"
    release[0].set()  # the forward takes 1 → room → 3 is claimed, and ranks before 2
    third.join(10)
    assert not third.is_alive()
    release[1].set()
    pipe.stop(timeout=10)
    assert ran == [0, 1, 3, 2]


def test_a_claim_of_several_waits_for_room_for_all_and_gives_back_what_it_did_not_use(
        monkeypatch: pytest.MonkeyPatch) -> None:
    claims = iter([[work(0, (0.0, 0)), work(1, (4.0, 0))], [work(2, (8.0, 1))],
                   [work(3, (12.0, 2)), work(4, (16.0, 2))]])
    asked: list[int] = []
    ran: list[int] = []
    started, release = threading.Event(), threading.Event()

    def claim(_rt: object, _token: str, _send: object, count: int) -> list[runner.Work]:
        asked.append(count)
        return next(claims)

    def forward(_rt: object, w: runner.Work) -> bool:
        ran.append(w.mb.seq)
        if w.mb.seq == 0:
            started.set()
            release.wait(10)
        return True

    monkeypatch.setattr(runner, "claim", claim)
    monkeypatch.setattr(runner, "forward", forward)
    monkeypatch.setattr(runner, "write", lambda _rt, _w: None)
    rt = types.SimpleNamespace(leases=types.SimpleNamespace(drop=lambda _mb: None))
    with pytest.raises(ValueError, match="claim_size"):
        pipeline.Pipeline(rt, lambda _tokens, _countdown: None, depth=2, claim_size=3)  # type: ignore[arg-type]
    pipe = pipeline.Pipeline(rt, lambda _tokens, _countdown: None, depth=2,  # type: ignore[arg-type]
                             claim_size=2).start()

    assert pipe.take("t0") == "run batch_x/0, run batch_x/1"
    assert started.wait(10)  # 0 in its forward, 1 waiting: one place free of two
    second = threading.Thread(target=pipe.take, args=("t1",), name="test-take")
    second.start()
    second.join(0.3)
    assert second.is_alive(), "a claim of two was made with room for one"
    release.set()
    second.join(10)
    assert not second.is_alive()
    assert pipe.take("t2") == "run batch_x/3, run batch_x/4"  # the unused place came back
    pipe.stop(timeout=10)
    assert asked == [2, 2, 2] and ran == [0, 1, 2, 3, 4]
