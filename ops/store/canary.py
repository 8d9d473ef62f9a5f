"""Canary rows: the rollout itself, its decisions, and the per-item samples its gates read."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from ops.store.core import Cursor, Transactional, retried
from schemas.canary import Arm, Canary, CanaryState, Decision, DecisionRecord, Sample

CANARY_COLUMNS = ("id", "model", "stable", "canary", "steps", "step", "weight", "state",
                  "min_samples", "started_at", "step_started_at", "ended_at", "reason")
_SELECT = f"SELECT {', '.join(CANARY_COLUMNS)} FROM canaries"
_ROUTING = (CanaryState.RUNNING.value, CanaryState.PAUSED.value, CanaryState.PROMOTED.value)


class CanaryConflict(ValueError):
    """A canary is already rolling out over the same stable version."""


def _canary(row: Sequence[Any]) -> Canary:
    values = dict(zip(CANARY_COLUMNS, row, strict=True))
    values["steps"] = json.loads(values["steps"])
    return Canary.model_validate(values)


class CanaryRecords(Transactional):
    @retried
    def start_canary(self, canary: Canary, decision: DecisionRecord) -> None:
        """Insert a running canary, unless one is already running or paused over `stable`."""
        with self.tx() as cur:
            busy = cur.execute(
                "SELECT id FROM canaries WHERE stable = ? AND state IN (?, ?)",
                (canary.stable, CanaryState.RUNNING.value, CanaryState.PAUSED.value),
            ).fetchone()
            if busy is not None and busy[0] != canary.id:
                raise CanaryConflict(f"canary {busy[0]} is already rolling out over "
                                     f"{canary.stable!r}; abort or promote it first")
            values = canary.model_dump(mode="json")
            values["steps"] = json.dumps(values["steps"])
            cur.execute(
                f"INSERT INTO canaries ({', '.join(CANARY_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in CANARY_COLUMNS)}) ON CONFLICT (id) DO NOTHING",
                [values[c] for c in CANARY_COLUMNS],
            )
            if cur.rowcount == 1:
                self._insert_decision(cur, decision)

    @retried
    def get_canary(self, canary_id: str) -> Canary | None:
        with self.tx() as cur:
            row = cur.execute(_SELECT + " WHERE id = ?", (canary_id,)).fetchone()
        return _canary(row) if row else None

    @retried
    def canaries_by_id(self, ids: Sequence[str]) -> dict[str, Canary]:
        """The named canaries as they are now (a worker confirms its items' arms with them)."""
        if not ids:
            return {}
        with self.tx() as cur:
            rows = cur.execute(_SELECT + f" WHERE id IN ({', '.join('?' for _ in ids)})",
                               list(ids)).fetchall()
        return {c.id: c for c in map(_canary, rows)}

    @retried
    def canaries(self, states: Sequence[CanaryState] | None = None) -> list[Canary]:
        """Newest first; only those in `states` when given."""
        sql, params = _SELECT, []
        if states is not None:
            sql += f" WHERE state IN ({', '.join('?' for _ in states)})"
            params = [s.value for s in states]
        with self.tx() as cur:
            rows = cur.execute(sql + " ORDER BY started_at DESC, id DESC", params).fetchall()
        return [_canary(r) for r in rows]

    @retried
    def routes(self) -> dict[str, Canary]:
        """The canary each stable version's items are routed by: the newest that routes or was
        promoted, per stable name."""
        with self.tx() as cur:
            rows = cur.execute(
                _SELECT + f" WHERE state IN ({', '.join('?' for _ in _ROUTING)}) "
                "ORDER BY started_at, id", _ROUTING,
            ).fetchall()
        return {c.stable: c for c in map(_canary, rows)}

    @retried
    def move_canary(self, canary: Canary, decision: DecisionRecord, *, state: CanaryState,
                    step: int, weight: float, reason: str | None = None,
                    ended: bool = False, restart_step: bool = False) -> bool:
        """Change state, step and weight if the canary is still as `canary` describes (the
        caller's view), recording the decision in the same transaction; False if another
        process moved it first. A new step, or `restart_step`, starts the step's clock."""
        with self.tx() as cur:
            cur.execute(
                "UPDATE canaries SET state = ?, step = ?, weight = ?, reason = ?, "
                "step_started_at = CASE WHEN step = ? AND ? = 0 THEN step_started_at ELSE ? "
                "END, ended_at = ? WHERE id = ? AND state = ? AND step = ?",
                (state.value, step, weight, reason, step, int(restart_step), decision.at,
                 decision.at if ended else None, canary.id, canary.state.value, canary.step),
            )
            if cur.rowcount != 1:
                return False
            self._insert_decision(cur, decision)
        return True

    @retried
    def add_samples(self, samples: Sequence[Sample]) -> None:
        """Samples of work outside a micro-batch (online requests)."""
        with self.tx() as cur:
            self._insert_samples(cur, samples)

    @retried
    def record_decision(self, decision: DecisionRecord) -> None:
        with self.tx() as cur:
            self._insert_decision(cur, decision)

    @retried
    def decisions(self, canary_id: str, limit: int = 1000) -> list[DecisionRecord]:
        """Oldest first."""
        with self.tx() as cur:
            rows = cur.execute(
                "SELECT canary_id, at, step, weight, decision, reason, numbers "
                "FROM canary_decisions WHERE canary_id = ? ORDER BY at LIMIT ?",
                (canary_id, limit),
            ).fetchall()
        return [DecisionRecord(canary_id=r[0], at=r[1], step=r[2], weight=r[3],
                               decision=Decision(r[4]), reason=r[5], numbers=json.loads(r[6]))
                for r in rows]

    @retried
    def samples(self, canary_id: str, step: int) -> list[Sample]:
        with self.tx() as cur:
            rows = cur.execute(
                "SELECT arm, error, violation, latency, stable_latency, agreement "
                "FROM canary_samples "
                "WHERE canary_id = ? AND step = ?",
                (canary_id, step),
            ).fetchall()
        return [Sample(canary_id=canary_id, step=step, arm=Arm(r[0]), error=bool(r[1]),
                       violation=r[2], latency=r[3], stable_latency=r[4], agreement=r[5])
                for r in rows]

    @staticmethod
    def _insert_decision(cur: Cursor, d: DecisionRecord) -> None:
        cur.execute(
            "INSERT INTO canary_decisions (canary_id, at, step, weight, decision, reason, "
            "numbers) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (d.canary_id, d.at, d.step, d.weight, d.decision.value, d.reason,
             json.dumps(d.numbers, default=float)),
        )

    @staticmethod
    def _insert_samples(cur: Cursor, samples: Sequence[Sample]) -> None:
        if not samples:
            return
        now = time.time()
        cur.executemany(
            "INSERT INTO canary_samples (canary_id, step, arm, error, violation, latency, "
            "stable_latency, agreement, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(s.canary_id, s.step, s.arm.value, int(s.error), s.violation, s.latency,
              s.stable_latency, s.agreement, now) for s in samples],
        )
