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
    seed: int = 0


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


def embeddings(reference: Mapping[str, np.ndarray], recent: Mapping[str, np.ndarray],
               limits: Limits) -> Component:
    """Output embeddings, per serving adapter (outputs of different adapters differ by design,
    so a canary's share must not read as drift): KS on each of the top principal components of
    both windows pooled, p-values adjusted by Benjamini–Hochberg across every adapter's
    components. Components of the reference alone would be fitted to it (a few hundred
    vectors in 384 dimensions): its spread along them is larger than a new sample's by
    construction, and KS would see that as drift."""
    needed = max(2 * limits.components, limits.min_samples // 4)
    names = [a for a in sorted(set(reference) & set(recent))
             if min(len(reference[a]), len(recent[a])) >= needed]
    n = (sum(len(reference[a]) for a in names), sum(len(recent[a]) for a in names))
    if not names:
        n = (sum(map(len, reference.values())), sum(map(len, recent.values())))
        return _insufficient("embeddings", "pca-ks+bh", n, needed)
    tests, owner = [], []
    for name in names:
        ref, new = reference[name], recent[name]
        pooled = np.concatenate([ref, new])
        mean = pooled.mean(axis=0)
        _, _, vt = np.linalg.svd(pooled - mean, full_matrices=False)
        k = min(limits.components, vt.shape[0])
        ref_proj, new_proj = (ref - mean) @ vt[:k].T, (new - mean) @ vt[:k].T
        tests += [stats.ks_2samp(ref_proj[:, i], new_proj[:, i]) for i in range(k)]
        owner += [(name, i) for i in range(k)]
    adjusted = stats.false_discovery_control(np.array([t.pvalue for t in tests]), method="bh")
    statistic = np.array([t.statistic for t in tests])
    flagged = (adjusted < limits.alpha) & (statistic >= limits.min_effect)
    per: dict[str, dict[str, Any]] = {}
    for (name, i), ks, p, hit in zip(owner, statistic, adjusted, flagged, strict=True):
        entry = per.setdefault(name, {"flagged": [], "ks_statistic": [], "p_adjusted": []})
        entry["ks_statistic"].append(float(ks))
        entry["p_adjusted"].append(float(p))
        if hit:
            entry["flagged"].append(i)
    return Component("embeddings", "pca-ks+bh", bool(flagged.any()),
                     bool((flagged & (statistic >= 2 * limits.min_effect)).any()), *n,
                     {"components": limits.components, "adapters": per})


# Sequences per window the usage test draws at most (a random subset beyond that), and its
# permutations: p-values down to 1/1000, which alpha = 0.01 needs.
USAGE_UNITS = 2000
USAGE_PERMUTATIONS = 999


def experts(reference: Mapping[str, np.ndarray], recent: Mapping[str, np.ndarray],
            limits: Limits) -> Component:
    """Expert usage per adapter, with each sequence as the unit: the statistic is the
    chi-square of the 2 × E table of top-1 token counts, and its p-value comes from permuting
    whole sequences between the windows. A sequence's tokens route alike, so a chi-square
    p-value that counts tokens as independent is near 0 on unchanged traffic; permuting the
    units keeps its meaning. Cramér's V of the table is the effect size."""
    per: dict[str, dict[str, Any]] = {}
    alert = severe = False
    n_ref = n_new = 0
    rng = np.random.default_rng(limits.seed)
    for name in sorted(set(reference) & set(recent)):
        ref, new = (_units(a, rng) for a in (reference[name], recent[name]))
        if ref.shape[1] != new.shape[1] or min(len(ref), len(new)) < limits.min_samples:
            continue
        used = (ref.sum(axis=0) + new.sum(axis=0)) > 0
        if used.sum() < 2:
            continue
        units = np.concatenate([ref, new])[:, used]

        def chi2(x: np.ndarray, y: np.ndarray, axis: int = -1, units: np.ndarray = units
                 ) -> np.ndarray:
            a, b = units[x.astype(np.intp)].sum(axis=-2), units[y.astype(np.intp)].sum(axis=-2)
            return _chi_square(a, b)

        result = stats.permutation_test(
            (np.arange(len(ref)), np.arange(len(ref), len(units))), chi2, vectorized=True,
            n_resamples=USAGE_PERMUTATIONS, batch=50, alternative="greater", rng=rng)
        total = units.sum()
        v = float(np.sqrt(result.statistic / total)) if total else 0.0
        hit = bool(result.pvalue < limits.alpha and v >= limits.min_effect)
        alert |= hit
        severe |= hit and v >= 2 * limits.min_effect
        n_ref, n_new = n_ref + len(ref), n_new + len(new)
        per[name] = {"chi2": float(result.statistic), "p_value": float(result.pvalue),
                     "cramers_v": v, "sequences": [len(ref), len(new)], "alert": hit}
    if not per:
        return _insufficient("experts", "permutation chi-square",
                             (sum(map(len, reference.values())), sum(map(len, recent.values()))),
                             limits.min_samples)
    return Component("experts", "permutation chi-square", alert, severe, n_ref, n_new,
                     {"adapters": per})


def _units(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(sequences, E) counts, at most `USAGE_UNITS` of them drawn at random."""
    counts = np.asarray(counts, dtype=float).reshape(len(counts), -1)
    if len(counts) > USAGE_UNITS:
        counts = counts[rng.choice(len(counts), USAGE_UNITS, replace=False)]
    return counts


def _chi_square(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson's chi-square of the 2 × E tables [a; b] (batched over leading axes)."""
    table = np.stack([a, b], axis=-2)
    expected = table.sum(-1, keepdims=True) * table.sum(-2, keepdims=True) \
        / table.sum((-2, -1), keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(expected > 0, (table - expected) ** 2 / expected, 0.0)
    return terms.sum((-2, -1))


def _insufficient(component: str, test: str, n: tuple[int, int], needed: int) -> Component:
    return Component(component, test, False, False, *n,
                     {"insufficient": f"need {needed} samples in each window"})
