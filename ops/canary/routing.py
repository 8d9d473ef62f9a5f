"""Sticky routing of items between a canary's arms.

An item's arm is a pure function of `(tenant, custom_id)` and the current weight: its hash is a
fixed point in [0, 100), and the item goes to the canary when that point is below the weight.
Raising the weight therefore only moves items from stable to canary, never back, and a retried
request lands on the arm it had.

The arm is chosen at submit and confirmed when the item runs (`at_run`): a canary rolled back,
aborted or paused after an item was queued no longer serves it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence

from schemas.canary import Arm, Canary, CanaryState
from schemas.microbatch import Item


def point(tenant: str, custom_id: str, salt: str = "") -> float:
    """A uniform, stable position in [0, 100) for one item."""
    digest = hashlib.blake2b(f"{salt}\x1f{tenant}\x1f{custom_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2**64 * 100


def arm_for(tenant: str, custom_id: str, weight: float) -> Arm:
    return Arm.CANARY if point(tenant, custom_id) < weight else Arm.STABLE


def route(items: Sequence[Item], tenant: str, routes: Mapping[str, Canary],
          shadow_fraction: float) -> list[Item]:
    """Items with their served adapter, arm and canary recorded. Items asking for a version
    under a running canary are split by weight; a share of the canary arm (by a second,
    independent hash) also gets a shadow stable computation. After promotion every such item
    is served by the canary; after a rollback or abort the route is gone."""
    out = []
    for item in items:
        canary = routes.get(item.adapter) if item.adapter is not None else None
        if canary is None or canary.state == CanaryState.PAUSED:
            out.append(item)
        elif canary.state == CanaryState.PROMOTED:
            out.append(dataclasses.replace(item, adapter=canary.canary))
        elif arm_for(tenant, item.custom_id, canary.weight) == Arm.CANARY:
            shadow = point(tenant, item.custom_id, salt="shadow") < shadow_fraction * 100
            out.append(dataclasses.replace(
                item, adapter=canary.canary, arm=Arm.CANARY, canary_id=canary.id,
                canary_step=canary.step, shadow=canary.stable if shadow else None))
        else:
            out.append(dataclasses.replace(item, arm=Arm.STABLE, canary_id=canary.id,
                                           canary_step=canary.step))
    return out


def confirm(items: list[Item], lookup: Callable[[Sequence[str]], Mapping[str, Canary]]
            ) -> list[Item]:
    """`at_run` with the items' canaries as `lookup` (the store) has them now; no lookup when
    no item is under a canary."""
    ids = sorted({item.canary_id for item in items if item.canary_id is not None})
    return at_run(items, lookup(ids)) if ids else items


def at_run(items: Sequence[Item], canaries: Mapping[str, Canary]) -> list[Item]:
    """Items as they run now, given their canaries as they are now: an item routed under a
    canary that no longer runs (paused, rolled back, aborted, promoted, or gone) leaves the
    rollout: one on the canary arm goes back to the stable version unless the canary was
    promoted, and none of them is a sample of it any more (its step gets no verdict from
    them)."""
    out = []
    for item in items:
        canary = canaries.get(item.canary_id) if item.canary_id is not None else None
        if item.canary_id is None or (canary is not None
                                      and canary.state == CanaryState.RUNNING):
            out.append(item)
            continue
        adapter = item.adapter
        if item.arm == Arm.CANARY and canary is not None \
                and canary.state != CanaryState.PROMOTED:
            adapter = canary.stable
        out.append(dataclasses.replace(item, adapter=adapter, arm=None, canary_id=None,
                                       canary_step=None, shadow=None))
    return out
