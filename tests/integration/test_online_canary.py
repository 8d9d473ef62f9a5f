"""Online traffic takes part in a canary rollout: `POST /v1/embeddings` for the stable version is
split by the same routes as batch items (sticky by the request's `user`), its outcomes count in
the gates, and a NaN canary served only online traffic is rolled back on its own schedule while
no stable request fails."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from ops import apikeys
from ops.canary import controller
from ops.canary.routing import point
from producers.client import Client
from schemas.canary import Arm, CanaryState, Decision
from tests.conftest import embedded_env
from tests.integration.test_http import Gateway
from tests.support.deploy import settings_for, start_worker
from workers.adapters import make_adapter

pytestmark = pytest.mark.timeout(300)


def test_nan_canary_on_online_traffic_only_is_rolled_back(tmp_path: Path) -> None:
    env = embedded_env(tmp_path / "var") | {"BEMQ_CANARY_INTERVAL": "1",
                                             "BEMQ_CANARY_RESAMPLES": "500"}
    cfg = settings_for(env)
    with Client(cfg) as client:
        _, key = apikeys.create(client.store, "acme")
        for n, (name, kw) in enumerate((("v1", {}), ("v2", {"fill": float("nan")}))):
            path = tmp_path / f"{name}.safetensors"
            path.write_bytes(make_adapter(client.model, seed=n, experts=2, rank=4, **kw))
            client.add_adapter(name, path)
        canary = controller.start(client.store, cfg, model="minilm", stable="v1", canary="v2",
                                  steps=[50, 100], min_samples=15)
        worker = start_worker(env, client, tmp_path / "worker.log")
        gateway = Gateway(env, tmp_path / "gateway.log")
        answers: dict[str, list[int]] = {"stable": [], "canary": []}
        try:
            auth = {"Authorization": f"Bearer {key}"}
            deadline = time.monotonic() + 180
            n = 0
            while client.store.get_canary(canary.id).state == CanaryState.RUNNING:
                assert time.monotonic() < deadline, client.store.decisions(canary.id)[-1]
                n += 1
                user = f"user-{n}"
                reply = httpx.post(gateway.url + "/v1/embeddings", headers=auth, timeout=60,
                                   json={"model": "minilm:v1", "input": f"question {n}",
                                         "user": user})
                arm = "canary" if point("acme", f"user:{user}") < 50 else "stable"
                answers[arm].append(reply.status_code)
            after = [httpx.post(gateway.url + "/v1/embeddings", headers=auth, timeout=60,
                                json={"model": "minilm:v1", "input": f"again {i}",
                                      "user": f"user-{i}"}).status_code for i in range(1, 21)]
        finally:
            gateway.stop()
            worker.stop()
        ended = client.store.get_canary(canary.id)
        assert ended.state == CanaryState.ROLLED_BACK, ended
        assert "safety_violations" in ended.reason, ended.reason
        decided = client.store.decisions(canary.id)
        assert decided[-1].decision == Decision.ROLLBACK
        assert decided[-1].numbers["samples"][Arm.STABLE.value] >= 15
        assert answers["stable"] and set(answers["stable"]) == {200}  # no stable one failed
        assert 500 in answers["canary"]  # the canary's NaN outputs were refused, not served
        assert set(after) == {200}  # rolled back: every user on stable
