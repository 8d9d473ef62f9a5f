"""Two-sample drift tests, one per feature kind. Pure functions over arrays.

Each test pairs a p-value with an effect size and alerts only when both cross their limits:
with thousands of samples a p-value alone flags differences too small to matter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats


@dataclasses.dataclass(frozen=True)
class Limits:
    alpha: float = 0.01
    psi_alert: float = 0.1
    psi_severe: float = 0.25
    min_effect: float = 0.1  # KS statistic, Cramér's V
    components: int = 10
    min_samples: int = 200


@dataclasses.dataclass(frozen=True)
class Component:
    component: str  # "lengths" | "embeddings" | "experts"
    test: str
    alert: bool
    severe: bool
    n_reference: int
    n_recent: int
    numbers: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def psi(reference: np.ndarray, recent: np.ndarray, bins: int = 10) -> float:
    """Population stability index over the reference's quantile bins (ties merged), plus one
    bin below the reference's minimum and one above its maximum: values the reference never
    had must land in a bin of their own, or a shift out of a narrow reference goes unseen."""
    cuts = np.quantile(reference, np.linspace(0, 1, bins + 1))
    cuts[-1] = np.nextafter(cuts[-1], np.inf)
    edges = np.concatenate(([-np.inf], np.unique(cuts), [np.inf]))
    ref = np.histogram(reference, edges)[0] / len(reference)
    new = np.histogram(recent, edges)[0] / len(recent)
    ref, new = np.clip(ref, 1e-4, None), np.clip(new, 1e-4, None)
    return float(np.sum((new - ref) * np.log(new / ref)))


def lengths(reference: np.ndarray, recent: np.ndarray, limits: Limits) -> Component:
    """Token lengths: KS for any change in shape, PSI for its size."""
    n = (len(reference), len(recent))
    if min(n) < limits.min_samples:
        return _insufficient("lengths", "ks+psi", n, limits.min_samples)
    ks = stats.ks_2samp(reference, recent)
    value = psi(reference, recent)
    alert = bool(ks.pvalue < limits.alpha and value >= limits.psi_alert)
    return Component("lengths", "ks+psi", alert, alert and value >= limits.psi_severe, *n,
                     {"ks_statistic": float(ks.statistic), "p_value": float(ks.pvalue),
                      "psi": value, "reference_median": float(np.median(reference)),
                      "recent_median": float(np.median(recent))})


def embeddings(reference: np.ndarray, recent: np.ndarray, limits: Limits) -> Component:
    """Output embeddings: KS on each of the reference's top principal components, p-values
    adjusted by Benjamini–Hochberg across components."""
    n = (len(reference), len(recent))
    needed = max(2 * limits.components, limits.min_samples // 4)
    if min(n) < needed:
        return _insufficient("embeddings", "pca-ks+bh", n, needed)
    mean = reference.mean(axis=0)
    _, _, vt = np.linalg.svd(reference - mean, full_matrices=False)
    k = min(limits.components, vt.shape[0])
    ref_proj, new_proj = (reference - mean) @ vt[:k].T, (recent - mean) @ vt[:k].T
    tests = [stats.ks_2samp(ref_proj[:, i], new_proj[:, i]) for i in range(k)]
    p = np.array([t.pvalue for t in tests])
    adjusted = stats.false_discovery_control(p, method="bh")
    statistic = np.array([t.statistic for t in tests])
    flagged = (adjusted < limits.alpha) & (statistic >= limits.min_effect)
    return Component("embeddings", "pca-ks+bh", bool(flagged.any()),
                     bool((flagged & (statistic >= 2 * limits.min_effect)).any()), *n,
                     {"components": k, "flagged": [int(i) for i in np.flatnonzero(flagged)],
                      "ks_statistic": [float(x) for x in statistic],
                      "p_adjusted": [float(x) for x in adjusted]})


def experts(reference: Mapping[str, np.ndarray], recent: Mapping[str, np.ndarray],
            limits: Limits) -> Component:
    """Expert usage per adapter: chi-square on the 2 × E table of top-1 token counts, with
    Cramér's V as the effect size."""
    per: dict[str, dict[str, float]] = {}
    alert = severe = False
    n_ref = n_new = 0
    for name in sorted(set(reference) & set(recent)):
        ref, new = reference[name], recent[name]
        if len(ref) != len(new) or min(ref.sum(), new.sum()) < limits.min_samples:
            continue
        table = np.stack([ref, new])
        table = table[:, table.sum(axis=0) > 0]
        if table.shape[1] < 2:
            continue
        chi2, p, _, _ = stats.chi2_contingency(table)
        v = float(np.sqrt(chi2 / table.sum()))
        hit = bool(p < limits.alpha and v >= limits.min_effect)
        alert |= hit
        severe |= hit and v >= 2 * limits.min_effect
        n_ref, n_new = n_ref + int(ref.sum()), n_new + int(new.sum())
        per[name] = {"chi2": float(chi2), "p_value": float(p), "cramers_v": v, "alert": hit}
    if not per:
        return _insufficient("experts", "chi-square", (n_ref, n_new), limits.min_samples)
    return Component("experts", "chi-square", alert, severe, n_ref, n_new, {"adapters": per})


def _insufficient(component: str, test: str, n: tuple[int, int], needed: int) -> Component:
    return Component(component, test, False, False, *n,
                     {"insufficient": f"need {needed} samples in each window"})
