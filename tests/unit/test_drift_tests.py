"""Drift statistics with fixed seeds: a shifted distribution alerts, an unshifted one does not."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ops.drift.tests import Limits, embeddings, experts, lengths, psi

pytestmark = pytest.mark.timeout(120)
LIMITS = Limits(min_samples=200)


def test_lengths_alert_only_when_shifted() -> None:
    rng = np.random.default_rng(0)
    ref = np.round(rng.lognormal(3.0, 0.5, 3000))
    same = np.round(rng.lognormal(3.0, 0.5, 2000))
    longer = np.round(rng.lognormal(3.6, 0.5, 2000))
    assert not lengths(ref, same, LIMITS).alert
    shifted = lengths(ref, longer, LIMITS)
    assert shifted.alert and shifted.severe and shifted.numbers["psi"] > 0.25
    assert psi(ref, same) < 0.05


def test_embeddings_alert_only_when_shifted() -> None:
    rng = np.random.default_rng(1)
    basis = rng.normal(size=(16, 384))
    ref = {"v1": rng.normal(size=(800, 16)) @ basis}
    same = {"v1": rng.normal(size=(600, 16)) @ basis}
    moved = {"v1": (rng.normal(size=(600, 16)) + np.eye(16)[0] * 1.5) @ basis}
    assert not embeddings(ref, same, LIMITS).alert
    result = embeddings(ref, moved, LIMITS)
    assert result.alert and result.numbers["adapters"]["v1"]["flagged"]


def test_embeddings_of_a_new_adapter_are_not_drift() -> None:
    """A canary's share changes the mix of outputs by design: each adapter's outputs are
    compared only with the same adapter's reference."""
    rng = np.random.default_rng(3)
    basis = rng.normal(size=(16, 384))
    stable = {"v1": rng.normal(size=(800, 16)) @ basis}
    with_canary = {"v1": rng.normal(size=(400, 16)) @ basis,
                   "v2": (rng.normal(size=(400, 16)) + 3.0) @ basis}
    result = embeddings(stable, with_canary, LIMITS)
    assert not result.alert and set(result.numbers["adapters"]) == {"v1"}


def usage_window(rng: np.random.Generator, sequences: int, shares: np.ndarray,
                 concentration: float = 2.0) -> np.ndarray:
    """Per-sequence top-1 counts as routing makes them: each sequence draws its own expert
    shares around `shares` (its tokens route alike), then its tokens by those shares."""
    own = rng.dirichlet(shares * concentration, size=sequences)
    tokens = rng.integers(8, 60, size=sequences) * 12  # real tokens × sites
    return np.array([rng.multinomial(n, p) for n, p in zip(tokens, own, strict=True)], float)


def test_expert_usage_p_values_hold_their_level_on_unchanged_traffic() -> None:
    """Same-population windows reject at about alpha, although a sequence's tokens are far
    from independent (the token-level chi-square rejects nearly every one of them)."""
    rng = np.random.default_rng(4)
    shares = np.array([0.4, 0.3, 0.2, 0.1])
    limits = Limits(min_samples=100, alpha=0.05, min_effect=0.0)
    rejected = naive = 0
    trials = 40
    for _ in range(trials):
        ref, new = usage_window(rng, 300, shares), usage_window(rng, 300, shares)
        rejected += experts({"v1": ref}, {"v1": new}, limits).alert
        naive += stats.chi2_contingency(np.stack([ref.sum(0), new.sum(0)]))[1] < 0.05
    assert rejected <= 5, rejected  # P(> 5 of 40 | level 0.05) < 0.05
    assert naive >= 30, naive


def test_expert_usage_alerts_only_when_shifted() -> None:
    rng = np.random.default_rng(5)
    shares = np.array([0.25, 0.25, 0.25, 0.25])
    ref = {"v1": usage_window(rng, 400, shares)}
    same = {"v1": usage_window(rng, 400, shares)}
    skewed = {"v1": usage_window(rng, 400, np.array([0.55, 0.15, 0.15, 0.15]))}
    assert not experts(ref, same, LIMITS).alert
    result = experts(ref, skewed, LIMITS)
    assert result.alert and result.numbers["adapters"]["v1"]["p_value"] < 0.01


def test_too_few_samples_never_alert() -> None:
    rng = np.random.default_rng(2)
    result = lengths(rng.normal(size=50), rng.normal(5, 1, size=50), LIMITS)
    assert not result.alert and "insufficient" in result.numbers


def test_psi_sees_a_shift_out_of_a_narrow_reference() -> None:
    reference = np.full(500, 8.0)  # every reference text had 8 tokens
    assert psi(reference, np.full(500, 8.0)) < 1e-9
    assert psi(reference, np.full(500, 64.0)) > 5
    assert psi(reference, np.full(500, 3.0)) > 5


def test_embedding_p_values_hold_their_level_in_high_dimensions() -> None:
    """A few hundred vectors in 384 dimensions: components fitted to the reference alone
    would make every same-population window look narrower along them (KS alarms); components
    of both windows pooled keep the test's level."""
    rng = np.random.default_rng(6)
    scales = np.linspace(2.0, 0.5, 384)  # a spread of variances, like real embeddings
    limits = Limits(min_samples=200, alpha=0.05, min_effect=0.0)
    trials = 30
    alarms = sum(embeddings({"v1": rng.normal(size=(300, 384)) * scales},
                            {"v1": rng.normal(size=(250, 384)) * scales}, limits).alert
                 for _ in range(trials))
    assert alarms <= 4, alarms  # P(> 4 of 30 | level 0.05) < 0.05
