"""Canary rollouts: a new adapter version (`canary`) takes a growing share of the items that ask
for the live one (`stable`), one step at a time, while gates compare the two arms."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel


class CanaryState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"  # held by severe drift: weight 0, no advance; a failing gate rolls back
    PROMOTED = "promoted"  # the canary serves every item that asks for stable
    ROLLED_BACK = "rolled_back"  # a gate failed: weight 0
    ABORTED = "aborted"  # stopped by an operator: weight 0

    @property
    def routes(self) -> bool:
        """Items asking for `stable` are split between the arms in this state."""
        return self in (CanaryState.RUNNING, CanaryState.PAUSED)

    @property
    def terminal(self) -> bool:
        return self in (CanaryState.ROLLED_BACK, CanaryState.ABORTED)


class Arm(enum.StrEnum):
    STABLE = "stable"
    CANARY = "canary"


class Decision(enum.StrEnum):
    START = "start"
    HOLD = "hold"  # too few samples, or a gate inconclusive
    ADVANCE = "advance"  # every gate passed: next weight
    PROMOTE = "promote"  # passed the last step below 100 %: weight 100
    ROLLBACK = "rollback"  # a gate failed: weight 0 at once
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    MANUAL_PROMOTE = "manual_promote"


class Canary(BaseModel):
    id: str
    model: str
    stable: str
    canary: str
    steps: list[float]
    step: int
    weight: float
    state: CanaryState
    min_samples: int
    started_at: float
    step_started_at: float
    ended_at: float | None = None
    reason: str | None = None

    @property
    def serving_weight(self) -> float:
        """The share of stable's items the canary serves now (0 while paused; it resumes at
        `weight`)."""
        if self.state == CanaryState.PROMOTED:
            return 100.0
        return self.weight if self.state == CanaryState.RUNNING else 0.0


class DecisionRecord(BaseModel):
    canary_id: str
    at: float
    step: int
    weight: float
    decision: Decision
    reason: str
    numbers: dict[str, Any]


class Sample(BaseModel):
    """One routed item's outcome, written with its micro-batch's completion."""

    canary_id: str
    step: int
    arm: Arm
    error: bool
    violation: str | None  # "non_finite" or "norm_out_of_bounds"
    # A paired latency probe, on one canary item per micro-batch: seconds of the canary adapter
    # alone and of the stable adapter alone on the same rows (None: not probed).
    latency: float | None
    stable_latency: float | None = None
    agreement: float | None  # cosine with the shadow stable embedding, sampled items only
