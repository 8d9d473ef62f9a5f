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
serialised and the tenants' virtual times never lose an update. A message may claim several
micro-batches at once (`count`): the order of all of them is planned in memory from one read
of the ready jobs and they are claimed with one statement per job, so a turn holds the lock
for a few round trips: one per job it claims from, and one more for each job it picks again
before it knows that job's next micro-batches. The clock a tenant with new work starts from
is the virtual time of the last forward begun (`begin_forward` moves it), not of the last
claim: a worker claims ahead of its forwards, and new work is placed among what is still
waiting, as if nothing had been claimed ahead.
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
IN_PROGRESS = JobStatus.IN_PROGRESS.value


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


@dataclasses.dataclass(frozen=True)
class Claims:
    """What one dispatch message did: the micro-batches it claimed (each RUN or DEAD, in
    dispatch order), and the messages to send that refill the window behind it."""

    outcome: ClaimOutcome  # RUN if it claimed any; else IDLE, STALE or DONE
    claims: tuple[Claim, ...] = ()
    tokens: tuple[str, ...] = ()
    # Seconds the dispatch lock was held, from taking it to the commit (claims are serial, so
    # this bounds how many a store serves: `bem_dispatch_lock_seconds`), and seconds the claim
    # waited for it behind other workers' claims before that.
    locked_seconds: float = 0.0
    lock_wait_seconds: float = 0.0


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
        return self._with_items((self._claim_named(job_id, seq, worker, lease_seconds,
                                                   max_deliveries),))[0]

    def claim_next(self, token: str, worker: str, lease_seconds: float, max_deliveries: int,
                   order: DispatchOrder, window: Window, count: int = 1) -> Claims:
        """Use dispatch message `token`: claim the (up to) `count` micro-batches that go next
        (each RUN or DEAD), or find none ready (IDLE), or none to use (STALE); the window is
        refilled in the same transaction.

        The claim itself holds the dispatch lock, which serialises every worker's claims, so
        it reads no more than it decides by: the micro-batches' items and token ids (tens of
        kilobytes each, decoded into objects) are read after it commits, with the leases
        already this worker's. That read is its own retried step, so a retry never repeats
        the claim."""
        if count < 1:
            raise ValueError(f"count: must be at least 1, got {count}")
        got = self._claim_next(token, worker, lease_seconds, max_deliveries, order, window,
                               count)
        if not got.claims:
            return got
        filled = tuple(c for c in self._with_items(got.claims) if c.micro_batch is not None)
        return dataclasses.replace(got, claims=filled,
                                   outcome=ClaimOutcome.RUN if filled else ClaimOutcome.DONE)

    @retried
    def _claim_named(self, job_id: str, seq: int, worker: str, lease_seconds: float,
                     max_deliveries: int) -> Claim:
        with self.tx() as cur:
            return _claim_row(cur, job_id, seq, worker, lease_seconds, max_deliveries,
                              time.time())

    @retried
    def _with_items(self, claims: tuple[Claim, ...]) -> tuple[Claim, ...]:
        """The claims with their micro-batches' items and token ids, read from the store; one
        finished meanwhile (by a holder that lost its lease) comes back DONE, with none."""
        out = []
        with self.tx() as cur:
            for got in claims:
                mb = got.micro_batch
                if mb is None:
                    out.append(got)
                    continue
                row = cur.execute("SELECT items, tokens FROM micro_batches WHERE job_id = ? "
                                  "AND seq = ?", (mb.job_id, mb.seq)).fetchone()
                if row is None or row[0] == "[]":
                    out.append(Claim(ClaimOutcome.DONE))
                    continue
                filled = mb.model_copy(update={
                    "items": ITEMS.validate_json(row[0]),
                    "tokens": None if row[1] is None else bytes(row[1])})
                out.append(dataclasses.replace(got, micro_batch=filled))
        return tuple(out)

    @retried
    def _claim_next(self, token: str, worker: str, lease_seconds: float, max_deliveries: int,
                    order: DispatchOrder, window: Window, count: int) -> Claims:
        now = time.time()
        with self.tx() as cur:
            asked = time.perf_counter()
            turn = _lock(cur, window, now)
            locked = time.perf_counter()
            cur.execute("DELETE FROM dispatch_tokens WHERE id = ?", (token,))
            if cur.rowcount != 1:
                got = Claims(ClaimOutcome.STALE)
            else:
                turn.held -= 1
                claims = _claim_chosen(cur, worker, lease_seconds, max_deliveries, order,
                                       turn, now, count)
                got = Claims(ClaimOutcome.RUN, claims, _refill(cur, turn, now)) if claims \
                    else Claims(ClaimOutcome.IDLE)
        return dataclasses.replace(got, locked_seconds=time.perf_counter() - locked,
                                   lock_wait_seconds=locked - asked)

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


def _claim_chosen(cur: Cursor, worker: str, lease_seconds: float, max_deliveries: int,
                  order: DispatchOrder, turn: _Turn, now: float, count: int) -> tuple[Claim, ...]:
    """Claim up to `count` micro-batches in dispatch order, planned in memory from one read of
    the ready jobs and claimed with one statement per job: after each pick its tenant's
    virtual time and its job's last dispatch move on (stamps a microsecond apart, so a
    tenant's jobs still take turns) as the next claim's would have seen them in the store. The
    moved standings are written once. A job picked again reads its next ready micro-batches,
    as many as the turn may still claim, in one query."""
    # Each in-progress job with a micro-batch ready: when it was queued (its first
    # micro-batch's stamp, finer than the job's whole seconds), the standing of the job and its
    # tenant, and its first ready micro-batch with its texts.
    rows = cur.execute(
        "SELECT ready.*, (SELECT rows FROM micro_batches WHERE job_id = ready.id AND seq = "
        "ready.first) FROM (SELECT j.id, j.tenant, j.priority, COALESCE((SELECT enqueued_at "
        "FROM micro_batches WHERE job_id = j.id AND seq = 0), j.created_at), "
        "j.dispatched_at, "
        "COALESCE(s.pass, 0), COALESCE(t.weight, 1), (SELECT MIN(mb.seq) FROM micro_batches "
        "mb WHERE mb.job_id = j.id AND mb.state = ? AND (mb.not_before IS NULL OR "
        "mb.not_before <= ?)) AS first FROM jobs j "
        "LEFT JOIN dispatch_shares s ON s.tenant = j.tenant "
        "LEFT JOIN tenants t ON t.tenant = j.tenant "
        "WHERE j.status = ? AND j.expired_at IS NULL) ready WHERE first IS NOT NULL",
        (QUEUED, now, IN_PROGRESS),
    ).fetchall()
    ready = {r[0]: Candidate(r[0], r[1], r[2], r[3], r[4]) for r in rows}
    tenants = {r[0]: r[1] for r in rows}
    passes = {r[1]: float(r[5]) for r in rows}
    weights = {r[1]: float(r[6]) for r in rows}
    # Each job's next ready micro-batches (seq, texts) known to this turn, in order, and the
    # last of it this turn planned.
    upcoming = {r[0]: [(int(r[7]), int(r[8]))] for r in rows}
    last: dict[str, int] = {}
    plan: list[tuple[str, int, int, float]] = []  # (job, seq, texts, the tenant's start)
    served: dict[str, float] = {}
    while len(plan) < count and ready:
        chosen = choose(list(ready.values()), order, turn.clock, passes)
        assert chosen is not None
        job_id = chosen.job_id
        if not upcoming[job_id]:
            upcoming[job_id] = _next_ready(cur, job_id, last[job_id] + 1, count - len(plan),
                                           now)
        if not upcoming[job_id]:  # none of it ready any more
            del ready[job_id]
            continue
        seq, texts = upcoming[job_id].pop(0)
        last[job_id] = seq
        plan.append((job_id, seq, texts, chosen.start))
        passes[chosen.tenant] = charge(chosen.start, texts, weights[chosen.tenant])
        served[job_id] = now + (len(plan) - 1) * 1e-6
        ready[job_id] = dataclasses.replace(ready[job_id], dispatched_at=served[job_id])
    if not plan:
        return ()
    leased = _claim_planned(cur, [(job_id, seq) for job_id, seq, _, _ in plan], worker,
                            lease_seconds, now)
    # Only what was taken is charged. A pick taken meanwhile (a by-name claim, a cancel or an
    # expiry that committed after the read) is passed over; the tenant's later picks in this
    # turn started from its charge, a rare overcharge of one micro-batch's texts.
    claims: list[Claim] = []
    charged: dict[str, float] = {}
    for job_id, seq, texts, start in plan:
        if (job_id, seq) not in leased:
            continue
        deliveries, finished = leased[job_id, seq]
        claim = _leased(job_id, seq, deliveries, finished, now + lease_seconds, max_deliveries)
        charged[tenants[job_id]] = charge(start, texts, weights[tenants[job_id]])
        claims.append(dataclasses.replace(claim, rank=(start, turn.count)))
    if claims:
        cur.executemany(
            "INSERT INTO dispatch_shares (tenant, pass) VALUES (?, ?) "
            "ON CONFLICT (tenant) DO UPDATE SET pass = excluded.pass",
            sorted(charged.items()),
        )
        claimed_jobs = {c.micro_batch.job_id for c in claims}  # type: ignore[union-attr]
        cur.executemany("UPDATE jobs SET dispatched_at = ? WHERE id = ?",
                        [(stamp, job_id) for job_id, stamp in sorted(served.items())
                         if job_id in claimed_jobs])
    return tuple(claims)


def _next_ready(cur: Cursor, job_id: str, start: int, limit: int, now: float
                ) -> list[tuple[int, int]]:
    """A job's next `limit` ready micro-batches from `start` on: (seq, texts) in order. The
    scan starts past what this turn planned: from the start it would pass every micro-batch
    claimed before, whose entries stay in the queued index until vacuum."""
    return [(int(seq), int(texts)) for seq, texts in cur.execute(
        "SELECT seq, rows FROM micro_batches WHERE job_id = ? AND state = ? AND seq >= ? "
        "AND (not_before IS NULL OR not_before <= ?) ORDER BY seq LIMIT ?",
        (job_id, QUEUED, start, now, limit)).fetchall()]


def _claim_planned(cur: Cursor, picks: list[tuple[str, int]], worker: str, lease_seconds: float,
                   now: float) -> dict[tuple[str, int], tuple[int, int]]:
    """Take the leases on the planned micro-batches, one guarded statement per job: each still
    queued and ready, its job still in progress; (job, seq) → (deliveries, finished forwards)
    of those taken. A job's picks are also bounded by their lowest and highest seq, a range
    PostgreSQL scans its index by even on stale statistics: on a freshly filled table one
    statement for several jobs, or a `(job_id, seq) IN (VALUES ...)` list, was planned as a
    scan of the jobs' whole queues (4.8 and 25 ms for eight micro-batches of two jobs), these
    took 0.3 ms each."""
    by_job: dict[str, list[int]] = {}
    for job_id, seq in picks:
        by_job.setdefault(job_id, []).append(seq)
    taken: dict[tuple[str, int], tuple[int, int]] = {}
    for job_id, seqs in by_job.items():
        got = cur.execute(
            "UPDATE micro_batches SET state = ?, lease_until = ?, worker = ?, claimed_at = ?, "
            "claims = claims + 1, not_before = NULL WHERE job_id = ? AND seq BETWEEN ? AND ? "
            f"AND seq IN ({', '.join(['?'] * len(seqs))}) AND state = ? "
            "AND (not_before IS NULL OR not_before <= ?) "
            "AND EXISTS (SELECT 1 FROM jobs WHERE id = ? AND status = ? AND expired_at IS NULL) "
            "RETURNING seq, deliveries, finished_forwards",
            (RUNNING, now + lease_seconds, worker, now, job_id, min(seqs), max(seqs), *seqs,
             QUEUED, now, job_id, IN_PROGRESS),
        ).fetchall()
        taken |= {(job_id, int(seq)): (int(d), int(f)) for seq, d, f in got}
    return taken


def _leased(job_id: str, seq: int, deliveries: int, finished: int, lease_until: float,
            max_deliveries: int) -> Claim:
    """A micro-batch this worker now holds, its items still to be read. It is DEAD once
    `max_deliveries` forwards were begun on it and never finished (its workers died in them):
    claiming alone counts nothing, since a worker claims ahead."""
    mb = MicroBatch(
        job_id=job_id, seq=seq, state=MicroBatchState.RUNNING, items=[],
        deliveries=deliveries, failed_deliveries=deliveries - finished,
        lease_until=lease_until,
    )
    dead = deliveries - finished >= max_deliveries
    return Claim(ClaimOutcome.DEAD if dead else ClaimOutcome.RUN, mb)


def _claim_row(cur: Cursor, job_id: str, seq: int, worker: str, lease_seconds: float,
               max_deliveries: int, now: float) -> Claim:
    """Take the lease on one named micro-batch (its items are still to be read)."""
    row = cur.execute(
        "SELECT mb.state, mb.lease_until, mb.claims, mb.deliveries, "
        "mb.finished_forwards, j.status, j.expired_at "
        "FROM micro_batches mb JOIN jobs j ON j.id = mb.job_id "
        "WHERE mb.job_id = ? AND mb.seq = ?",
        (job_id, seq),
    ).fetchone()
    if row is None:
        return Claim(ClaimOutcome.DONE)
    (state, lease_until, claims, deliveries, finished, job_status, expired_at) = row
    if MicroBatchState(state).terminal:
        return Claim(ClaimOutcome.DONE)
    if state == RUNNING and lease_until and lease_until > now:
        return Claim(ClaimOutcome.BUSY)
    if expired_at is not None or job_status in (
        JobStatus.CANCELLING.value, JobStatus.CANCELLED.value, JobStatus.EXPIRED.value
    ):
        cur.execute(
            "UPDATE micro_batches SET state = ?, lease_until = NULL "
            "WHERE job_id = ? AND seq = ? AND state = ?",
            (MicroBatchState.SKIPPED.value, job_id, seq, state),
        )
        return Claim(ClaimOutcome.SKIP)
    cur.execute(
        "UPDATE micro_batches SET state = ?, lease_until = ?, worker = ?, claimed_at = ?, "
        "claims = claims + 1, not_before = NULL "
        "WHERE job_id = ? AND seq = ? AND state = ? AND claims = ?",
        (RUNNING, now + lease_seconds, worker, now, job_id, seq, state, claims),
    )
    if cur.rowcount != 1:
        return Claim(ClaimOutcome.BUSY)
    return _leased(job_id, seq, deliveries, finished, now + lease_seconds, max_deliveries)

