"""The canary controller: start a rollout, and at each `canary.step` decide per running canary —
hold, advance to the next weight, promote, or roll back — recording every decision with the
numbers behind it.

As in Argo Rollouts, a step without its minimum sample in both arms, or with any gate
inconclusive, holds; a failed gate rolls back at once (weight 0), and so does a step that holds
for longer than BEMQ_CANARY_MAX_HOLD (no setting can leave a canary holding for ever). A paused
canary (severe drift) gets weight 0 and no advance, but its gates still decide: a failing one
rolls it back.
"""

from __future__ import annotations

import math
import secrets
import time
from typing import Any

from ops import metrics
from ops.canary.gates import Gate, Limits, Verdict, evaluate
from ops.settings import Settings
from ops.store import Store
from schemas.canary import Arm, Canary, CanaryState, Decision, DecisionRecord


class CanaryError(ValueError):
    """A canary command that cannot apply (unknown adapter, no such canary, wrong state)."""


def limits(cfg: Settings) -> Limits:
    return Limits(max_error_delta=cfg.canary_max_error_delta,
                  max_latency_ratio=cfg.canary_max_latency_ratio,
                  min_agreement=cfg.canary_min_agreement, min_shadow=cfg.canary_min_shadow,
                  min_probes=cfg.canary_min_probes, latency=cfg.canary_probe_rows > 0,
                  agreement=cfg.canary_shadow_fraction > 0,
                  confidence=cfg.canary_confidence, resamples=cfg.canary_resamples)


def start(store: Store, cfg: Settings, *, model: str, stable: str, canary: str,
          steps: list[float], min_samples: int) -> Canary:
    if model != cfg.model_name:
        raise CanaryError(f"--model {model!r}: this deployment serves {cfg.model_name!r}")
    for flag, name in (("--stable", stable), ("--canary", canary)):
        record = store.get_adapter(name)
        if record is None:
            raise CanaryError(f"{flag} {name!r}: no such adapter (bemq adapters list)")
        if record.model != model:
            raise CanaryError(f"{flag} {name!r} is an adapter of {record.model!r}, not {model!r}")
    if stable == canary:
        raise CanaryError("--canary must differ from --stable")
    now = time.time()
    c = Canary(id=f"canary_{secrets.token_hex(6)}", model=model, stable=stable, canary=canary,
               steps=steps, step=0, weight=steps[0], state=CanaryState.RUNNING,
               min_samples=min_samples, started_at=now, step_started_at=now)
    store.start_canary(c, _decision(c, Decision.START, f"weight {steps[0]:g}%", {}, now))
    metrics.CANARY_DECISIONS.labels(Decision.START.value).inc()
    _export(c)
    return c


def step_all(store: Store, cfg: Settings) -> list[DecisionRecord]:
    """One `canary.step`: a decision for every running or paused canary."""
    decided = []
    for c in store.canaries([CanaryState.RUNNING, CanaryState.PAUSED]):
        d = step(store, cfg, c)
        if d is not None:
            decided.append(d)
    for c in store.canaries():
        _export(c)
    return decided


def step(store: Store, cfg: Settings, c: Canary) -> DecisionRecord | None:
    now = time.time()
    samples = store.samples(c.id, c.step)
    counts = {arm: sum(s.arm == arm for s in samples) for arm in Arm}
    numbers: dict[str, Any] = {"samples": {a.value: n for a, n in counts.items()},
                               "min_samples": c.min_samples}
    if min(counts.values()) < c.min_samples:
        reason = (f"waiting for samples: stable {counts[Arm.STABLE]}/{c.min_samples}, "
                  f"canary {counts[Arm.CANARY]}/{c.min_samples}")
        return _hold(store, cfg, c, reason, numbers, now)
    gates = evaluate(samples, limits(cfg))
    numbers["gates"] = {g.name: g.numbers() for g in gates}
    failed = [g for g in gates if g.verdict == Verdict.FAIL]
    if failed:
        reason = "; ".join(_describe(g) for g in failed)
        d = _decision(c, Decision.ROLLBACK, reason, numbers, now)
        return _move(store, c, d, CanaryState.ROLLED_BACK, c.step, 0.0, reason)
    open_gates = [g for g in gates if g.verdict == Verdict.INCONCLUSIVE]
    if open_gates:
        reason = "inconclusive: " + "; ".join(_describe(g) for g in open_gates)
        return _hold(store, cfg, c, reason, numbers, now)
    skipped = [g for g in gates if g.verdict == Verdict.SKIPPED]
    passed = "every gate passed" + (
        " (skipped: " + "; ".join(f"{g.name}, {g.detail}" for g in skipped) + ")" if skipped
        else "")
    if c.state == CanaryState.PAUSED:
        return _hold(store, cfg, c, f"paused: {passed}; bemq canary resume to go on",
                     numbers, now)
    nxt = c.step + 1
    weight = c.steps[nxt]
    if weight >= 100:
        d = _decision(c, Decision.PROMOTE, f"{passed} at the last step", numbers, now)
        moved = _move(store, c, d, CanaryState.PROMOTED, nxt, 100.0, None)
        if moved is not None:
            store.pin_reference_later(c.model, now, f"{c.canary} promoted over {c.stable}")
        return moved
    d = _decision(c, Decision.ADVANCE, f"{passed}: weight {weight:g}%", numbers, now)
    return _move(store, c, d, CanaryState.RUNNING, nxt, weight, None)


def find(store: Store, canary_id: str | None,
         states: tuple[CanaryState, ...] = (CanaryState.RUNNING, CanaryState.PAUSED)) -> Canary:
    """The named canary, or the one canary in `states` when no id is given."""
    if canary_id is not None:
        c = store.get_canary(canary_id)
        if c is None:
            raise CanaryError(f"no canary {canary_id!r}")
        return c
    active = store.canaries(list(states))
    if not active:
        raise CanaryError("no canary is rolling out")
    if len(active) > 1:
        raise CanaryError("several canaries are rolling out; name one: "
                          + ", ".join(c.id for c in active))
    return active[0]


def abort(store: Store, canary_id: str | None, reason: str = "aborted by operator") -> Canary:
    c = _rolling(find(store, canary_id))
    d = _decision(c, Decision.ABORT, reason, {}, time.time())
    _require(_move(store, c, d, CanaryState.ABORTED, c.step, 0.0, reason), c)
    return _after(store, c)


def promote(store: Store, canary_id: str | None, reason: str = "promoted by operator") -> Canary:
    c = _rolling(find(store, canary_id))
    now = time.time()
    d = _decision(c, Decision.MANUAL_PROMOTE, reason, {}, now)
    _require(_move(store, c, d, CanaryState.PROMOTED, len(c.steps) - 1, 100.0, reason), c)
    store.pin_reference_later(c.model, now, f"{c.canary} promoted over {c.stable}")
    return _after(store, c)


def pause(store: Store, c: Canary, reason: str) -> Canary | None:
    """Hold a running canary (severe drift): its weight is 0 until it is resumed (items go to
    stable, also those already queued), its gates still decide, and it never advances."""
    d = _decision(c, Decision.PAUSE, reason, {}, time.time())
    return _after(store, c) if _move(store, c, d, CanaryState.PAUSED, c.step, c.weight,
                                     reason) else None


def resume(store: Store, canary_id: str | None) -> Canary:
    c = find(store, canary_id, (CanaryState.PAUSED,))
    if c.state != CanaryState.PAUSED:
        raise CanaryError(f"canary {c.id} is {c.state.value}, not paused")
    d = _decision(c, Decision.RESUME, "resumed by operator", {}, time.time())
    _require(_move(store, c, d, CanaryState.RUNNING, c.step, c.weight, None,
                   restart_step=True), c)
    return _after(store, c)


def _rolling(c: Canary) -> Canary:
    if not c.state.routes:
        raise CanaryError(f"canary {c.id} already ended: {c.state.value}")
    return c


def _require(moved: DecisionRecord | None, c: Canary) -> None:
    if moved is None:
        raise CanaryError(f"canary {c.id} changed meanwhile; look again with bemq canary status")


def _after(store: Store, c: Canary) -> Canary:
    found = store.get_canary(c.id)
    assert found is not None
    _export(found)
    return found


def _export(c: Canary) -> None:
    metrics.CANARY_WEIGHT.labels(c.stable, c.canary).set(c.serving_weight)


def _decision(c: Canary, decision: Decision, reason: str, numbers: dict[str, Any],
              now: float) -> DecisionRecord:
    return DecisionRecord(canary_id=c.id, at=now, step=c.step, weight=c.weight,
                          decision=decision, reason=reason, numbers=numbers)


def _hold(store: Store, cfg: Settings, c: Canary, reason: str, numbers: dict[str, Any],
          now: float) -> DecisionRecord | None:
    """Hold the step, or roll back once it has held longer than BEMQ_CANARY_MAX_HOLD."""
    held = now - c.step_started_at
    if held <= cfg.canary_max_hold:
        return _record(store, _decision(c, Decision.HOLD, reason, numbers, now))
    why = (f"no verdict in {held:.0f}s at step {c.step + 1}/{len(c.steps)} "
           f"(BEMQ_CANARY_MAX_HOLD={cfg.canary_max_hold:g}s): {reason}")
    return _move(store, c, _decision(c, Decision.ROLLBACK, why, numbers, now),
                 CanaryState.ROLLED_BACK, c.step, 0.0, why)


def _record(store: Store, d: DecisionRecord) -> DecisionRecord:
    store.record_decision(d)
    metrics.CANARY_DECISIONS.labels(d.decision.value).inc()
    return d


def _move(store: Store, c: Canary, d: DecisionRecord, state: CanaryState, step: int,
          weight: float, reason: str | None, *, restart_step: bool = False
          ) -> DecisionRecord | None:
    if not store.move_canary(c, d, state=state, step=step, weight=weight, reason=reason,
                             ended=not state.routes, restart_step=restart_step):
        return None
    metrics.CANARY_DECISIONS.labels(d.decision.value).inc()
    return d


def _describe(g: Gate) -> str:
    if g.name == "safety_violations":
        return f"safety_violations {g.estimate:g} ({g.detail})"
    if math.isnan(g.low):
        return f"{g.name}: {g.detail}"
    return f"{g.name} {g.estimate:.4g} [{g.low:.4g}, {g.high:.4g}] vs limit {g.limit:g}"
