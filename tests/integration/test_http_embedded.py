"""The gateway on the embedded deployment (no servers): online requests through the store's
queue, rate limits from the store's token buckets, a batch through the OpenAI package."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import openai
import pytest

from ops import apikeys
from producers.client import Client
from tests.conftest import embedded_env
from tests.integration.test_http import Gateway, jsonl
from tests.support.deploy import settings_for, start_worker

pytestmark = pytest.mark.timeout(240)


def test_embedded_gateway(tmp_path: Path) -> None:
    env = embedded_env(tmp_path / "var") | {"BEMQ_RATE_LIMIT_PER_SECOND": "0.5",
                                             "BEMQ_RATE_LIMIT_BURST": "30"}
    with Client(settings_for(env)) as client:
        _, key = apikeys.create(client.store, "solo")
        worker = start_worker(env, client, tmp_path / "worker.log")
        gateway = Gateway(env, tmp_path / "gateway.log")
        try:
            api = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
            out = api.embeddings.create(model="minilm", input=["one", "two", "three"])
            assert [len(d.embedding) for d in out.data] == [384] * 3
            f = api.files.create(file=("in.jsonl", io.BytesIO(jsonl(12))), purpose="batch")
            batch = api.batches.create(input_file_id=f.id, endpoint="/v1/embeddings",
                                       completion_window="24h")
            deadline = time.monotonic() + 120
            while batch.status != "completed":
                assert time.monotonic() < deadline, batch
                time.sleep(2.2)  # within the 0.5/s limit on this endpoint
                batch = api.batches.retrieve(batch.id)
            assert batch.request_counts.completed == 12

            auth = {"Authorization": f"Bearer {key}"}
            began, granted = time.monotonic(), 0
            for _ in range(100):  # the burst of 30, then whatever refilled meanwhile, then 429
                reply = httpx.get(gateway.url + "/v1/batches", headers=auth)
                if reply.status_code != 200:
                    break
                granted += 1
            refilled = (time.monotonic() - began) * 0.5
            assert reply.status_code == 429, reply.text
            assert int(reply.headers["Retry-After"]) >= 1
            assert reply.json()["error"]["code"] == "rate_limit_exceeded"
            assert 30 <= granted <= 30 + refilled + 1, (granted, refilled)
        finally:
            gateway.stop()
            worker.stop()
