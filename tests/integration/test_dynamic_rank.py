"""A rank budget reaches the workers from both front doors: a batch line's `body.rank` and an
online request's `rank` give the same vectors, which differ from the full-rank ones; a budget
above the adapter's rank, or for the base model, is refused by name."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from ops import apikeys
from producers.client import Client
from tests.conftest import embedded_env
from tests.integration.test_http import Gateway
from tests.support.deploy import settings_for, start_worker
from workers.adapters import make_adapter

pytestmark = pytest.mark.timeout(300)
TEXT = "a sentence about routed adapters, served at a smaller rank"


def test_a_rank_budget_through_batch_and_online(tmp_path: Path) -> None:
    env = embedded_env(tmp_path / "var")
    cfg = settings_for(env)
    with Client(cfg) as client:
        _, key = apikeys.create(client.store, "acme")
        path = tmp_path / "a.safetensors"
        path.write_bytes(make_adapter(client.model, seed=7, b_std=0.05))
        client.add_adapter("a", path)
        worker = start_worker(env, client, tmp_path / "worker.log")
        gateway = Gateway(env, tmp_path / "gateway.log")
        try:
            job = client.submit_job([{"custom_id": "full", "input": TEXT},
                                     {"custom_id": "r2", "input": TEXT, "rank": 2}],
                                    model="minilm:a")
            done = client.wait(job.id, timeout=120)
            assert done.request_counts.completed == 2, done
            batch = {r["custom_id"]: np.array(r["response"]["body"]["data"][0]["embedding"])
                     for r in client.results(job.id)}
            auth = {"Authorization": f"Bearer {key}"}

            def online(**body: object) -> httpx.Response:
                return httpx.post(gateway.url + "/v1/embeddings", headers=auth, timeout=60,
                                  json={"model": "minilm:a", "input": TEXT, **body})

            served = online(rank=2)
            assert served.status_code == 200, served.text
            vector = np.array(served.json()["data"][0]["embedding"])
            over, base = online(rank=9), online(rank=2, model="minilm")
        finally:
            gateway.stop()
            worker.stop()
    assert np.allclose(vector, batch["r2"], atol=1e-5)
    assert np.abs(batch["r2"] - batch["full"]).max() > 1e-3
    assert over.status_code == 400 and over.json()["error"]["param"] == "rank"
    assert "9 is above adapter 'a''s rank 8" in over.json()["error"]["message"]
    assert base.status_code == 400 and "needs an adapter" in base.json()["error"]["message"]
