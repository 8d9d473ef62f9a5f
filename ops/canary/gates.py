"""The gates a canary step must pass, each with a bootstrap confidence interval.

A gate passes only when its whole interval is on the good side of its limit and fails only when
the whole interval is on the bad side; an interval that straddles the limit is inconclusive,
and the step holds. So noise can neither promote a canary nor roll it back. A gate whose data
is switched off (no latency probes, no shadow samples) is skipped, and says so.
"""

from __future__ import annotations

import dataclasses
import enum
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats

from schemas.canary import Arm, Sample


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    SKIPPED = "skipped"  # its data is switched off; it neither holds nor passes the step


@dataclasses.dataclass(frozen=True)
class Limits:
    max_error_delta: float = 0.01  # canary error rate minus stable error rate
    max_latency_ratio: float = 1.15  # p50 of canary ÷ stable seconds over paired probes
    min_agreement: float = 0.9  # mean cosine of canary vs shadow stable embeddings
    min_shadow: int = 20  # shadow samples needed before the agreement gate can decide
    min_probes: int = 10  # paired latency probes needed before the latency gate can decide
    latency: bool = True  # False: no probes are taken (BEMQ_CANARY_PROBE_ROWS=0)
    agreement: bool = True  # False: no shadow samples (BEMQ_CANARY_SHADOW_FRACTION=0)
    confidence: float = 0.95
    resamples: int = 2000
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Gate:
    name: str
    verdict: Verdict
    estimate: float
    low: float
    high: float
    limit: float
    detail: str = ""

    def numbers(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "estimate": self.estimate, "low": self.low,
                "high": self.high, "limit": self.limit, "detail": self.detail}


Statistic = Callable[..., Any]


def interval(data: Sequence[np.ndarray], statistic: Statistic, limits: Limits
             ) -> tuple[float, float, float, str]:
    """(estimate, low, high, method): a BCa bootstrap interval of `statistic` over the samples.

    Constant samples (e.g. no errors in either arm) have an exact interval: every resample
    gives the estimate. Where BCa's acceleration is undefined the percentile interval is used
    and the method says so."""
    estimate = float(statistic(*data, axis=-1))
    if all(np.ptp(d) == 0 for d in data):
        return estimate, estimate, estimate, "exact"
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            # Near-constant samples make BCa's acceleration 0/0; the result is then NaN and
            # the percentile interval is used instead (below), so the warnings say nothing new.
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            ci = stats.bootstrap(
                tuple(data), statistic, method=method, vectorized=True,
                confidence_level=limits.confidence, n_resamples=limits.resamples,
                rng=np.random.default_rng(limits.seed),
            ).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            return estimate, float(ci.low), float(ci.high), method
    return estimate, float("nan"), float("nan"), "undefined"


def _upper_bound_gate(name: str, data: Sequence[np.ndarray], statistic: Statistic,
                      limit: float, limits: Limits) -> Gate:
    """A gate on a statistic that must stay at or below `limit`."""
    if any(len(d) < 2 for d in data):
        return Gate(name, Verdict.INCONCLUSIVE, float("nan"), float("nan"), float("nan"), limit,
                    "fewer than 2 values in an arm")
    est, low, high, method = interval(data, statistic, limits)
    if not np.isfinite(low):
        verdict = Verdict.INCONCLUSIVE
    elif low > limit:
        verdict = Verdict.FAIL
    elif high <= limit:
        verdict = Verdict.PASS
    else:
        verdict = Verdict.INCONCLUSIVE
    return Gate(name, verdict, est, low, high, limit, method)


def _mean_diff(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def _neg_mean(a: np.ndarray, axis: int = -1) -> np.ndarray:
    return -np.mean(a, axis=axis)


def evaluate(samples: Sequence[Sample], limits: Limits) -> list[Gate]:
    """Every gate over one step's samples (the caller has checked the minimum sample)."""
    canary = [s for s in samples if s.arm == Arm.CANARY]
    stable = [s for s in samples if s.arm == Arm.STABLE]
    gates = [
        _upper_bound_gate(
            "error_rate_delta",
            (np.array([s.error for s in canary], float),
             np.array([s.error for s in stable], float)),
            _mean_diff, limits.max_error_delta, limits),
    ]
    # Each probe timed both adapters on the same rows back to back: its ratio does not depend
    # on the rows' lengths, and a change in the machine's load hits both of its timings alike.
    ratios = np.array([s.latency / s.stable_latency for s in canary
                       if s.latency is not None and s.stable_latency])
    if not limits.latency:
        gates.append(_skipped("latency_p50_ratio", limits.max_latency_ratio,
                              "BEMQ_CANARY_PROBE_ROWS=0: no latency probes"))
    elif len(ratios) < limits.min_probes:
        gates.append(_too_few("latency_p50_ratio", len(ratios), limits.min_probes,
                              limits.max_latency_ratio, "paired probes"))
    else:
        gates.append(_upper_bound_gate("latency_p50_ratio", (ratios,), np.median,
                                       limits.max_latency_ratio, limits))
    violations = sum(s.violation is not None for s in canary)
    kinds = sorted({s.violation for s in canary if s.violation is not None})
    gates.append(Gate("safety_violations", Verdict.FAIL if violations else Verdict.PASS,
                      float(violations), float(violations), float(violations), 0.0,
                      ", ".join(kinds)))
    agreement = np.array([s.agreement for s in canary if s.agreement is not None])
    if not limits.agreement:
        gates.append(_skipped("shadow_agreement", limits.min_agreement,
                              "BEMQ_CANARY_SHADOW_FRACTION=0: no shadow samples"))
    elif len(agreement) < limits.min_shadow:
        gates.append(_too_few("shadow_agreement", len(agreement), limits.min_shadow,
                              limits.min_agreement, "shadow samples"))
    else:
        # "mean agreement ≥ limit" is "−mean ≤ −limit": the same one-sided rule, negated.
        g = _upper_bound_gate("shadow_agreement", (agreement,), _neg_mean,
                              -limits.min_agreement, limits)
        gates.append(Gate(g.name, g.verdict, -g.estimate, -g.high, -g.low,
                          limits.min_agreement, g.detail))
    return gates


def _too_few(name: str, n: int, needed: int, limit: float, what: str) -> Gate:
    return Gate(name, Verdict.INCONCLUSIVE, float("nan"), float("nan"), float("nan"), limit,
                f"{n}/{needed} {what}")


def _skipped(name: str, limit: float, why: str) -> Gate:
    nan = float("nan")
    return Gate(name, Verdict.SKIPPED, nan, nan, nan, limit, why)
