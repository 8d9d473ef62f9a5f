"""Drift statistics with fixed seeds: a shifted distribution alerts, an unshifted one does not."""

from __future__ import annotations

import numpy as np
import pytest

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
    ref = rng.normal(size=(800, 16)) @ basis
    same = rng.normal(size=(600, 16)) @ basis
    moved = (rng.normal(size=(600, 16)) + np.eye(16)[0] * 1.5) @ basis
    assert not embeddings(ref, same, LIMITS).alert
    result = embeddings(ref, moved, LIMITS)
    assert result.alert and result.numbers["flagged"]


def test_expert_usage_alerts_only_when_shifted() -> None:
    ref = {"v1": np.array([2500.0, 2500, 2500, 2500])}
    same = {"v1": np.array([1010.0, 990, 1003, 997])}
    skewed = {"v1": np.array([2200.0, 600, 600, 600])}
    assert not experts(ref, same, LIMITS).alert
    assert experts(ref, skewed, LIMITS).alert


def test_too_few_samples_never_alert() -> None:
    rng = np.random.default_rng(2)
    result = lengths(rng.normal(size=50), rng.normal(5, 1, size=50), LIMITS)
    assert not result.alert and "insufficient" in result.numbers


def test_psi_sees_a_shift_out_of_a_narrow_reference() -> None:
    reference = np.full(500, 8.0)  # every reference text had 8 tokens
    assert psi(reference, np.full(500, 8.0)) < 1e-9
    assert psi(reference, np.full(500, 64.0)) > 5
    assert psi(reference, np.full(500, 3.0)) > 5
