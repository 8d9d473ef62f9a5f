"""The dispatch order as a pure function: weighted shares between tenants, no credit for idle
time, priority then turns within a tenant, and arrival order."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ops.fairshare import Candidate, DispatchOrder, charge, choose

pytestmark = pytest.mark.timeout(30)


def job(job_id: str, tenant: str, *, priority: int = 0, queued_at: float = 0.0,
        dispatched_at: float | None = None) -> Candidate:
    return Candidate(job_id, tenant, priority, queued_at, dispatched_at)


@pytest.mark.parametrize("seed", range(5))
def test_backlogged_tenants_get_texts_in_proportion_to_their_weights(seed: int) -> None:
    """Random weights and micro-batch sizes: after many dispatches every tenant's share of the
    texts is within 2 points of its weight's share."""
    rng = random.Random(seed)
    weights = {f"t{n}": rng.choice([0.5, 1, 2, 3, 8]) for n in range(rng.randint(2, 5))}
    candidates = [job(f"job-{t}", t) for t in weights]
    passes: dict[str, float] = {}
    clock, served = 0.0, Counter[str]()
    for _ in range(4000):
        chosen = choose(candidates, DispatchOrder.SHARE, clock, passes)
        assert chosen is not None
        texts = rng.randint(50, 256)
        passes[chosen.tenant] = charge(chosen.start, texts, weights[chosen.tenant])
        clock, served[chosen.tenant] = chosen.start, served[chosen.tenant] + texts
    total = sum(served.values())
    for tenant, weight in weights.items():
        assert abs(served[tenant] / total - weight / sum(weights.values())) < 0.02


def test_an_idle_tenant_starts_from_the_clock_not_from_saved_credit() -> None:
    passes = {"busy": 500.0, "back": 3.0}
    chosen = choose([job("a", "busy"), job("b", "back")], DispatchOrder.SHARE, 480.0, passes)
    assert chosen is not None and (chosen.tenant, chosen.start) == ("back", 480.0)


def test_priority_then_turns_within_a_tenant_and_arrival_order() -> None:
    jobs = [job("old", "t", queued_at=1, dispatched_at=10.0),
            job("new", "t", queued_at=2),
            job("urgent", "t", priority=5, queued_at=3, dispatched_at=11.0)]
    assert choose(jobs, DispatchOrder.SHARE, 0.0, {}).job_id == "urgent"  # type: ignore[union-attr]
    assert choose(jobs[:2], DispatchOrder.SHARE, 0.0, {}).job_id == "new"  # type: ignore[union-attr]
    assert choose(jobs, DispatchOrder.ARRIVAL, 0.0, {}).job_id == "old"  # type: ignore[union-attr]
    assert choose([], DispatchOrder.SHARE, 0.0, {}) is None
