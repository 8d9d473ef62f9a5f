"""The online path refuses early instead of waiting: no live worker answers 503 within a
second (decided from heartbeats), and a full queue (BEMQ_ONLINE_MAX_QUEUE) answers 429 with
Retry-After at once while the requests already queued are still answered."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ops import apikeys
from ops.online import OnlineRequest, QueueFull, RedisOnlineGateway, RedisOnlineQueue
from producers.client import Client
from tests.conftest import embedded_env
from tests.integration.test_http import Gateway
from tests.support.deploy import settings_for, start_worker
from tests.support.services import REDIS_URL

pytestmark = pytest.mark.timeout(240)


def test_no_worker_is_503_at_once_and_a_full_queue_is_429(tmp_path: Path) -> None:
    env = embedded_env(tmp_path / "var") | {"BEMQ_ONLINE_MAX_QUEUE": "2",
                                             "BEMQ_HEARTBEAT_SECONDS": "10"}
    with Client(settings_for(env)) as client:
        _, key = apikeys.create(client.store, "acme")
        gateway = Gateway(env, tmp_path / "gateway.log")
        worker = None
        try:
            auth = {"Authorization": f"Bearer {key}"}

            def embed(text: str) -> httpx.Response:
                return httpx.post(gateway.url + "/v1/embeddings", headers=auth, timeout=60,
                                  json={"model": "minilm", "input": text})

            began = time.monotonic()
            none = embed("anyone there?")
            assert time.monotonic() - began < 1.0
            assert none.status_code == 503 and none.json()["error"]["code"] == "no_worker"
            assert none.headers["Retry-After"]

            worker = start_worker(env, client, tmp_path / "worker.log")
            assert embed("hello").status_code == 200
            os.kill(worker.pid, signal.SIGSTOP)  # alive by its heartbeat, serving nothing
            try:
                with ThreadPoolExecutor(2, thread_name_prefix="bemq-test-client") as pool:
                    queued = [pool.submit(embed, f"queued {i}") for i in range(2)]
                    while client.store.online_waiting() < 2:
                        time.sleep(0.05)
                    began = time.monotonic()
                    full = embed("one too many")
                    assert time.monotonic() - began < 1.0
                    assert full.status_code == 429, full.text
                    assert full.json()["error"]["code"] == "queue_full"
                    assert full.headers["Retry-After"] == "1"
                    os.kill(worker.pid, signal.SIGCONT)
                    assert [f.result().status_code for f in queued] == [200, 200]
            finally:
                os.kill(worker.pid, signal.SIGCONT)
            metrics = httpx.get(gateway.url + "/metrics", headers=auth).text
            for outcome, count in (("no_worker", 1), ("queue_full", 1), ("admitted", 3)):
                assert f'bem_online_requests_total{{outcome="{outcome}"}} {count}.0' in metrics
        finally:
            gateway.stop()
            if worker is not None:
                worker.stop()


def test_redis_queue_bound_holds_across_gateways(redis_prefix: str) -> None:
    """On Redis the length check and the push are one script: two gateways racing for the
    last places never hold more than the bound between them."""
    def request(n: int) -> OnlineRequest:
        return OnlineRequest(id=f"r{n}", tenant="t", model="minilm", texts=["x"], adapter=None,
                             lengths=[3], enqueued_at=time.time())

    async def race() -> list[str]:
        gateways = [RedisOnlineGateway(REDIS_URL, redis_prefix) for _ in range(2)]
        calls = [gateways[n % 2].call(request(n), timeout=0.5, max_waiting=3)
                 for n in range(10)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        return ["full" if isinstance(o, QueueFull) else "waited" for o in outcomes]

    outcomes = asyncio.run(race())
    assert outcomes.count("waited") == 3 and outcomes.count("full") == 7
    worker_side = RedisOnlineQueue(REDIS_URL, redis_prefix)
    assert worker_side.redis.llen(worker_side.queue) == 3
    assert not worker_side.push(request(99), max_waiting=3)
