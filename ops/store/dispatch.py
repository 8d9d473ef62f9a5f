"""Which micro-batch a worker runs next, decided in the store.

A job's micro-batches wait in the store (state `queued`). The broker carries a bounded window of
anonymous messages, each meaning "run the next micro-batch": a worker that receives one claims,
in one transaction, the micro-batch that `ops.fairshare` puts first, and adds a message in its
place while work is waiting. Each message has a row in `dispatch_tokens`; the window is
`per_worker` messages for each live GPU worker (at least one worker's worth, so a job submitted
while every worker is down finds its messages waiting). Because no message names a micro-batch,
cancel, expiry and a new tenant's work act on the very next claim, and no stale message can
hold a place in the window: one that finds its row gone (used, or dropped as lost) does nothing.

Every claim takes the lock of a `dispatch` row first, so claims from any number of workers are
serialised and the tenants' virtual times never lose an update. The clock a tenant with new
work starts from is the virtual time of the last forward begun (`begin_forward` moves it), not
of the last claim: a worker claims ahead of its forwards, and new work is placed among what is
still waiting, as if nothing had been claimed ahead.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
import uuid

from ops.fairshare import Candidate, DispatchOrder, charge, choose
from ops.store.core import Cursor, Transactional, retried
from ops.store.rows import ITEMS
from schemas.batch import JobStatus
from schemas.microbatch import MicroBatch, MicroBatchState

QUEUED = MicroBatchState.QUEUED.value
RUNNING = MicroBatchState.RUNNING.value
# Attempts to claim a chosen micro-batch that a by-name claim took in between.
CLAIM_ATTEMPTS = 3


class ClaimOutcome(enum.StrEnum):
    RUN = "run"  # the caller holds the lease: run the items
    DEAD = "dead"  # delivered too often: the caller writes its items as errors
    SKIP = "skip"  # job cancelled or expired: marked skipped, nothing to run
    DONE = "done"  # a repeated message for finished work
    BUSY = "busy"  # another worker holds a live lease
    IDLE = "idle"  # a dispatch message found no micro-batch ready to run
    STALE = "stale"  # a dispatch message already used, or dropped as lost


@dataclasses.dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    micro_batch: MicroBatch | None = None
    # Where it stands in dispatch order (the tenant's virtual time, then the dispatch count):
    # a worker runs what it holds in this order.
    rank: tuple[float, int] = (0.0, 0)
    # Dispatch messages to send: the window refilled behind this claim.
    tokens: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Window:
    """How many dispatch messages the broker may hold: `per_worker` for each GPU worker seen in
    the last `live_within` seconds."""

    per_worker: int
    live_within: float


@dataclasses.dataclass(frozen=True)
class TenantQueue:
    tenant: str
    weight: float
    queued_items: int  # texts in queued micro-batches
    oldest_queued_at: float | None  # when the oldest of them was queued


class DispatchRecords(Transactional):
    # -- claims ------------------------------------------------------------------------------
    def claim(self, job_id: str, seq: int, worker: str, lease_seconds: float,
              max_deliveries: int) -> Claim:
        """Take the lease on one named micro-batch; see `ClaimOutcome`."""
        return self._with_items(self._claim_named(job_id, seq, worker, lease_seconds,
                                                  max_deliveries))

    def claim_next(self, token: str, worker: str, lease_seconds: float, max_deliveries: int,
                   order: DispatchOrder, window: Window) -> Claim:
        """Use dispatch message `token`: claim the micro-batch that goes next (RUN or DEAD), or
        find none ready (IDLE), or none to use (STALE); the window is refilled in the same
        transaction.

        The claim itself holds the dispatch lock, which serialises every worker's claims, so
        it reads no more than it decides by: the micro-batch's items and token ids (tens of
        kilobytes, decoded into objects) are read after it commits, with the lease already
        this worker's. That read is its own retried step, so a retry never repeats the claim."""
        return self._with_items(self._claim_next(token, worker, lease_seconds, max_deliveries,
                                                 order, window))

    @retried
    def _claim_named(self, job_id: str, seq: int, worker: str, lease_seconds: float,
                     max_deliveries: int) -> Claim:
        with self.tx() as cur:
            return _claim_row(cur, job_id, seq, worker, lease_seconds, max_deliveries,
                              time.time())[0]

    @retried
    def _with_items(self, got: Claim) -> Claim:
        """The claim with its micro-batch's items and token ids, read from the store."""
        mb = got.micro_batch
        if mb is None:
            return got
        with self.tx() as cur:
            row = cur.execute("SELECT items, tokens FROM micro_batches WHERE job_id = ? AND "
                              "seq = ?", (mb.job_id, mb.seq)).fetchone()
        if row is None or row[0] == "[]":  # finished meanwhile by a holder that lost its lease
            return Claim(ClaimOutcome.DONE)
        filled = mb.model_copy(update={"items": ITEMS.validate_json(row[0]),
                                       "tokens": None if row[1] is None else bytes(row[1])})
        return dataclasses.replace(got, micro_batch=filled)

    @retried
    def _claim_next(self, token: str, worker: str, lease_seconds: float, max_deliveries: int,
                    order: DispatchOrder, window: Window) -> Claim:
        now = time.time()
        with self.tx() as cur:
            turn = _lock(cur, window, now)
            cur.execute("DELETE FROM dispatch_tokens WHERE id = ?", (token,))
            if cur.rowcount != 1:
                return Claim(ClaimOutcome.STALE)
            turn.held -= 1
            for _ in range(CLAIM_ATTEMPTS):
                got = self._claim_chosen(cur, worker, lease_seconds, max_deliveries, order,
                                         turn.clock, turn.count, now)
                if got.outcome != ClaimOutcome.BUSY:
                    break
            if got.micro_batch is None:
                return Claim(ClaimOutcome.IDLE)
            return dataclasses.replace(got, tokens=_refill(cur, turn, now))

    def _claim_chosen(self, cur: Cursor, worker: str, lease_seconds: float, max_deliveries: int,
                      order: DispatchOrder, clock: float, count: int, now: float) -> Claim:
        # Each in-progress job with a micro-batch ready: when it was queued (its first
        # micro-batch's stamp, finer than the job's whole seconds), its first ready
        # micro-batch, and the standing of the job and its tenant.
        rows = cur.execute(
            "SELECT * FROM (SELECT j.id, j.tenant, j.priority, COALESCE((SELECT enqueued_at "
            "FROM micro_batches WHERE job_id = j.id AND seq = 0), j.created_at), "
            "j.dispatched_at, "
            "COALESCE(s.pass, 0), COALESCE(t.weight, 1), (SELECT MIN(mb.seq) FROM micro_batches "
            "mb WHERE mb.job_id = j.id AND mb.state = ? AND (mb.not_before IS NULL OR "
            "mb.not_before <= ?)) AS first FROM jobs j "
            "LEFT JOIN dispatch_shares s ON s.tenant = j.tenant "
            "LEFT JOIN tenants t ON t.tenant = j.tenant "
            "WHERE j.status = ? AND j.expired_at IS NULL) ready WHERE first IS NOT NULL",
            (QUEUED, now, JobStatus.IN_PROGRESS.value),
        ).fetchall()
        candidates = [Candidate(r[0], r[1], r[2], r[3], r[4]) for r in rows]
        chosen = choose(candidates, order, clock, {r[1]: r[5] for r in rows})
        if chosen is None:
            return Claim(ClaimOutcome.IDLE)
        row = next(r for r in rows if r[0] == chosen.job_id)
        got, texts = _claim_row(cur, chosen.job_id, row[7], worker, lease_seconds,
                                max_deliveries, now)
        if got.micro_batch is None:
            return got
        weight = row[6]
        cur.execute(
            "INSERT INTO dispatch_shares (tenant, pass) VALUES (?, ?) "
            "ON CONFLICT (tenant) DO UPDATE SET pass = excluded.pass",
            (chosen.tenant, charge(chosen.start, texts, weight)),
        )
        cur.execute("UPDATE jobs SET dispatched_at = ? WHERE id = ?", (now, chosen.job_id))
        return dataclasses.replace(got, rank=(chosen.start, count))

    @retried
    def release(self, job_id: str, seq: int, worker: str, error: str,
                not_before: float | None = None) -> bool:
        """Give a micro-batch this worker holds back to the queue after a retryable failure; it
        is not dispatched again before `not_before` (a backoff)."""
        with self.tx() as cur:
            cur.execute(
                "UPDATE micro_batches SET state = ?, lease_until = NULL, last_error = ?, "
                "not_before = ? WHERE job_id = ? AND seq = ? AND state = ? AND worker = ?",
                (QUEUED, error[:2000], not_before, job_id, seq, RUNNING, worker),
            )
            return cur.rowcount == 1

    # -- the window --------------------------------------------------------------------------
    @retried
    def top_up(self, window: Window) -> list[str]:
        """New dispatch messages to send so that the broker holds a full window (one for each
        ready micro-batch, up to the window)."""
        now = time.time()
        with self.tx() as cur:
            return list(_refill(cur, _lock(cur, window, now), now))

    @retried
    def add_token(self, due_at: float) -> str:
        """One dispatch message, sent to arrive at `due_at` (a released micro-batch's backoff)."""
        token = uuid.uuid4().hex
        with self.tx() as cur:
            cur.execute("INSERT INTO dispatch_tokens (id, due_at) VALUES (?, ?)", (token, due_at))
        return token

    @retried
    def drop_lost_tokens(self, older_than: float) -> int:
        """Forget dispatch messages due more than `older_than` seconds ago and never used: the
        broker lost them (a restart, a flush), or a worker holding one died. `top_up` then
        sends their places again; one that turns up later finds no row and does nothing."""
        with self.tx() as cur:
            cur.execute("DELETE FROM dispatch_tokens WHERE due_at < ?",
                        (time.time() - older_than,))
            return cur.rowcount

    @retried
    def requeue_lapsed(self) -> int:
        """Put running micro-batches whose lease ran out (or was ended: a dead worker's) back in
        the queue, to be dispatched again."""
        with self.tx() as cur:
            cur.execute(
                "UPDATE micro_batches SET state = ?, lease_until = NULL "
                "WHERE state = ? AND lease_until < ?",
                (QUEUED, RUNNING, time.time()),
            )
            return cur.rowcount

    @retried
    def dispatch_tokens(self) -> int:
        with self.tx() as cur:
            row = cur.execute("SELECT COUNT(*) FROM dispatch_tokens").fetchone()
        return int(row[0]) if row else 0

    # -- tenants -----------------------------------------------------------------------------
    @retried
    def set_tenant_weight(self, tenant: str, weight: float) -> None:
        if not (weight > 0 and math.isfinite(weight)):
            raise ValueError(f"weight: must be a positive finite number, got {weight!r}")
        with self.tx() as cur:
            cur.execute(
                "INSERT INTO tenants (tenant, weight, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (tenant) DO UPDATE SET weight = excluded.weight, "
                "updated_at = excluded.updated_at",
                (tenant, weight, int(time.time())),
            )

    @retried
    def queued_tokens(self, tenant: str) -> int:
        """Word pieces of a tenant's micro-batches not yet done (queued or running)."""
        with self.tx() as cur:
            row = cur.execute(
                "SELECT COALESCE(SUM(mb.real_tokens), 0) FROM micro_batches mb JOIN jobs j "
                "ON j.id = mb.job_id WHERE j.tenant = ? AND mb.state IN (?, ?)",
                (tenant, QUEUED, RUNNING),
            ).fetchone()
        return int(row[0])

    @retried
    def tenant_queues(self) -> list[TenantQueue]:
        """Every tenant with a weight set or work queued: its weight, queued texts and the age
        of its oldest queued micro-batch; most queued first."""
        with self.tx() as cur:
            queued = cur.execute(
                "SELECT j.tenant, SUM(mb.rows), MIN(mb.enqueued_at) FROM micro_batches mb "
                "JOIN jobs j ON j.id = mb.job_id WHERE mb.state = ? GROUP BY j.tenant",
                (QUEUED,),
            ).fetchall()
            weights = dict(cur.execute("SELECT tenant, weight FROM tenants").fetchall())
        found = {r[0]: TenantQueue(r[0], weights.get(r[0], 1.0), int(r[1]), r[2])
                 for r in queued}
        for tenant, weight in weights.items():
            found.setdefault(tenant, TenantQueue(tenant, weight, 0, None))
        return sorted(found.values(), key=lambda q: (-q.queued_items, q.tenant))


@dataclasses.dataclass
class _Turn:
    """What a claim or a top-up reads as it takes the dispatch lock."""

    count: int  # turns taken so far (orders claims of equal virtual time)
    clock: float  # virtual time of the last forward begun
    size: int  # the window: messages the broker may hold
    held: int  # messages out now


def _lock(cur: Cursor, window: Window, now: float) -> _Turn:
    """Take the dispatch lock (a row lock on PostgreSQL; SQLite's transactions already hold
    the write lock), count the turn, and read the clock and the window, in one statement."""
    row = cur.execute(
        "UPDATE dispatch SET value = value + 1 WHERE name = 'turns' RETURNING value, "
        "(SELECT value FROM dispatch WHERE name = 'clock'), (SELECT COUNT(*) FROM workers "
        "WHERE last_seen > ? AND (',' || queues || ',') LIKE ?), "
        "(SELECT COUNT(*) FROM dispatch_tokens)",
        (now - window.live_within, "%,gpu,%"),
    ).fetchone()
    assert row is not None and row[1] is not None, "dispatch rows missing: run `bemq migrate`"
    return _Turn(int(row[0]), float(row[1]), window.per_worker * max(1, int(row[2])),
                 int(row[3]))


def _refill(cur: Cursor, turn: _Turn, now: float) -> tuple[str, ...]:
    """Insert (and return) the dispatch messages missing from the window: one for each ready
    micro-batch, up to the window's size, less those already out."""
    size, held = turn.size, turn.held
    if held >= size:
        return ()
    ready = cur.execute(
        "SELECT COUNT(*) FROM (SELECT 1 FROM micro_batches WHERE state = ? "
        "AND (not_before IS NULL OR not_before <= ?) LIMIT ?) ready", (QUEUED, now, size),
    ).fetchone()
    missing = min(size, int(ready[0]) if ready else 0) - held
    tokens = tuple(uuid.uuid4().hex for _ in range(max(0, missing)))
    if tokens:
        cur.executemany("INSERT INTO dispatch_tokens (id, due_at) VALUES (?, ?)",
                        [(t, now) for t in tokens])
    return tokens


def _claim_row(cur: Cursor, job_id: str, seq: int, worker: str, lease_seconds: float,
               max_deliveries: int, now: float) -> tuple[Claim, int]:
    """Take the lease on one micro-batch; (the claim, whose micro-batch's items are still to be
    read, and its texts). It is DEAD once `max_deliveries` forwards were begun on it and never
    finished (its workers died in them): claiming alone counts nothing, since a worker claims
    ahead."""
    row = cur.execute(
        "SELECT mb.state, mb.lease_until, mb.claims, mb.deliveries, "
        "mb.finished_forwards, mb.rows, j.status, j.expired_at "
        "FROM micro_batches mb JOIN jobs j ON j.id = mb.job_id "
        "WHERE mb.job_id = ? AND mb.seq = ?",
        (job_id, seq),
    ).fetchone()
    if row is None:
        return Claim(ClaimOutcome.DONE), 0
    (state, lease_until, claims, deliveries, finished, texts, job_status, expired_at) = row
    if MicroBatchState(state).terminal:
        return Claim(ClaimOutcome.DONE), 0
    if state == RUNNING and lease_until and lease_until > now:
        return Claim(ClaimOutcome.BUSY), 0
    if expired_at is not None or job_status in (
        JobStatus.CANCELLING.value, JobStatus.CANCELLED.value, JobStatus.EXPIRED.value
    ):
        cur.execute(
            "UPDATE micro_batches SET state = ?, lease_until = NULL "
            "WHERE job_id = ? AND seq = ? AND state = ?",
            (MicroBatchState.SKIPPED.value, job_id, seq, state),
        )
        return Claim(ClaimOutcome.SKIP), 0
    cur.execute(
        "UPDATE micro_batches SET state = ?, lease_until = ?, worker = ?, claimed_at = ?, "
        "claims = claims + 1, not_before = NULL "
        "WHERE job_id = ? AND seq = ? AND state = ? AND claims = ?",
        (RUNNING, now + lease_seconds, worker, now, job_id, seq, state, claims),
    )
    if cur.rowcount != 1:
        return Claim(ClaimOutcome.BUSY), 0
    mb = MicroBatch(
        job_id=job_id, seq=seq, state=MicroBatchState.RUNNING, items=[],
        deliveries=deliveries, failed_deliveries=deliveries - finished,
        lease_until=now + lease_seconds,
    )
    dead = deliveries - finished >= max_deliveries
    return Claim(ClaimOutcome.DEAD if dead else ClaimOutcome.RUN, mb), int(texts)

