"""Observability as operators meet it: `bemq flower` shows a live worker and its finished tasks
(HTTP API and /metrics); a real Prometheus server scrapes a live GPU worker, the ops worker
and the gateway on loopback and answers `bem_items_total` after a job."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from ops import apikeys
from producers.client import Client
from tests.conftest import production_env
from tests.integration.test_http import Gateway
from tests.support.deploy import request_lines, settings_for, start_worker
from tests.support.services import free_port

pytestmark = [pytest.mark.timeout(300)]


def until(probe: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict]:
    env = production_env(tmp_path / "var", request.getfixturevalue("redis_prefix"),
                         request.getfixturevalue("postgres_url"),
                         request.getfixturevalue("s3_url"), request.getfixturevalue("moto").url)
    env |= {"BEMQ_HEARTBEAT_SECONDS": "1"}
    ports = {"gpu": free_port(), "ops": free_port()}
    client = Client(settings_for(env))
    gpu = start_worker(env | {"BEMQ_METRICS_PORT": str(ports["gpu"])}, client,
                       tmp_path / "gpu.log")
    ops = start_worker(env | {"BEMQ_METRICS_PORT": str(ports["ops"])}, client,
                       tmp_path / "ops.log", queues="ops")
    try:
        yield {"env": env, "client": client, "ports": ports, "tmp": tmp_path}
    finally:
        gpu.stop()
        ops.stop()
        client.close()


def run_job(client: Client, n: int = 30) -> str:
    job = client.wait(client.submit_job(request_lines([f"watch me {i}" for i in range(n)])).id,
                      timeout=120)
    assert job.status.value == "completed"
    return job.id


def test_flower_shows_workers_and_finished_tasks(deployment: dict) -> None:
    port = free_port()
    log = (deployment["tmp"] / "flower.log").open("ab")
    flower = subprocess.Popen([sys.executable, "-m", "producers.cli", "flower", "--port",
                               str(port)], env=deployment["env"], stdout=log,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        until(lambda: httpx.get(url + "/healthcheck", timeout=2).status_code == 200, 60,
              "Flower")
        # A worker's heartbeat reaching Flower shows it receives events before the job runs.
        until(lambda: re.search(r'flower_worker_online\{worker="gpu\+online-[^"]*"\} 1\.0',
                                httpx.get(url + "/metrics", timeout=5).text), 60,
              "Flower receiving worker events")
        run_job(deployment["client"])
        workers = until(lambda: httpx.get(url + "/api/workers?refresh=1", timeout=10).json(),
                        60, "a worker in Flower")
        assert any(name.startswith("gpu+online-") for name in workers), workers
        tasks = until(lambda: {k: t for k, t in httpx.get(url + "/api/tasks", timeout=5)
                               .json().items() if t["name"] == "bemq.run_next"
                               and t["state"] == "SUCCESS"
                               and str(t["result"]).startswith("'run batch_")},
                      60, "a task that ran a micro-batch")
        task = next(iter(tasks.values()))
        assert task["worker"].startswith("gpu+online-")
        metrics = httpx.get(url + "/metrics", timeout=5).text
        assert 'flower_events_total{' in metrics and 'task="bemq.run_next"' in metrics
    finally:
        flower.terminate()
        flower.wait(20)
        log.close()


def test_prometheus_scrapes_workers_and_gateway(deployment: dict) -> None:
    exe = shutil.which("prometheus")
    if exe is None:
        if os.environ.get("BEMQ_REQUIRE_SERVICES") == "1":
            pytest.fail("prometheus is missing: install Debian's prometheus package")
        pytest.skip("prometheus is missing: install Debian's prometheus package to run this")
    client, tmp, ports = deployment["client"], deployment["tmp"], deployment["ports"]
    _, key = apikeys.create(client.store, "monitoring")
    gateway = Gateway(deployment["env"], tmp / "gateway.log")
    (tmp / "bemq-api-key").write_text(key)
    port = free_port()
    gateway_target = gateway.url.removeprefix("http://")
    (tmp / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: bemq-gpu-workers
    static_configs: [{{targets: ["127.0.0.1:{ports['gpu']}"]}}]
  - job_name: bemq-ops-worker
    static_configs: [{{targets: ["127.0.0.1:{ports['ops']}"]}}]
  - job_name: bemq-gateway
    authorization: {{type: Bearer, credentials_file: bemq-api-key}}
    static_configs: [{{targets: ["{gateway_target}"]}}]
""")
    log = (tmp / "prometheus.log").open("ab")
    server = subprocess.Popen([exe, f"--config.file={tmp / 'prometheus.yml'}",
                               f"--storage.tsdb.path={tmp / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{port}"],
                              stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1/query"

    def query(expr: str) -> list[dict]:
        body = httpx.get(api, params={"query": expr}, timeout=5).json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    try:
        client.store.set_tenant_weight(client.tenant, 2)  # listed even with nothing queued
        run_job(client)
        httpx.post(gateway.url + "/v1/embeddings", json={"model": "minilm", "input": "hi"},
                   headers={"Authorization": f"Bearer {key}"}, timeout=30).raise_for_status()
        items = until(lambda: query('sum(bem_items_total{outcome="completed"})'), 60,
                      "bem_items_total in Prometheus")
        assert float(items[0]["value"][1]) >= 31  # 30 batch items and 1 online request
        jobs = {"bemq-gpu-workers", "bemq-ops-worker", "bemq-gateway"}

        try:
            until(lambda: {r["metric"]["job"] for r in query("up == 1")} == jobs, 60,
                  f"every target up: {sorted(jobs)}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; targets now: {query('up')}") from None
        assert until(lambda: query('bem_requests_total{endpoint="/v1/embeddings",'
                                   'status="200"}'), 30, "gateway request metrics")
        assert until(lambda: query('bem_jobs{status="completed"} >= 1'), 30, "bem_jobs")
        assert until(lambda: query('bem_workers_alive{queue="gpu"} >= 1'), 30, "workers")
        assert query('bem_queue_depth{queue="gpu"}'), "queue depth is exported"
        assert query(f'bem_tenant_queued_items{{tenant="{client.tenant}"}} == 0'), \
            "per-tenant queue"
        assert query(f'bem_tenant_oldest_queued_seconds{{tenant="{client.tenant}"}} == 0')
    finally:
        server.terminate()
        server.wait(20)
        log.close()
        gateway.stop()
