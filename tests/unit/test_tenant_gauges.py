"""Per-tenant queue gauges keep their labels bounded: the tenants with the most queued get a
series each, the rest one summed series."""

from __future__ import annotations

import pytest

from ops.collectors import OTHER_TENANTS, tenant_gauges
from ops.store import TenantQueue

pytestmark = pytest.mark.timeout(30)


def test_tenants_past_the_limit_are_summed_under_other() -> None:
    queues = [TenantQueue("a", 1, 500, 100.0), TenantQueue("b", 3, 200, 160.0),
              TenantQueue("c", 1, 50, 130.0), TenantQueue("d", 1, 0, None)]
    items, age = tenant_gauges(queues, limit=2, now=200.0)
    assert {s.labels["tenant"]: s.value for s in items.samples} \
        == {"a": 500, "b": 200, OTHER_TENANTS: 50}
    assert {s.labels["tenant"]: s.value for s in age.samples} \
        == {"a": 100.0, "b": 40.0, OTHER_TENANTS: 70.0}
    items, age = tenant_gauges(queues[3:], limit=2, now=200.0)
    assert [(s.labels["tenant"], s.value) for s in age.samples] == [("d", 0.0)]
