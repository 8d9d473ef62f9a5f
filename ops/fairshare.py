"""Which job's micro-batch runs next: the dispatch order, as a pure function of what is queued.

Share order (the default) is start-time fair queuing between tenants, as Slurm's fair-share
and weighted fair queuing in network schedulers: each tenant has a virtual time (`pass`) that
advances by the texts it was served ÷ its weight, and the tenant with the smallest one goes
next, so over any stretch in which tenants have work waiting, each gets texts in proportion to
its weight. A tenant that had nothing queued starts from the clock (the virtual time of the
last dispatch), never from a credit saved up while idle, so it neither starves the others nor
waits behind them. Within a tenant, its jobs of the highest `priority` go first, and jobs of
one priority take turns a micro-batch each (the one served longest ago first: a new job's
first micro-batch goes out at once). Micro-batches have about the same padded-token budget,
so turns are about equal device time.

Arrival order runs jobs first in, first out: what the broker alone would do; the benchmark
compares the two.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence


class DispatchOrder(enum.StrEnum):
    SHARE = "share"
    ARRIVAL = "arrival"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A job with at least one micro-batch ready to run."""

    job_id: str
    tenant: str
    priority: int
    queued_at: float  # when its micro-batches were stored (arrival order)
    dispatched_at: float | None  # when one of its micro-batches last went out


@dataclasses.dataclass(frozen=True)
class Choice:
    job_id: str
    tenant: str
    start: float  # the tenant's virtual time when served: the new clock, and the local rank


def choose(candidates: Sequence[Candidate], order: DispatchOrder, clock: float,
           passes: Mapping[str, float]) -> Choice | None:
    """The job whose micro-batch goes next; `passes` holds the tenants' virtual times (a tenant
    missing from it has never been served)."""
    if not candidates:
        return None
    if order == DispatchOrder.ARRIVAL:
        job = min(candidates, key=lambda c: (c.queued_at, c.job_id))
        return Choice(job.job_id, job.tenant, clock)
    start = {c.tenant: max(passes.get(c.tenant, 0.0), clock) for c in candidates}
    tenant = min(start, key=lambda t: (start[t], t))
    own = [c for c in candidates if c.tenant == tenant]
    top = max(c.priority for c in own)
    job = min((c for c in own if c.priority == top),
              key=lambda c: (c.dispatched_at is not None, c.dispatched_at or 0.0,
                             c.queued_at, c.job_id))
    return Choice(job.job_id, tenant, start[tenant])


def charge(start: float, texts: int, weight: float) -> float:
    """A tenant's virtual time after it was served `texts` at virtual time `start`."""
    return start + texts / weight
