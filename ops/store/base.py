"""Store logic shared by SQLite and PostgreSQL: one set of SQL statements, two connection layers.

Every state change that must not be lost or doubled is one guarded UPDATE inside one
transaction: a micro-batch is claimed under a lease (see `ops.store.dispatch`; `deliveries`
counts the forwards begun on it, since Redis has no redelivered flag), completed at most once,
and the job's counters move only on that first completion.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from ops.store import migrations
from ops.store.canary import CanaryRecords
from ops.store.core import Cursor, Transactional, retried, storable
from ops.store.dispatch import DispatchRecords
from ops.store.features import Feature, FeatureRecords
from ops.store.gateway import GatewayRecords
from ops.store.retention import RetentionRecords
from ops.store.rows import FILE_COLUMNS, ITEMS, JOB_COLUMNS, file_from_row, job_from_row
from schemas.adapters import AdapterRecord
from schemas.batch import STATUS_TIMESTAMP, BatchErrors, FileObject, Job, JobStatus
from schemas.canary import Sample
from schemas.microbatch import Item, MicroBatch, MicroBatchState

log = logging.getLogger(__name__)

OPEN_STATES = (MicroBatchState.QUEUED.value, MicroBatchState.RUNNING.value)
# A job of this many micro-batches or more refreshes the planner's statistics once stored.
ANALYZE_AFTER_MICRO_BATCHES = 1000


@dataclasses.dataclass(frozen=True)
class Completion:
    first: bool  # this call completed it (a repeat moves nothing)
    job_done: bool  # every item of its job is now accounted for: time to finalize the job


class Store(CanaryRecords, DispatchRecords, FeatureRecords, GatewayRecords, RetentionRecords,
            Transactional):
    @retried
    def ping(self) -> None:
        with self.tx() as cur:
            cur.execute("SELECT 1")

    # -- schema --------------------------------------------------------------------------
    @abc.abstractmethod
    def _has_schema_table(self, cur: Cursor) -> bool:
        """Whether the `schema_version` table exists (an empty store has none)."""

    @abc.abstractmethod
    def _lock_schema(self, cur: Cursor) -> None:
        """Hold, until the transaction ends, the lock that serialises migrations."""

    def reclaim(self, tables: Sequence[str]) -> None:
        """Make the space of deleted and updated rows of `tables` reusable. Nothing to do by
        default: SQLite reuses freed pages by itself."""

    @retried
    def schema_version(self) -> int:
        with self.tx() as cur:
            return migrations.read_version(cur, self._has_schema_table(cur))

    def migrate(self, target: int | None = None) -> list[int]:
        """Apply every step up to `target` (default: the newest) that the store lacks, each in
        its own transaction; returns the versions this call applied."""
        applied = []
        for step in migrations.migrations():
            if target is not None and step.version > target:
                break
            if self._apply_step(step):
                applied.append(step.version)
        return applied

    @retried
    def _apply_step(self, step: migrations.Migration) -> bool:
        with self.tx() as cur:
            self._lock_schema(cur)
            if migrations.read_version(cur, self._has_schema_table(cur)) >= step.version:
                return False
            migrations.apply(cur, step)
        log.info("store migrated to schema version %d (%s)", step.version, step.name)
        return True

    def ensure_schema(self, migrate: bool) -> None:
        """At a process's start: migrate if allowed, else refuse a store whose version is not
        the one this code knows (`SchemaMismatch`, naming both versions)."""
        if migrate and self.schema_version() < migrations.latest():
            self.migrate()
        migrations.check(self.schema_version())

    # -- jobs ----------------------------------------------------------------------------
    @retried
    def create_job(self, job: Job) -> None:
        values = {
            "id": job.id, "tenant": job.tenant, "model": job.model, "endpoint": job.endpoint,
            "status": job.status.value, "input_file_id": job.input_file_id,
            "output_file_id": job.output_file_id, "error_file_id": job.error_file_id,
            "completion_window": job.completion_window, "created_at": job.created_at,
            "expires_at": job.expires_at,
            "metadata": json.dumps(job.metadata) if job.metadata is not None else None,
            "output_expires_after": job.output_expires_after, "priority": job.priority,
        }
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self.tx() as cur:
            cur.execute(f"INSERT INTO jobs ({cols}) VALUES ({marks}) ON CONFLICT (id) DO NOTHING",
                        list(values.values()))

    @retried
    def get_job(self, job_id: str, tenant: str | None = None) -> Job | None:
        if not storable(job_id):
            return None
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"
        params: list[Any] = [job_id]
        if tenant is not None:
            sql += " AND tenant = ?"
            params.append(tenant)
        with self.tx() as cur:
            row = cur.execute(sql, params).fetchone()
            if row is None:
                return None
            dead = cur.execute(
                "SELECT COUNT(*) FROM micro_batches WHERE job_id = ? AND state = ?",
                (job_id, MicroBatchState.DEAD.value),
            ).fetchone()
        return job_from_row(row, dead=dead[0] if dead else 0)

    @retried
    def job_counts(self) -> dict[str, int]:
        with self.tx() as cur:
            rows = cur.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {r[0]: int(r[1]) for r in rows}

    @retried
    def list_jobs(self, tenant: str | None, after: str | None = None,
                  limit: int = 20) -> list[Job]:
        """A tenant's jobs (every tenant's: None), newest first; `after` is the id of the last
        job of the previous page (cursor)."""
        if after is not None and not storable(after):
            return []
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE " + ("1 = 1" if tenant is None
                                                          else "tenant = ?")
        params: list[Any] = [] if tenant is None else [tenant]
        if after is not None:
            with self.tx() as cur:
                anchor = cur.execute(
                    "SELECT created_at FROM jobs WHERE id = ?", (after,)
                ).fetchone()
            if anchor is None:
                return []
            sql += " AND (created_at < ? OR (created_at = ? AND id < ?))"
            params += [anchor[0], anchor[0], after]
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        params.append(limit)
        with self.tx() as cur:
            return [job_from_row(r) for r in cur.execute(sql, params).fetchall()]

    @retried
    def fail_job(self, job_id: str, errors: BatchErrors) -> None:
        with self.tx() as cur:
            cur.execute(
                "UPDATE jobs SET status = ?, failed_at = ?, errors = ? WHERE id = ?",
                (JobStatus.FAILED.value, int(time.time()), errors.model_dump_json(), job_id),
            )

    @retried
    def start_job(self, job_id: str, batches: Sequence[MicroBatch], total: int) -> None:
        """Store every micro-batch and move the job to in_progress, in one transaction: a job
        is either fully enqueued in the store or not at all."""
        now = time.time()
        rows = [
            (job_id, mb.seq, MicroBatchState.QUEUED.value, _items_json(mb.items), mb.tokens,
             mb.rows, mb.real_tokens, mb.padded_tokens, now)
            for mb in batches
        ]
        with self.tx() as cur:
            cur.executemany(
                "INSERT INTO micro_batches (job_id, seq, state, items, tokens, rows, "
                "real_tokens, padded_tokens, enqueued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (job_id, seq) DO NOTHING",
                rows,
            )
            cur.execute(
                "UPDATE jobs SET status = ?, in_progress_at = ?, total = ?, micro_batches = ? "
                "WHERE id = ? AND status = ?",
                (JobStatus.IN_PROGRESS.value, int(now), total, len(rows), job_id,
                 JobStatus.VALIDATING.value),
            )
        if len(rows) >= ANALYZE_AFTER_MICRO_BATCHES:
            self.analyze_micro_batches()

    @retried
    def analyze_micro_batches(self) -> None:
        """Refresh the query planner's statistics of `micro_batches`. A job far larger than the
        ones the statistics last saw is planned for as if it were small: PostgreSQL then read
        a job's first ready micro-batch by scanning its whole queue (a claim of 32 held the
        dispatch lock 66 ms instead of 5 with 26,000 queued), until autovacuum's next ANALYZE
        (a minute or more)."""
        with self.tx() as cur:
            cur.execute("ANALYZE micro_batches")

    @retried
    def set_status(self, job_id: str, status: JobStatus, *, only_from: Sequence[JobStatus],
                   **columns: Any) -> bool:
        """Move a job to `status` if it is in one of `only_from`; True if this call moved it."""
        assignments = {"status": status.value, **columns}
        if status in STATUS_TIMESTAMP:
            assignments[STATUS_TIMESTAMP[status]] = int(time.time())
        sets = ", ".join(f"{k} = ?" for k in assignments)
        marks = ", ".join("?" for _ in only_from)
        with self.tx() as cur:
            cur.execute(
                f"UPDATE jobs SET {sets} WHERE id = ? AND status IN ({marks})",
                [*assignments.values(), job_id, *(s.value for s in only_from)],
            )
            moved = cur.rowcount == 1
            if moved and status.terminal:
                self.settle_features(cur, job_id, completed=status == JobStatus.COMPLETED)
            return moved

    @retried
    def cancel_job(self, job_id: str) -> bool:
        """Mark a running job cancelling and skip its queued micro-batches, in one transaction;
        running ones finish."""
        with self.tx() as cur:
            cur.execute(
                "UPDATE jobs SET status = ?, cancelling_at = ? WHERE id = ? AND status IN (?, ?)",
                (JobStatus.CANCELLING.value, int(time.time()), job_id,
                 JobStatus.VALIDATING.value, JobStatus.IN_PROGRESS.value),
            )
            if cur.rowcount != 1:
                return False
            _skip_queued(cur, job_id)
        return True

    @retried
    def open_micro_batches(self, job_id: str) -> int:
        marks = ", ".join("?" for _ in OPEN_STATES)
        with self.tx() as cur:
            row = cur.execute(
                f"SELECT COUNT(*) FROM micro_batches WHERE job_id = ? AND state IN ({marks})",
                (job_id, *OPEN_STATES),
            ).fetchone()
        return int(row[0]) if row else 0

    @retried
    def finished_shards(self, job_id: str) -> list[tuple[int, int, int]]:
        """(seq, lines in its output shard, lines in its error shard) of every finished
        micro-batch, in order."""
        with self.tx() as cur:
            rows = cur.execute(
                "SELECT seq, n_ok, n_err FROM micro_batches WHERE job_id = ? AND state IN (?, ?) "
                "ORDER BY seq",
                (job_id, MicroBatchState.DONE.value, MicroBatchState.DEAD.value),
            ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    @retried
    def expire(self, job_id: str) -> bool:
        """Stamp a job past its completion window and skip its queued micro-batches; the ones
        running finish, and finalisation then ends the job `expired` with what was done."""
        with self.tx() as cur:
            cur.execute(
                "UPDATE jobs SET expired_at = ? WHERE id = ? AND status = ? "
                "AND expired_at IS NULL",
                (int(time.time()), job_id, JobStatus.IN_PROGRESS.value),
            )
            if cur.rowcount != 1:
                return False
            _skip_queued(cur, job_id)
        return True

    @retried
    def overdue_jobs(self, now: float) -> list[str]:
        """Ids of in-progress jobs past their completion window, not yet expired."""
        with self.tx() as cur:
            rows = cur.execute(
                "SELECT id FROM jobs WHERE status = ? AND expires_at < ? AND expired_at IS NULL",
                (JobStatus.IN_PROGRESS.value, now),
            ).fetchall()
        return [r[0] for r in rows]

    @retried
    def finishable_jobs(self, statuses: Sequence[JobStatus]) -> list[str]:
        """Ids of jobs in `statuses` with no micro-batch left queued or running."""
        marks = ", ".join("?" for _ in statuses)
        open_marks = ", ".join("?" for _ in OPEN_STATES)
        with self.tx() as cur:
            rows = cur.execute(
                f"SELECT id FROM jobs j WHERE status IN ({marks}) AND NOT EXISTS ("
                f"SELECT 1 FROM micro_batches mb WHERE mb.job_id = j.id "
                f"AND mb.state IN ({open_marks}))",
                [*(s.value for s in statuses), *OPEN_STATES],
            ).fetchall()
        return [r[0] for r in rows]

    # -- micro-batches -------------------------------------------------------------------
    @retried
    def begin_forward(self, job_id: str, seq: int, worker: str,
                      finished: tuple[str, int] | None = None, clock: float = 0.0) -> bool:
        """Count a forward begun on a micro-batch this worker holds (False: it lost the lease,
        so it must not run), and in the same transaction the end of the forward before it
        (`finished`), which ran to its end: a crash from here on is not that one's doing.
        `clock`: the virtual time it was dispatched at (`Claim.rank`), which the dispatch
        clock moves up to."""
        with self.tx() as cur:
            if finished is not None:
                cur.execute(
                    "UPDATE micro_batches SET finished_forwards = finished_forwards + 1 "
                    "WHERE job_id = ? AND seq = ? AND worker = ? "
                    "AND finished_forwards < deliveries",
                    (*finished, worker),
                )
            cur.execute(
                "UPDATE micro_batches SET deliveries = deliveries + 1 "
                "WHERE job_id = ? AND seq = ? AND state = ? AND worker = ?",
                (job_id, seq, MicroBatchState.RUNNING.value, worker),
            )
            if cur.rowcount != 1:
                return False
            cur.execute("UPDATE dispatch SET value = ? WHERE name = 'clock' AND value < ?",
                        (clock, clock))
            return True

    @retried
    def renew_lease(self, job_id: str, seq: int, worker: str, lease_seconds: float) -> bool:
        with self.tx() as cur:
            cur.execute(
                "UPDATE micro_batches SET lease_until = ? "
                "WHERE job_id = ? AND seq = ? AND state = ? AND worker = ?",
                (time.time() + lease_seconds, job_id, seq, MicroBatchState.RUNNING.value, worker),
            )
            return cur.rowcount == 1

    @retried
    def complete(self, job_id: str, seq: int, n_ok: int, n_err: int, *,
                 dead: bool = False, error: str | None = None,
                 samples: Sequence[Sample] = (), features: Sequence[Feature] = ()
                 ) -> Completion:
        """Record a micro-batch's results once, with its canary samples and drift features in
        the same transaction. A repeated completion (`first` False) never moves the job's
        counters, nor adds samples, twice. `job_done` spares the caller a look at the job
        after every micro-batch but its last."""
        state = MicroBatchState.DEAD if dead else MicroBatchState.DONE
        marks = ", ".join("?" for _ in OPEN_STATES)
        with self.tx() as cur:
            # The items (texts, token lengths, routing) are in the shards now: a finished
            # micro-batch row keeps a few numbers, not its whole input.
            cur.execute(
                f"UPDATE micro_batches SET state = ?, n_ok = ?, n_err = ?, lease_until = NULL, "
                f"items = '[]', tokens = NULL, completed_at = ?, "
                f"last_error = COALESCE(?, last_error) "
                f"WHERE job_id = ? AND seq = ? AND state IN ({marks})",
                (state.value, n_ok, n_err, time.time(), error, job_id, seq, *OPEN_STATES),
            )
            if cur.rowcount != 1:
                return Completion(first=False, job_done=False)
            counts = cur.execute(
                "UPDATE jobs SET completed = completed + ?, failed = failed + ? WHERE id = ? "
                "RETURNING completed + failed, total",
                (n_ok, n_err, job_id),
            ).fetchone()
            self._insert_samples(cur, samples)
            self._insert_features(cur, features)
        return Completion(first=True, job_done=counts is not None and counts[0] >= counts[1])

    @retried
    def end_dead_leases(self, dead_after: float) -> int:
        """End the lease of every running micro-batch whose holder is dead: no heartbeat for
        `dead_after` seconds, or no row at all (forgotten as dead by a worker of its host). A
        killed worker's work then comes back at the next reconcile instead of when its lease
        would have run out; a slow worker that still heartbeats keeps its lease."""
        now = time.time()
        with self.tx() as cur:
            cur.execute(
                "UPDATE micro_batches SET lease_until = ? WHERE state = ? AND lease_until > ? "
                "AND NOT EXISTS (SELECT 1 FROM workers w WHERE w.name = micro_batches.worker "
                "AND w.last_seen > ?)",
                (now, MicroBatchState.RUNNING.value, now, now - dead_after),
            )
            return cur.rowcount

    @retried
    def micro_batch_summary(self, job_id: str) -> dict[str, int]:
        with self.tx() as cur:
            rows = cur.execute(
                "SELECT state, COUNT(*) FROM micro_batches WHERE job_id = ? GROUP BY state",
                (job_id,),
            ).fetchall()
        return {state: count for state, count in rows}

    @retried
    def padding(self, job_id: str) -> tuple[int, int]:
        """(real tokens, padded tokens) over a job's micro-batches."""
        with self.tx() as cur:
            row = cur.execute(
                "SELECT COALESCE(SUM(real_tokens), 0), COALESCE(SUM(padded_tokens), 0) "
                "FROM micro_batches WHERE job_id = ?",
                (job_id,),
            ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    # -- files ---------------------------------------------------------------------------
    @retried
    def add_file(self, obj: FileObject, blob_key: str) -> None:
        with self.tx() as cur:
            cur.execute(
                f"INSERT INTO files ({FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING",
                (obj.id, obj.tenant, obj.purpose, obj.filename, obj.bytes, obj.created_at,
                 obj.expires_at, blob_key),
            )

    @retried
    def get_file(self, file_id: str, tenant: str | None = None) -> tuple[FileObject, str] | None:
        """A file that has not expired (an expired one is gone for its users at once, before
        `retention.run` removes it), with the blob key of its bytes."""
        if not storable(file_id):
            return None
        sql = (f"SELECT {FILE_COLUMNS} FROM files WHERE id = ? "
               "AND (expires_at IS NULL OR expires_at > ?)")
        params: list[Any] = [file_id, int(time.time())]
        if tenant is not None:
            sql += " AND tenant = ?"
            params.append(tenant)
        with self.tx() as cur:
            row = cur.execute(sql, params).fetchone()
        return file_from_row(row) if row else None

    # -- adapters ------------------------------------------------------------------------
    @retried
    def add_adapter(self, record: AdapterRecord) -> None:
        fields = list(AdapterRecord.model_fields)
        with self.tx() as cur:
            cur.execute(
                f"INSERT INTO adapters ({', '.join(fields)}) "
                f"VALUES ({', '.join('?' for _ in fields)}) ON CONFLICT (name) DO NOTHING",
                [getattr(record, f) for f in fields],
            )

    @retried
    def get_adapter(self, name: str) -> AdapterRecord | None:
        found = self.list_adapters(name)
        return found[0] if found else None

    @retried
    def list_adapters(self, name: str | None = None) -> list[AdapterRecord]:
        fields = list(AdapterRecord.model_fields)
        sql = f"SELECT {', '.join(fields)} FROM adapters"
        with self.tx() as cur:
            if name is None:
                rows = cur.execute(sql + " ORDER BY name").fetchall()
            else:
                rows = cur.execute(sql + " WHERE name = ?", (name,)).fetchall()
        return [AdapterRecord(**dict(zip(fields, r, strict=True))) for r in rows]

    # -- workers -------------------------------------------------------------------------
    @retried
    def heartbeat(self, name: str, pid: int, queues: str, device: str,
                  online_rps: float | None = None) -> None:
        """Record the worker as alive now; `online_rps`: the rate it answers online requests
        at while busy (None: not measured yet)."""
        now = time.time()
        with self.tx() as cur:
            cur.execute(
                "INSERT INTO workers (name, pid, queues, device, started_at, last_seen, "
                "online_rps) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "pid = excluded.pid, queues = excluded.queues, device = excluded.device, "
                "last_seen = excluded.last_seen, online_rps = excluded.online_rps",
                (name, pid, queues, device, now, now, online_rps),
            )

    @retried
    def forget_worker(self, name: str) -> None:
        with self.tx() as cur:
            cur.execute("DELETE FROM workers WHERE name = ?", (name,))

    @retried
    def live_workers(self, within_seconds: float | None) -> list[dict[str, Any]]:
        """Workers seen in the last `within_seconds`; every recorded worker when None."""
        since = -1.0 if within_seconds is None else time.time() - within_seconds
        with self.tx() as cur:
            rows = cur.execute(
                "SELECT name, pid, queues, device, last_seen, online_rps FROM workers "
                "WHERE last_seen > ? ORDER BY name",
                (since,),
            ).fetchall()
        keys = ("name", "pid", "queues", "device", "last_seen", "online_rps")
        return [dict(zip(keys, r, strict=True)) for r in rows]


def _skip_queued(cur: Cursor, job_id: str) -> None:
    """Mark a job's queued micro-batches skipped (cancelled or expired); running ones finish."""
    cur.execute(
        "UPDATE micro_batches SET state = ? WHERE job_id = ? AND state = ?",
        (MicroBatchState.SKIPPED.value, job_id, MicroBatchState.QUEUED.value),
    )


def _items_json(items: Sequence[Item]) -> str:
    return ITEMS.dump_json(list(items), exclude_none=True).decode()
