"""Drift rows: feature samples that workers write with each completed micro-batch, the pinned
reference copy per model, and the reports `drift.check` stores.

A row counts in a window from `ready_at`, the time its job completed, never while the job runs:
a job's micro-batches run in length order, so the part of it done so far is a length-sorted
sample, unlike the job. Rows of a job that ends otherwise (cancelled, expired, failed) are
deleted with it (`settle_features`).

A window is read as a weighted reservoir sample (Efraimidis–Spirakis A-Res): each row gets the
key u^(1/weight) when written, and the rows with the largest keys in any window are a weighted
random sample of that window's rows, whatever its size and however many workers wrote it. A row's
weight is how many outputs (or sequences) it stands for, so every one has the same chance of
being read, in a batch of 4 short texts or of 256.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Sequence
from typing import Any

import orjson

from ops.store.core import Cursor, Transactional, retried


@dataclasses.dataclass(frozen=True)
class Feature:
    """One micro-batch's sample of one kind: "lengths" (token counts), "embeddings" (a few
    output vectors) or "experts" (top-1 expert counts of one adapter, summed over sites)."""

    model: str
    kind: str
    data: Any
    adapter: str = ""  # the adapter that served the sampled outputs ("" = the base model)
    weight: float = 1.0  # how many outputs (or sequences) the row stands for, or in proportion
    job_id: str | None = None  # None: counts in a window at once

    def sample_key(self) -> float:
        return random.random() ** (1.0 / self.weight)


class FeatureRecords(Transactional):
    @staticmethod
    def _insert_features(cur: Cursor, features: Sequence[Feature]) -> None:
        if not features:
            return
        now = time.time()
        cur.executemany(
            "INSERT INTO features (at, model, kind, adapter, reference, sample_key, data, "
            "job_id, ready_at) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?)",
            [(now, f.model, f.kind, f.adapter, f.sample_key(), orjson.dumps(f.data).decode(),
              f.job_id, None if f.job_id else now) for f in features],
        )

    @staticmethod
    def settle_features(cur: Cursor, job_id: str, completed: bool) -> None:
        """A job has ended: its rows count in windows from now if it completed, else they go
        (a part of a job is not a sample of it)."""
        if completed:
            cur.execute("UPDATE features SET ready_at = ? WHERE job_id = ? AND ready_at IS NULL",
                        (time.time(), job_id))
        else:
            cur.execute("DELETE FROM features WHERE job_id = ? AND reference = 0", (job_id,))

    @retried
    def features(self, model: str, kind: str, *, reference: bool, since: float = 0.0,
                 limit: int = 5000) -> list[tuple[str, Any]]:
        """(adapter, data) of a kind's samples ready since `since`, live or reference: all of
        them, or a weighted random `limit` of them (the largest sample keys)."""
        with self.tx() as cur:
            rows = cur.execute(
                "SELECT adapter, data FROM features WHERE model = ? AND kind = ? AND "
                "reference = ? AND ready_at >= ? ORDER BY sample_key DESC LIMIT ?",
                (model, kind, int(reference), since, limit),
            ).fetchall()
        return [(r[0], json.loads(r[1])) for r in rows]

    @retried
    def first_ready(self, model: str, since: float = 0.0) -> float | None:
        """When the model's first live sample ready since `since` became ready, if any."""
        with self.tx() as cur:
            row = cur.execute(
                "SELECT MIN(ready_at) FROM features WHERE model = ? AND reference = 0 AND "
                "ready_at >= ?", (model, since),
            ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    @retried
    def pin_reference(self, model: str, since: float, reason: str) -> int:
        """Copy the live samples ready since `since` as the model's reference window, replacing
        the previous one; returns the number of samples pinned."""
        now = time.time()
        with self.tx() as cur:
            cur.execute("DELETE FROM features WHERE model = ? AND reference = 1", (model,))
            cur.execute(
                "INSERT INTO features (at, model, kind, adapter, reference, sample_key, data, "
                "job_id, ready_at) SELECT at, model, kind, adapter, 1, sample_key, data, job_id, "
                "ready_at FROM features WHERE model = ? AND reference = 0 AND ready_at >= ?",
                (model, since),
            )
            pinned = cur.rowcount
            cur.execute(
                "INSERT INTO drift_baselines (model, pinned_at, pending_since, reason) "
                "VALUES (?, ?, NULL, ?) ON CONFLICT (model) DO UPDATE SET "
                "pinned_at = excluded.pinned_at, pending_since = NULL, reason = excluded.reason",
                (model, now, reason),
            )
        return pinned

    @retried
    def pin_reference_later(self, model: str, since: float, reason: str) -> None:
        """Ask `drift.check` to pin the first full window after `since` (a version went live
        and has no samples of its own yet)."""
        with self.tx() as cur:
            cur.execute(
                "INSERT INTO drift_baselines (model, pinned_at, pending_since, reason) "
                "VALUES (?, NULL, ?, ?) ON CONFLICT (model) DO UPDATE SET "
                "pending_since = excluded.pending_since, reason = excluded.reason",
                (model, since, reason),
            )

    @retried
    def baseline(self, model: str) -> tuple[float | None, float | None, str] | None:
        """(pinned_at, pending_since, reason) of the model's reference, if any."""
        with self.tx() as cur:
            row = cur.execute(
                "SELECT pinned_at, pending_since, reason FROM drift_baselines WHERE model = ?",
                (model,),
            ).fetchone()
        return (row[0], row[1], row[2]) if row else None

    @retried
    def prune_features(self, before: float) -> int:
        """Drop live samples ready before `before` (reference copies, and rows of jobs still
        running, stay; retention removes those of a job that never ends)."""
        with self.tx() as cur:
            cur.execute("DELETE FROM features WHERE reference = 0 AND ready_at < ?", (before,))
            return cur.rowcount

    @retried
    def add_drift_report(self, report_id: str, at: float, model: str, alerts: int,
                         severe: bool, report: dict[str, Any]) -> None:
        with self.tx() as cur:
            cur.execute(
                "INSERT INTO drift_reports (id, at, model, alerts, severe, report) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (report_id, at, model, alerts, int(severe), json.dumps(report, default=float)),
            )

    @retried
    def drift_reports(self, model: str, limit: int = 1) -> list[dict[str, Any]]:
        """Newest first."""
        with self.tx() as cur:
            rows = cur.execute(
                "SELECT report FROM drift_reports WHERE model = ? ORDER BY at DESC LIMIT ?",
                (model, limit),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]
