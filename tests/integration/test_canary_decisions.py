"""Canary decisions that no setting, pause or queue can dodge: a rollback or pause reaches items
already queued (real worker), a paused canary's failing gate still rolls it back, a switched-off
gate is skipped rather than waited for, and a step that cannot decide is rolled back after
BEMQ_CANARY_MAX_HOLD."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ops.canary import controller
from ops.canary.routing import arm_for
from ops.store import Store
from producers.client import Client
from schemas.canary import Arm, Canary, CanaryState, Decision, Sample
from tests.conftest import embedded_env
from tests.support.deploy import request_lines, settings_for, start_worker
from workers.adapters import make_adapter

pytestmark = pytest.mark.timeout(240)


def add_adapters(client: Client, tmp_path: Path, **nan: bool) -> None:
    for n, name in enumerate(("v1", "v2")):
        path = tmp_path / f"{name}.safetensors"
        fill = {"fill": float("nan")} if nan.get(name) else {}
        path.write_bytes(make_adapter(client.model, seed=n, experts=2, rank=4, **fill))
        client.add_adapter(name, path)


def record(store: Store, c: Canary, n: int, *, violation: str | None = None,
           probes: bool = True) -> None:
    """`n` samples per arm at the canary's step, as workers write them: canary ones with a
    paired probe of equal seconds (unless `probes` is off) and an agreement of 0.99."""
    probe = 0.01 if probes else None
    samples = [Sample(canary_id=c.id, step=c.step, arm=arm, error=False,
                      violation=violation if arm == Arm.CANARY else None,
                      latency=probe if arm == Arm.CANARY else None,
                      stable_latency=probe if arm == Arm.CANARY else None,
                      agreement=0.99 if arm == Arm.CANARY else None)
               for arm in Arm for _ in range(n)]
    with store.tx() as cur:
        store._insert_samples(cur, samples)


@pytest.mark.parametrize("stop", ["abort", "pause"])
def test_items_queued_for_a_stopped_canary_run_on_stable(stop: str, tmp_path: Path) -> None:
    """A job is queued half on a NaN canary; the canary is stopped before a worker runs it:
    every item is served (on stable), none fails for the canary."""
    env = embedded_env(tmp_path / "var")
    cfg = settings_for(env)
    with Client(cfg) as client:
        add_adapters(client, tmp_path, v2=True)
        canary = controller.start(client.store, cfg, model="minilm", stable="v1", canary="v2",
                                  steps=[50, 100], min_samples=10)
        lines = request_lines([f"where is parcel {i}" for i in range(60)], model="minilm:v1")
        assert any(arm_for(cfg.tenant, line["custom_id"], 50) == Arm.CANARY for line in lines)
        job = client.submit_job(lines)
        if stop == "abort":
            controller.abort(client.store, canary.id)
        else:
            assert controller.pause(client.store, canary, "severe drift (test)") is not None
        worker = start_worker(env, client, tmp_path / "worker.log")
        try:
            done = client.wait(job.id, timeout=120)
        finally:
            worker.stop()
        assert (done.request_counts.completed, done.request_counts.failed) == (60, 0)
        assert list(client.errors(job.id)) == []
        assert client.store.samples(canary.id, 0) == []  # none counts for the stopped canary


def test_a_paused_canary_still_rolls_back_on_a_failing_gate(tmp_path: Path) -> None:
    cfg = settings_for(embedded_env(tmp_path / "var"))
    with Client(cfg) as client:
        add_adapters(client, tmp_path)
        store = client.store
        healthy = controller.start(store, cfg, model="minilm", stable="v1", canary="v2",
                                   steps=[50, 100], min_samples=30)
        record(store, healthy, 40)
        controller.pause(store, healthy, "severe drift (test)")
        decided = controller.step_all(store, cfg)
        assert [d.decision for d in decided] == [Decision.HOLD]
        assert decided[0].reason.startswith("paused: every gate passed")
        assert store.get_canary(healthy.id).state == CanaryState.PAUSED  # never advances
        controller.abort(store, healthy.id)

        broken = controller.start(store, cfg, model="minilm", stable="v1", canary="v2",
                                  steps=[50, 100], min_samples=30)
        record(store, broken, 40, violation="non_finite")
        controller.pause(store, broken, "severe drift (test)")
        assert [d.decision for d in controller.step_all(store, cfg)] == [Decision.ROLLBACK]
        ended = store.get_canary(broken.id)
        assert ended.state == CanaryState.ROLLED_BACK and ended.serving_weight == 0
        assert ended.reason.startswith("safety_violations")


def test_switched_off_probes_skip_the_latency_gate(tmp_path: Path) -> None:
    """With BEMQ_CANARY_PROBE_ROWS=0 an identical copy advances; the decision names the skip."""
    cfg = settings_for(embedded_env(tmp_path / "var") | {"BEMQ_CANARY_PROBE_ROWS": "0"})
    with Client(cfg) as client:
        add_adapters(client, tmp_path)
        c = controller.start(client.store, cfg, model="minilm", stable="v1", canary="v2",
                             steps=[50, 100], min_samples=30)
        record(client.store, c, 40, probes=False)
        decided = controller.step_all(client.store, cfg)
        assert [d.decision for d in decided] == [Decision.PROMOTE], decided
        assert "skipped: latency_p50_ratio, BEMQ_CANARY_PROBE_ROWS=0" in decided[0].reason
        assert decided[0].numbers["gates"]["latency_p50_ratio"]["verdict"] == "skipped"


def test_a_step_without_a_verdict_is_rolled_back_after_max_hold(tmp_path: Path) -> None:
    cfg = settings_for(embedded_env(tmp_path / "var") | {"BEMQ_CANARY_MAX_HOLD": "1"})
    with Client(cfg) as client:
        add_adapters(client, tmp_path)
        c = controller.start(client.store, cfg, model="minilm", stable="v1", canary="v2",
                             steps=[50, 100], min_samples=30)
        record(client.store, c, 5)  # never enough
        assert [d.decision for d in controller.step_all(client.store, cfg)] == [Decision.HOLD]
        time.sleep(1.2)
        assert [d.decision for d in controller.step_all(client.store, cfg)] \
            == [Decision.ROLLBACK]
        ended = client.store.get_canary(c.id)
        assert ended.state == CanaryState.ROLLED_BACK
        assert ended.reason.startswith("no verdict in") and "BEMQ_CANARY_MAX_HOLD=1s" \
            in ended.reason and "waiting for samples" in ended.reason
