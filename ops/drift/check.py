"""One `drift.check`: pin a reference when there is none (or a new version went live), else
compare the recent window with it, store the report, count alerts, and pause a running canary
when the drift is severe."""

from __future__ import annotations

import secrets
import time
from typing import Any

import numpy as np

from ops import metrics
from ops.canary import controller
from ops.drift import tests
from ops.settings import Settings
from ops.store import Store
from schemas.canary import CanaryState


def limits(cfg: Settings) -> tests.Limits:
    return tests.Limits(alpha=cfg.drift_alpha, psi_alert=cfg.drift_psi_alert,
                        psi_severe=cfg.drift_psi_severe, min_effect=cfg.drift_min_effect,
                        components=cfg.drift_components, min_samples=cfg.drift_min_samples)


def pin_baseline(store: Store, cfg: Settings, reason: str = "pinned by operator") -> int:
    """`bemq drift baseline`: the last window becomes the reference."""
    return store.pin_reference(cfg.model_name, time.time() - cfg.drift_window_seconds, reason)


def run(store: Store, cfg: Settings) -> dict[str, Any]:
    now = time.time()
    model = cfg.model_name
    window_start = now - cfg.drift_window_seconds
    report: dict[str, Any] = {"id": f"drift_{secrets.token_hex(6)}", "at": now, "model": model,
                              "components": [], "alerts": 0, "severe": False}
    base = store.baseline(model)
    if base is None or base[1] is not None:
        # No reference yet, or a version went live: pin once its first window is full.
        since = window_start if base is None else max(base[1], window_start)
        reason = "first window" if base is None else base[2]
        if _count_lengths(store, model, since) >= cfg.drift_min_samples:
            pinned = store.pin_reference(model, since, reason)
            report["status"] = f"reference pinned ({reason}): {pinned} samples"
        else:
            report["status"] = f"collecting a reference window ({reason})"
        _save(store, report)
        _prune(store, cfg, now, since)
        return report

    pinned_at, _, reason = base
    since = max(window_start, pinned_at or 0.0)
    report.update(status="compared", reference={"pinned_at": pinned_at, "reason": reason},
                  window={"since": since, "until": now})
    lim = limits(cfg)
    ref_len, new_len = (_lengths(store, model, reference=r, since=0 if r else since)
                        for r in (True, False))
    ref_emb, new_emb = (_embeddings(store, model, reference=r, since=0 if r else since)
                        for r in (True, False))
    ref_exp, new_exp = (_experts(store, model, reference=r, since=0 if r else since)
                        for r in (True, False))
    components = [tests.lengths(ref_len, new_len, lim),
                  tests.embeddings(ref_emb, new_emb, lim),
                  tests.experts(ref_exp, new_exp, lim)]
    alerting = [c for c in components if c.alert]
    report["components"] = [c.as_dict() for c in components]
    report["alerts"] = len(alerting)
    report["severe"] = len(alerting) >= 2 or any(c.severe for c in components)
    for c in alerting:
        metrics.DRIFT_ALERTS.labels(c.component).inc()
    if report["severe"]:
        names = ", ".join(c.component for c in alerting)
        paused = [c.id for c in store.canaries([CanaryState.RUNNING]) if c.model == model
                  and controller.pause(store, c, f"severe drift ({names}); report {report['id']}")]
        report["paused_canaries"] = paused
    _save(store, report)
    _prune(store, cfg, now, since)
    return report


def _save(store: Store, report: dict[str, Any]) -> None:
    store.add_drift_report(report["id"], report["at"], report["model"], report["alerts"],
                           report["severe"], report)


def _prune(store: Store, cfg: Settings, now: float, keep_since: float) -> None:
    store.prune_features(min(now - 2 * cfg.drift_window_seconds, keep_since))


def _count_lengths(store: Store, model: str, since: float) -> int:
    return len(_lengths(store, model, reference=False, since=since))


def _lengths(store: Store, model: str, *, reference: bool, since: float) -> np.ndarray:
    rows = store.features(model, "lengths", reference=reference, since=since)
    return np.array([n for _, data in rows for n in data], dtype=float)


def _embeddings(store: Store, model: str, *, reference: bool, since: float) -> np.ndarray:
    rows = store.features(model, "embeddings", reference=reference, since=since)
    vectors = [v for _, data in rows for v in data]
    return np.array(vectors, dtype=float) if vectors else np.zeros((0, 1))


def _experts(store: Store, model: str, *, reference: bool, since: float
             ) -> dict[str, np.ndarray]:
    """Summed top-1 counts per adapter (names are immutable versions, so E is fixed)."""
    totals: dict[str, np.ndarray] = {}
    for adapter, counts in store.features(model, "experts", reference=reference, since=since):
        totals[adapter] = totals.get(adapter, 0) + np.array(counts, dtype=float)
    return totals
