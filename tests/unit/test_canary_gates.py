"""Canary gates and routing: a healthy canary passes, a broken one fails, noise holds, and an
item's arm is sticky as the weight rises."""

from __future__ import annotations

import numpy as np
import pytest

from ops.canary.gates import Limits, Verdict, evaluate
from ops.canary.routing import arm_for, at_run, route
from schemas.canary import Arm, Canary, CanaryState, Sample
from schemas.microbatch import Item

pytestmark = pytest.mark.timeout(120)
LIMITS = Limits(min_shadow=20, resamples=1000)


def samples(arm: Arm, n: int, *, error_rate: float = 0.0, latency_ratio: float = 1.0,
            agreement: float | None = 0.98, violation: str | None = None,
            seed: int = 0) -> list[Sample]:
    """Canary samples carry a paired probe: a micro-batch's cost (varying 10× with its rows'
    lengths and the machine's load) times each adapter's own cost, with 10 % timing noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = 1e-4 * rng.uniform(1, 10)
        paired = arm == Arm.CANARY
        out.append(Sample(
            canary_id="c", step=0, arm=arm, error=bool(rng.random() < error_rate),
            violation=violation,
            latency=float(base * latency_ratio * rng.lognormal(0, 0.1)) if paired else None,
            stable_latency=float(base * rng.lognormal(0, 0.1)) if paired else None,
            agreement=(float(np.clip(agreement + rng.normal(0, 0.01), -1, 1))
                       if agreement is not None and paired else None)))
    return out


def verdicts(data: list[Sample]) -> dict[str, Verdict]:
    return {g.name: g.verdict for g in evaluate(data, LIMITS)}


def test_healthy_canary_passes_every_gate() -> None:
    v = verdicts(samples(Arm.STABLE, 300, seed=1) + samples(Arm.CANARY, 300, seed=2))
    assert set(v.values()) == {Verdict.PASS}, v


def test_failing_canary_fails_its_gates() -> None:
    broken = samples(Arm.CANARY, 300, error_rate=0.3, latency_ratio=2.0, agreement=0.2,
                     violation="non_finite", seed=3)
    v = verdicts(samples(Arm.STABLE, 300, seed=4) + broken)
    assert v == {"error_rate_delta": Verdict.FAIL, "latency_p50_ratio": Verdict.FAIL,
                 "safety_violations": Verdict.FAIL, "shadow_agreement": Verdict.FAIL}


def test_small_noisy_differences_hold_instead_of_deciding() -> None:
    """A canary with 3 errors in 60 against stable's 1 in 60 might or might not exceed stable's
    error rate by more than 1 point: inconclusive."""
    def with_errors(data: list[Sample], errors: int) -> list[Sample]:
        return [s.model_copy(update={"error": i < errors}) for i, s in enumerate(data)]

    v = verdicts(with_errors(samples(Arm.STABLE, 60, seed=5), 1)
                 + with_errors(samples(Arm.CANARY, 60, seed=6), 3))
    assert v["error_rate_delta"] == Verdict.INCONCLUSIVE


def test_latency_gate_sees_a_small_slowdown_through_varying_batches() -> None:
    """Probe costs vary 10× between micro-batches; pairing still separates a 30 % slower
    canary (fail) from an equal one (pass) with 60 probes."""
    stable = samples(Arm.STABLE, 60, seed=10)
    assert verdicts(stable + samples(Arm.CANARY, 60, seed=11))["latency_p50_ratio"] \
        == Verdict.PASS
    assert verdicts(stable + samples(Arm.CANARY, 60, latency_ratio=1.3, seed=11))[
        "latency_p50_ratio"] == Verdict.FAIL


def test_latency_waits_for_its_own_minimum() -> None:
    data = samples(Arm.STABLE, 50) + samples(Arm.CANARY, 9, latency_ratio=3.0, seed=12)
    gate = next(g for g in evaluate(data, LIMITS) if g.name == "latency_p50_ratio")
    assert gate.verdict == Verdict.INCONCLUSIVE and gate.detail == "9/10 paired probes"


def test_agreement_waits_for_its_own_minimum() -> None:
    data = samples(Arm.STABLE, 50) + samples(Arm.CANARY, 50, agreement=None)
    data += samples(Arm.CANARY, 5, seed=9)
    assert verdicts(data)["shadow_agreement"] == Verdict.INCONCLUSIVE


def test_arm_is_sticky_and_proportional() -> None:
    ids = [f"id-{i}" for i in range(20_000)]
    at5 = {i for i in ids if arm_for("t", i, 5) == Arm.CANARY}
    at25 = {i for i in ids if arm_for("t", i, 25) == Arm.CANARY}
    assert at5 <= at25  # raising the weight never moves an item back to stable
    assert abs(len(at5) / len(ids) - 0.05) < 0.01 and abs(len(at25) / len(ids) - 0.25) < 0.015
    assert at25 != {i for i in ids if arm_for("other", i, 25) == Arm.CANARY}  # per tenant


def rollout(state: CanaryState = CanaryState.RUNNING) -> Canary:
    return Canary(id="c1", model="minilm", stable="v1", canary="v2", steps=[50, 100], step=0,
                  weight=50, state=state, min_samples=1, started_at=0, step_started_at=0)


def v1_items(n: int) -> list[Item]:
    return [Item(line=i, custom_id=f"x{i}", texts=["a"], lengths=[3], model="minilm:v1",
                 adapter="v1") for i in range(n)]


def test_route_records_arm_and_shadow() -> None:
    canary = rollout()
    items = v1_items(400)
    items.append(Item(line=400, custom_id="base", texts=["a"], lengths=[3], model="minilm"))
    routed = route(items, "t", {"v1": canary}, shadow_fraction=0.5)
    arms = [r.arm for r in routed[:400]]
    assert 150 < arms.count(Arm.CANARY) < 250
    assert all((r.adapter == "v2") == (r.arm == Arm.CANARY) for r in routed[:400])
    assert all(r.canary_id == "c1" and r.canary_step == 0 for r in routed[:400])
    shadows = [r for r in routed if r.shadow]
    assert shadows and all(r.arm == Arm.CANARY and r.shadow == "v1" for r in shadows)
    assert routed[400] == items[400]  # other versions are untouched
    promoted = canary.model_copy(update={"state": CanaryState.PROMOTED, "weight": 100})
    assert {r.adapter for r in route(items[:400], "t", {"v1": promoted}, 0.5)} == {"v2"}


def test_a_paused_canary_takes_no_new_items() -> None:
    canary = rollout(CanaryState.PAUSED)
    items = v1_items(100)
    assert route(items, "t", {"v1": canary}, shadow_fraction=0.5) == items
    assert canary.serving_weight == 0


@pytest.mark.parametrize("state", [CanaryState.ROLLED_BACK, CanaryState.ABORTED,
                                   CanaryState.PAUSED])
def test_items_queued_for_a_stopped_canary_run_on_stable(state: CanaryState) -> None:
    running = rollout()
    routed = route(v1_items(100), "t", {"v1": running}, shadow_fraction=0.5)
    assert at_run(routed, {"c1": running}) == routed  # still running: as routed
    now = at_run(routed, {"c1": running.model_copy(update={"state": state})})
    assert {i.adapter for i in now} == {"v1"}
    assert all(i.arm is None and i.canary_id is None and i.shadow is None for i in now)
    promoted = at_run(routed, {"c1": running.model_copy(update={"state": CanaryState.PROMOTED})})
    assert [i.adapter for i in promoted] == [i.adapter for i in routed]  # as routed, no samples
    assert all(i.canary_id is None for i in promoted)


def test_switched_off_gates_are_skipped_not_waited_for() -> None:
    data = samples(Arm.STABLE, 300) + samples(Arm.CANARY, 300, agreement=None, seed=1)
    for s in data:
        s.latency = s.stable_latency = None  # no probes were taken
    assert verdicts(data)["latency_p50_ratio"] == Verdict.INCONCLUSIVE
    off = {g.name: g for g in evaluate(data, Limits(latency=False, agreement=False))}
    assert off["latency_p50_ratio"].verdict == off["shadow_agreement"].verdict \
        == Verdict.SKIPPED
    assert "BEMQ_CANARY_PROBE_ROWS=0" in off["latency_p50_ratio"].detail
    assert off["error_rate_delta"].verdict == Verdict.PASS
