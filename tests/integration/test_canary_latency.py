"""A canary that is healthy but slow (an adapter with 4× the experts and 4× the rank, at the
kernels' limit of 128, routed token by token instead of per 32-token chunk) is rolled back by
the latency gate alone: its own forwards, probed beside the stable adapter's on the same rows,
are measurably slower; no item fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernels.layer import Routing
from ops.canary import controller
from producers.client import Client
from schemas.canary import CanaryState
from tests.conftest import embedded_env
from tests.support.deploy import request_lines, settings_for, start_worker
from workers.adapters import make_adapter

pytestmark = pytest.mark.timeout(300)


def test_slow_canary_is_rolled_back_by_latency(tmp_path: Path) -> None:
    # Micro-batches of 50 rows: four per job, each with its own paired latency probe.
    env = embedded_env(tmp_path / "var") | {"BEMQ_CANARY_RESAMPLES": "1000",
                                             "BEMQ_MAX_BATCH_SIZE": "50"}
    cfg = settings_for(env)
    with Client(cfg) as client:
        for name, experts, rank, chunk in (("fast", 2, 4, 32), ("slow", 8, 16, 1)):
            path = tmp_path / f"{name}.safetensors"
            path.write_bytes(make_adapter(client.model, experts=experts, rank=rank,
                                          b_std=0.02, routing=Routing(chunk=chunk)))
            client.add_adapter(name, path)
        worker = start_worker(env, client, tmp_path / "worker.log")
        try:
            canary = controller.start(client.store, cfg, model="minilm", stable="fast",
                                      canary="slow", steps=[50, 100], min_samples=60)
            for n in range(30):
                job = client.wait(client.submit_job(request_lines(
                    [f"where is my parcel number {n}-{i}, it is late" for i in range(200)],
                    model="minilm:fast", prefix=f"j{n}")).id, timeout=120)
                assert job.request_counts.failed == 0
                controller.step_all(client.store, cfg)
                if client.store.get_canary(canary.id).state != CanaryState.RUNNING:
                    break
        finally:
            worker.stop()
        ended = client.store.get_canary(canary.id)
        assert ended.state == CanaryState.ROLLED_BACK, client.store.decisions(canary.id)[-1]
        assert ended.reason.startswith("latency_p50_ratio")
        gates = client.store.decisions(canary.id)[-1].numbers["gates"]
        assert gates["latency_p50_ratio"]["low"] > 1.15
        assert gates["latency_p50_ratio"]["verdict"] == "fail"
        assert [g for g, v in gates.items() if v["verdict"] == "fail"] == ["latency_p50_ratio"]
        assert gates["error_rate_delta"]["verdict"] == gates["safety_violations"]["verdict"] \
            == "pass"
