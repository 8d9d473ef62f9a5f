"""The online path refuses early instead of waiting: no live worker answers 503 within a
second (decided from heartbeats), and a full queue (BEMQ_ONLINE_MAX_QUEUE) answers 429 with
Retry-After at once while the requests already queued are still answered."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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


def refused_when_full(client: Client, embed: Callable[[str], httpx.Response],
                      pool: ThreadPoolExecutor, waiting: int, code: str
                      ) -> list[Future[httpx.Response]]:
    """Queue `waiting` calls from `pool`; once the store holds them, one more call is refused
    at once: 429 with `code` and `Retry-After: 1`. The queued calls' futures."""
    queued = [pool.submit(embed, f"queued {i}") for i in range(waiting)]
    until = time.monotonic() + 30
    while client.store.online_waiting() < waiting:
        assert time.monotonic() < until, [f.result().text for f in queued if f.done()]
        time.sleep(0.05)
    began = time.monotonic()
    refused = embed("one too many")
    assert time.monotonic() - began < 1.0
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == code
    assert refused.headers["Retry-After"] == "1"
    return queued


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
                    queued = refused_when_full(client, embed, pool, 2, "queue_full")
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


def test_calls_past_the_gateways_in_flight_bound_are_refused_before_they_queue(
        tmp_path: Path) -> None:
    """BEMQ_HTTP_MAX_IN_FLIGHT=2: with two calls waiting on a stalled worker, a third is refused
    at once (429 `overloaded`, Retry-After) without entering the queue; the two are answered."""
    env = embedded_env(tmp_path / "var") | {"BEMQ_HTTP_MAX_IN_FLIGHT": "2",
                                             "BEMQ_HEARTBEAT_SECONDS": "10"}
    with Client(settings_for(env)) as client:
        _, key = apikeys.create(client.store, "acme")
        gateway = Gateway(env, tmp_path / "gateway.log")
        worker = start_worker(env, client, tmp_path / "worker.log")
        try:
            auth = {"Authorization": f"Bearer {key}"}

            def embed(text: str) -> httpx.Response:
                return httpx.post(gateway.url + "/v1/embeddings", headers=auth, timeout=60,
                                  json={"model": "minilm", "input": text})

            assert embed("hello").status_code == 200
            os.kill(worker.pid, signal.SIGSTOP)
            try:
                with ThreadPoolExecutor(2, thread_name_prefix="bemq-test-client") as pool:
                    queued = refused_when_full(client, embed, pool, 2, "overloaded")
                    assert client.store.online_waiting() == 2  # the refused call never queued
                    os.kill(worker.pid, signal.SIGCONT)
                    assert [f.result().status_code for f in queued] == [200, 200]
            finally:
                os.kill(worker.pid, signal.SIGCONT)
            metrics = httpx.get(gateway.url + "/metrics", headers=auth).text
            assert 'bem_online_requests_total{outcome="overloaded"} 1.0' in metrics
            assert 'bem_requests_total{endpoint="/v1/embeddings",status="429"} 1.0' in metrics
        finally:
            gateway.stop()
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


def test_a_request_past_its_deadline_is_refused_and_a_gone_caller_withdrawn(
        tmp_path: Path) -> None:
    """With the live workers answering 2 requests/s and a 3-s deadline (half of it to wait, half
    for the forward), 3 requests may wait: a 4th is refused at once (429 `deadline`). A caller
    that disconnects is taken out of the queue at once, long before its deadline, so no worker
    computes it."""
    env = embedded_env(tmp_path / "var") | {"BEMQ_ONLINE_TIMEOUT_SECONDS": "3",
                                             "BEMQ_HEARTBEAT_SECONDS": "60"}
    with Client(settings_for(env)) as client:
        _, key = apikeys.create(client.store, "acme")
        # A worker's heartbeat row with its measured rate; no process serves the queue, so
        # what waits stays waiting.
        client.store.heartbeat("stand-in", os.getpid(), "online", "cpu", online_rps=2.0)
        gateway = Gateway(env, tmp_path / "gateway.log")
        try:
            auth = {"Authorization": f"Bearer {key}"}

            def embed(text: str, timeout: float = 60) -> httpx.Response:
                return httpx.post(gateway.url + "/v1/embeddings", headers=auth,
                                  timeout=timeout, json={"model": "minilm", "input": text})

            with ThreadPoolExecutor(3, thread_name_prefix="bemq-test-client") as pool:
                waiting = refused_when_full(client, embed, pool, 3, "deadline")
                assert [f.result().status_code for f in waiting] == [503] * 3  # timed out
            assert client.store.online_waiting() == 0

            with pytest.raises(httpx.ReadTimeout):
                embed("a caller who gives up", timeout=0.5)
            gave_up = time.monotonic()
            while client.store.online_waiting() > 0:
                assert time.monotonic() - gave_up < 1.5, "still queued after its caller left"
                time.sleep(0.05)
            metrics = httpx.get(gateway.url + "/metrics", headers=auth).text
            assert 'bem_online_dropped_total{reason="disconnected"} 1.0' in metrics
            assert 'bem_online_requests_total{outcome="deadline"} 1.0' in metrics
        finally:
            gateway.stop()


def test_redis_gateway_withdraws_a_cancelled_call(redis_prefix: str) -> None:
    """On Redis a call cancelled while queued (its client disconnected) leaves the queue."""
    request = OnlineRequest(id="gone", tenant="t", model="minilm", texts=["x"], adapter=None,
                            lengths=[3], enqueued_at=time.time())
    worker_side = RedisOnlineQueue(REDIS_URL, redis_prefix)

    async def scenario() -> int:
        gateway = RedisOnlineGateway(REDIS_URL, redis_prefix)
        call = asyncio.ensure_future(gateway.call(request, timeout=30, max_waiting=10))
        while worker_side.redis.llen(worker_side.queue) == 0:
            assert not call.done(), call.exception()
            await asyncio.sleep(0.01)
        call.cancel()
        await asyncio.wait({call})
        return worker_side.redis.llen(worker_side.queue)

    assert asyncio.run(asyncio.wait_for(scenario(), 20)) == 0


def test_a_worker_killed_under_load_leaves_no_request_hanging(tmp_path: Path) -> None:
    """Six clients keep calling; the only worker is killed. Every call ends with an answer or a
    refusal, none waits out the 30-s timeout: in-flight calls end once heartbeats say no worker
    is left, and later ones are refused at once."""
    env = embedded_env(tmp_path / "var") | {"BEMQ_HEARTBEAT_SECONDS": "1",
                                             "BEMQ_DEAD_AFTER_HEARTBEATS": "2",
                                             "BEMQ_RATE_LIMIT_PER_SECOND": "100000",
                                             "BEMQ_RATE_LIMIT_BURST": "100000"}
    with Client(settings_for(env)) as client:
        _, key = apikeys.create(client.store, "acme")
        gateway = Gateway(env, tmp_path / "gateway.log")
        worker = start_worker(env, client, tmp_path / "worker.log")
        calls: list[tuple[float, float, int, str]] = []
        try:
            auth = {"Authorization": f"Bearer {key}"}
            stop_at = time.monotonic() + 9

            def client_loop(n: int) -> None:
                i = 0
                while time.monotonic() < stop_at:
                    began = time.monotonic()
                    reply = httpx.post(gateway.url + "/v1/embeddings", headers=auth,
                                       timeout=60, json={"model": "minilm",
                                                         "input": f"client {n} call {i}"})
                    code = reply.json()["error"]["code"] if reply.status_code != 200 else ""
                    calls.append((began, time.monotonic(), reply.status_code, code))
                    i += 1

            with ThreadPoolExecutor(6, thread_name_prefix="bemq-test-client") as pool:
                loops = [pool.submit(client_loop, n) for n in range(6)]
                time.sleep(3)
                killed = time.monotonic()
                worker.kill()
                for loop in loops:
                    loop.result()
        finally:
            gateway.stop()
            worker.stop()
    assert {status for _, _, status, _ in calls} <= {200, 503}
    assert any(status == 200 and end < killed for _, end, status, _ in calls)
    assert max(end - began for began, end, _, _ in calls) < 6.0  # none waited out 30 s
    late = [(end - began, status, code) for began, end, status, code in calls
            if began > killed + 4.0]
    assert late and all(status == 503 and code == "no_worker" and took < 1.5
                        for took, status, code in late)
