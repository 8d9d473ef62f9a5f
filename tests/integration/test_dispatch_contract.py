"""The dispatch contract on both stores: a bounded window of dispatch messages, each used once,
and the order in which micro-batches go out (by tenant weight, a tenant's job priority, its
jobs in turn; or first in, first out)."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from ops.fairshare import DispatchOrder
from ops.store import ClaimOutcome, Claims, Store, Window
from ops.store.base import ANALYZE_AFTER_MICRO_BATCHES
from ops.store.postgres import PostgresStore
from schemas.batch import Job, JobStatus
from schemas.microbatch import Item, MicroBatch, MicroBatchState

SHARE, ARRIVAL = DispatchOrder.SHARE, DispatchOrder.ARRIVAL
WINDOW = Window(per_worker=2, live_within=15)

pytestmark = pytest.mark.timeout(120)


def queue_job(store: Store, job_id: str, tenant: str, batches: int, *, created: int = 100,
              priority: int = 0, rows: int = 4) -> None:
    store.create_job(Job(id=job_id, status=JobStatus.VALIDATING, created_at=created,
                         tenant=tenant, priority=priority))
    store.start_job(job_id, [
        MicroBatch(job_id=job_id, seq=s, state=MicroBatchState.QUEUED, items=[
            Item(line=s * rows + k, custom_id=f"{s}-{k}", texts=["hi"], lengths=[3], model="m")
            for k in range(rows)])
        for s in range(batches)], total=batches * rows)


def next_claim(store: Store, order: DispatchOrder = SHARE, count: int = 1) -> Claims:
    return store.claim_next(store.add_token(time.time()), "w", 60, 3, order, WINDOW, count)


def next_jobs(store: Store, n: int, order: DispatchOrder = SHARE, count: int = 1) -> list[str]:
    """The jobs of the next `n` micro-batches dispatched, by messages that each claim up to
    `count` (each run and completed at once, in the order claimed)."""
    out: list[str] = []
    while len(out) < n:
        got = next_claim(store, order, min(count, n - len(out)))
        assert got.outcome == ClaimOutcome.RUN and got.claims
        for claim in got.claims:
            mb = claim.micro_batch
            assert claim.outcome == ClaimOutcome.RUN and mb is not None
            assert store.begin_forward(mb.job_id, mb.seq, "w", clock=claim.rank[0])
            store.complete(mb.job_id, mb.seq, len(mb.items), 0)
            out.append(mb.job_id)
    return out


# The dispatch order is the same whether a message claims one micro-batch or several.
by_claim_size = pytest.mark.parametrize("count", [1, 4, 16])


def test_window_holds_one_message_per_ready_micro_batch_up_to_its_size(store: Store) -> None:
    """The window is `per_worker` messages per live GPU worker (one worker's worth with none
    alive), never more than the micro-batches ready to run; an ops worker does not count."""
    queue_job(store, "batch_a", "t", batches=9)
    assert len(store.top_up(WINDOW)) == 2
    assert store.top_up(WINDOW) == []
    for name, queues in (("g1", "gpu,online"), ("g2", "gpu"), ("o1", "ops"), ("n1", "online")):
        store.heartbeat(name, 1, queues, "cpu")
    assert len(store.top_up(WINDOW)) == 2  # two GPU workers: four in all
    assert store.dispatch_tokens() == 4
    queue_job(store, "batch_b", "t", batches=1)
    assert store.top_up(WINDOW) == []


def test_a_message_is_used_once_and_refills_the_window(store: Store) -> None:
    """A message claims one micro-batch and puts a new message in its place while work is
    waiting; the same message again, or one never issued, does nothing (STALE); with nothing
    ready a message is used up without a replacement (IDLE)."""
    queue_job(store, "batch_a", "t", batches=3)
    first, second = store.top_up(WINDOW)
    got = store.claim_next(first, "w", 60, 3, SHARE, WINDOW)
    assert got.outcome == ClaimOutcome.RUN and len(got.claims) == 1
    assert len(got.tokens) == 1 and store.dispatch_tokens() == 2
    assert store.claim_next(first, "w", 60, 3, SHARE, WINDOW).outcome == ClaimOutcome.STALE
    assert store.claim_next("never-sent", "w", 60, 3, SHARE, WINDOW).outcome \
        == ClaimOutcome.STALE
    for token in (second, got.tokens[0]):
        assert store.claim_next(token, "w", 60, 3, SHARE, WINDOW).tokens == ()
    assert store.micro_batch_summary("batch_a") == {"running": 3}
    assert store.dispatch_tokens() == 0
    assert next_claim(store).outcome == ClaimOutcome.IDLE


def test_a_message_may_claim_several_micro_batches_up_to_what_is_ready(store: Store) -> None:
    """One message with `count` 4 takes four micro-batches in dispatch order, each with its own
    lease and rank, and refills the window behind them; with fewer ready it takes what there
    is; a cancelled job's micro-batches are passed over; `count` below 1 is refused."""
    queue_job(store, "batch_a", "alpha", batches=5, created=100)
    queue_job(store, "batch_b", "beta", batches=1, created=101)
    queue_job(store, "batch_c", "gamma", batches=3, created=102)
    store.cancel_job("batch_c")
    first, _ = store.top_up(WINDOW)
    got = store.claim_next(first, "w", 60, 3, SHARE, WINDOW, count=4)
    assert got.outcome == ClaimOutcome.RUN
    assert [(c.micro_batch.job_id, c.micro_batch.seq) for c in got.claims] \
        == [("batch_a", 0), ("batch_b", 0), ("batch_a", 1), ("batch_a", 2)]  # type: ignore[union-attr]
    assert all(c.outcome == ClaimOutcome.RUN and len(c.micro_batch.items) == 4  # type: ignore[union-attr]
               for c in got.claims)
    assert [c.rank for c in got.claims] == sorted(c.rank for c in got.claims)
    assert len(got.tokens) == 1  # two ready, one message still out: the window is full again
    assert store.micro_batch_summary("batch_a") == {"running": 3, "queued": 2}
    rest = next_claim(store, count=4)
    assert [(c.micro_batch.job_id, c.micro_batch.seq) for c in rest.claims] \
        == [("batch_a", 3), ("batch_a", 4)]  # type: ignore[union-attr]
    assert store.micro_batch_summary("batch_c") == {"skipped": 3}
    with pytest.raises(ValueError, match="count"):
        next_claim(store, count=0)


def test_cancel_and_expiry_leave_no_message_holding_the_window(store: Store) -> None:
    """Messages sent for a job that is then cancelled or expired find nothing and are used
    up; lost ones are forgotten after `older_than` and their places sent again."""
    queue_job(store, "batch_a", "t", batches=5)
    queue_job(store, "batch_b", "t", batches=5)
    tokens = store.top_up(WINDOW)
    store.cancel_job("batch_a")
    store.expire("batch_b")
    assert [store.claim_next(t, "w", 60, 3, SHARE, WINDOW).outcome for t in tokens] \
        == [ClaimOutcome.IDLE] * 2
    assert store.dispatch_tokens() == 0
    queue_job(store, "batch_c", "t", batches=5)
    assert len(store.top_up(WINDOW)) == 2
    assert store.drop_lost_tokens(older_than=3600) == 0
    time.sleep(0.02)
    assert store.drop_lost_tokens(older_than=0.01) == 2  # the broker lost both
    assert len(store.top_up(WINDOW)) == 2


@by_claim_size
def test_tenants_share_by_weight(store: Store, count: int) -> None:
    """Weights 1 and 3 with both tenants backlogged: 1 micro-batch in 4 goes to the first."""
    store.set_tenant_weight("light", 1)
    store.set_tenant_weight("heavy", 3)
    queue_job(store, "batch_l", "light", batches=20, created=100)
    queue_job(store, "batch_h", "heavy", batches=20, created=200)
    served = Counter(next_jobs(store, 16, count=count))
    assert served == {"batch_l": 4, "batch_h": 12}
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="weight"):
            store.set_tenant_weight("light", bad)
    assert {q.tenant: (q.weight, q.queued_items) for q in store.tenant_queues()} \
        == {"light": (1.0, 64), "heavy": (3.0, 32)}


@by_claim_size
def test_a_newly_active_tenant_goes_next_without_credit_saved_while_idle(store: Store,
                                                                         count: int) -> None:
    """A tenant whose work arrives behind another's backlog is served at the next dispatch,
    then the two alternate: it neither waits out the backlog nor takes over with credit it
    saved while it had nothing queued."""
    queue_job(store, "batch_big", "alpha", batches=30, created=100)
    assert next_jobs(store, 6, count=count) == ["batch_big"] * 6
    queue_job(store, "batch_small", "beta", batches=3, created=200)
    assert next_jobs(store, 7, count=count) == ["batch_small", "batch_big"] * 3 + ["batch_big"]


@by_claim_size
def test_priority_orders_a_tenants_own_jobs_and_equal_ones_take_turns(store: Store,
                                                                       count: int) -> None:
    """Within a tenant its higher-priority job goes first; jobs of one priority take turns a
    micro-batch each; another tenant's share is not touched by either."""
    queue_job(store, "batch_1", "alpha", batches=4, created=100)
    queue_job(store, "batch_2", "alpha", batches=4, created=101)
    queue_job(store, "batch_urgent", "alpha", batches=2, created=102, priority=5)
    queue_job(store, "batch_other", "beta", batches=4, created=103)
    order = next_jobs(store, 8, count=count)
    alpha = [j for j in order if j != "batch_other"]
    assert alpha == ["batch_urgent", "batch_urgent", "batch_1", "batch_2"]
    assert order.count("batch_other") == 4


@by_claim_size
def test_arrival_order_is_first_in_first_out(store: Store, count: int) -> None:
    queue_job(store, "batch_1", "alpha", batches=3, created=100)
    queue_job(store, "batch_2", "beta", batches=1, created=101)
    assert next_jobs(store, 4, ARRIVAL, count) == ["batch_1"] * 3 + ["batch_2"]


def test_a_worker_runs_what_it_holds_in_dispatch_order(store: Store) -> None:
    """Ranks follow the order the store chose; a tenant whose work arrives while a worker
    holds micro-batches claimed ahead ranks before those not yet begun, as if they had not
    been claimed."""
    queue_job(store, "batch_big", "alpha", batches=10, created=100)
    claims = [next_claim(store).claims[0] for _ in range(3)]
    assert [c.rank for c in claims] == sorted(c.rank for c in claims)
    first = claims[0].micro_batch
    assert store.begin_forward(first.job_id, first.seq, "w", clock=claims[0].rank[0])  # type: ignore[union-attr]
    queue_job(store, "batch_small", "beta", batches=1, created=200)
    small = next_claim(store).claims[0]
    assert small.micro_batch.job_id == "batch_small"  # type: ignore[union-attr]
    assert claims[0].rank < small.rank < claims[1].rank


def test_a_large_job_refreshes_the_planners_statistics(store: Store) -> None:
    """A job of `ANALYZE_AFTER_MICRO_BATCHES` micro-batches is planned for by its real size:
    storing it gathers the table's statistics (on a fresh table there are none)."""
    queue_job(store, "batch_large", "alpha", batches=ANALYZE_AFTER_MICRO_BATCHES, rows=1)
    with store.tx() as cur:
        if isinstance(store, PostgresStore):
            row = cur.execute("SELECT reltuples FROM pg_class WHERE relname = 'micro_batches' "
                              "AND relnamespace = current_schema()::regnamespace").fetchone()
        else:
            row = cur.execute("SELECT COUNT(*) FROM sqlite_stat1 WHERE tbl = 'micro_batches'"
                              ).fetchone()
    assert row is not None and row[0] >= (ANALYZE_AFTER_MICRO_BATCHES
                                          if isinstance(store, PostgresStore) else 1)
