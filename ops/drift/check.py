"""One `drift.check`: pin a reference when there is none (or a new version went live), else
compare the recent window with it, store the report, count alerts, and pause a running canary
when the drift is severe.

A reference is pinned only from a full window: samples covering at least
BEMQ_DRIFT_WINDOW_SECONDS of completed work (and BEMQ_DRIFT_MIN_SAMPLES lengths). Every later
window is compared with that one reference, so a reference made of the first few jobs would
carry its own chance deviation into every comparison."""

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
        reason = "first window" if base is None else base[2]
        first = store.first_ready(model, since=0.0 if base is None else base[1])
        covered = 0.0 if first is None else now - first
        count = 0 if first is None else _count_lengths(store, model, first)
        if covered >= cfg.drift_window_seconds and count >= cfg.drift_min_samples:
            pinned = store.pin_reference(model, first, reason)
            report["status"] = f"reference pinned ({reason}): {pinned} samples"
        else:
            report["status"] = (f"collecting a reference window ({reason}): {covered:.0f} of "
                                f"{cfg.drift_window_seconds:g} s, {count} of "
                                f"{cfg.drift_min_samples} lengths")
        _save(store, report)
        _prune(store, cfg, now, window_start if first is None else min(first, window_start))
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


def _embeddings(store: Store, model: str, *, reference: bool, since: float
                ) -> dict[str, np.ndarray]:
    """Sampled output vectors by the adapter that served them."""
    vectors: dict[str, list[list[float]]] = {}
    for adapter, data in store.features(model, "embeddings", reference=reference, since=since):
        vectors.setdefault(adapter, []).extend(data)
    return {a: np.array(v, dtype=float) for a, v in vectors.items() if v}


def _experts(store: Store, model: str, *, reference: bool, since: float
             ) -> dict[str, np.ndarray]:
    """Per adapter, (sequences, E) top-1 expert counts (names are immutable versions, so E is
    fixed). Rows written before counts were kept per sequence (one summed row per micro-batch)
    are read as one unit each."""
    rows: dict[str, list[list[float]]] = {}
    for adapter, data in store.features(model, "experts", reference=reference, since=since):
        if data and not isinstance(data[0], list):
            data = [data]
        rows.setdefault(adapter, []).extend(data)
    return {a: np.array(r, dtype=float) for a, r in rows.items() if r}
