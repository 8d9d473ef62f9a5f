"""The pipeline's order logic, with the stages replaced: a claim waits for room in the forward
queue, and the forward thread runs what it holds in dispatch order, not in claim order."""

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

    monkeypatch.setattr(runner, "claim", lambda _rt, _token, _send: next(claims))
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
