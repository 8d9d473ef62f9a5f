"""Micro-batches: the unit of work on the broker. The store row is the truth; a broker message
only names `(job_id, seq)`, so a lost or repeated message can never lose or double an item."""

from __future__ import annotations

import dataclasses
import enum

from pydantic import BaseModel

from schemas.canary import Arm


class MicroBatchState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    SKIPPED = "skipped"  # job cancelled or expired before it ran
    DEAD = "dead"  # failed more than the delivery limit; its items are in the error file

    @property
    def terminal(self) -> bool:
        return self in (MicroBatchState.DONE, MicroBatchState.SKIPPED, MicroBatchState.DEAD)


@dataclasses.dataclass(slots=True, kw_only=True)
class Item:
    """One input line after validation: its position in the input, its texts and their token
    lengths (with special tokens), and the adapter it asks for (None = base model).

    A plain dataclass, not a model: every field comes from a line already validated, and a
    50,000-line submit built its items in 0.04 s this way against 0.38 s as pydantic models
    (pydantic still checks them where they are read back from the store)."""

    line: int
    custom_id: str
    texts: list[str]
    lengths: list[int]
    truncate: bool = False
    model: str
    adapter: str | None = None  # the adapter that serves it (after canary routing)
    rank: int | None = None  # the request's rank budget (`body.rank`), None: the adapter's own
    # Under a canary rollout: the arm, the canary and its step when the item was routed, and
    # for a sample of canary items the stable version to compute alongside (shadow).
    arm: Arm | None = None
    canary_id: str | None = None
    canary_step: int | None = None
    shadow: str | None = None

    @property
    def max_length(self) -> int:
        return max(self.lengths)


class MicroBatch(BaseModel):
    job_id: str
    seq: int
    state: MicroBatchState
    items: list[Item]
    deliveries: int = 0  # forwards begun on it
    failed_deliveries: int = 0  # of those, the ones its worker died in
    lease_until: float | None = None
    last_error: str | None = None
    # The texts' word-piece ids in item order (`schemas.tokens`); None on micro-batches stored
    # before ids were kept, whose texts the worker tokenizes.
    tokens: bytes | None = None

    @property
    def rows(self) -> int:
        return sum(len(item.texts) for item in self.items)

    @property
    def padded_tokens(self) -> int:
        return self.rows * max(item.max_length for item in self.items)

    @property
    def real_tokens(self) -> int:
        return sum(sum(item.lengths) for item in self.items)
