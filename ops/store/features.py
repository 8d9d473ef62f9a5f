"""Drift rows: feature samples that workers write with each completed micro-batch, the pinned
reference copy per model, and the reports `drift.check` stores.

A window is read as a weighted reservoir sample (Efraimidis–Spirakis A-Res): each row gets the
key u^(1/weight) when written, and the rows with the largest keys in any window are a weighted
random sample of that window's rows, whatever its size and however many workers wrote it. A row
that samples k of a micro-batch's n outputs has weight n/k, so every output has the same chance
of being read, in a batch of 4 short texts or of 256.
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
    adapter: str = ""
    weight: float = 1.0  # how many items each sampled one stands for

    def sample_key(self) -> float:
        return random.random() ** (1.0 / self.weight)


class FeatureRecords(Transactional):
    @staticmethod
    def _insert_features(cur: Cursor, features: Sequence[Feature]) -> None:
        if not features:
            return
        now = time.time()
        cur.executemany(
            "INSERT INTO features (at, model, kind, adapter, reference, sample_key, data) "
            "VALUES (?, ?, ?, ?, 0, ?, ?)",
            [(now, f.model, f.kind, f.adapter, f.sample_key(),
              orjson.dumps(f.data).decode()) for f in features],
        )

    @retried
    def features(self, model: str, kind: str, *, reference: bool, since: float = 0.0,
                 limit: int = 5000) -> list[tuple[str, Any]]:
        """(adapter, data) of a kind's samples since `since`, live or reference: all of them,
        or a weighted random `limit` of them (the largest sample keys)."""
        with self.tx() as cur:
            rows = cur.execute(
                "SELECT adapter, data FROM features WHERE model = ? AND kind = ? AND "
                "reference = ? AND at >= ? ORDER BY sample_key DESC LIMIT ?",
                (model, kind, int(reference), since, limit),
            ).fetchall()
        return [(r[0], json.loads(r[1])) for r in rows]

    @retried
    def pin_reference(self, model: str, since: float, reason: str) -> int:
        """Copy the live samples taken since `since` as the model's reference window, replacing
        the previous one; returns the number of samples pinned."""
        now = time.time()
        with self.tx() as cur:
            cur.execute("DELETE FROM features WHERE model = ? AND reference = 1", (model,))
            cur.execute(
                "INSERT INTO features (at, model, kind, adapter, reference, sample_key, data) "
                "SELECT at, model, kind, adapter, 1, sample_key, data FROM features "
                "WHERE model = ? AND reference = 0 AND at >= ?",
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
        """Drop live samples older than `before` (reference copies stay)."""
        with self.tx() as cur:
            cur.execute("DELETE FROM features WHERE reference = 0 AND at < ?", (before,))
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
