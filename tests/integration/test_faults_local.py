"""Faults a single worker must absorb on its own: running out of memory, and a warm shutdown
in the middle of a job."""

from __future__ import annotations

import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from producers.client import Client
from producers.corpus import sentences
from schemas.batch import JobStatus
from tests.conftest import embedded_env
from tests.support.deploy import settings_for, start_worker
from tests.support.services import free_port

pytestmark = pytest.mark.timeout(300)


def scrape(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    match = re.search(rf"^{name} (\S+)$", body, re.MULTILINE)
    assert match, f"{name} not exported"
    return float(match.group(1))


def test_out_of_memory_splits_and_lowers_the_budget(tmp_path: Path) -> None:
    """With forwards over 300 padded tokens failing as out of memory, every item still
    completes; the worker counts its splits and keeps a budget under the failing size."""
    port = free_port()
    env = embedded_env(tmp_path / "var") | {"BEMQ_SIMULATE_OOM_ABOVE_TOKENS": "300",
                                            "BEMQ_METRICS_PORT": str(port)}
    with Client(settings_for(env)) as client:
        worker = start_worker(env, client, tmp_path / "worker.log")
        try:
            job = client.wait(client.submit_job(sentences(client.model, 300, seed=4)).id,
                              timeout=240)
            assert job.status == JobStatus.COMPLETED
            assert job.request_counts.completed == 300 and job.request_counts.failed == 0
            assert scrape(port, "bem_worker_oom_splits_total") >= 1
            assert scrape(port, "bem_worker_token_budget") <= 300
            assert 0 < scrape(port, "bem_worker_busy_ratio") <= 1
        finally:
            worker.stop()


def test_warm_shutdown_finishes_the_current_micro_batch(tmp_path: Path) -> None:
    """SIGTERM mid-job: the worker exits 0 after its current micro-batch, nothing is left
    running or half-done, and a new worker completes the job with every item exactly once."""
    env = embedded_env(tmp_path / "var") | {"BEMQ_MAX_BATCH_SIZE": "32"}
    with Client(settings_for(env)) as client:
        worker = start_worker(env, client, tmp_path / "worker1.log")
        job = client.submit_job(sentences(client.model, 600, seed=8))
        deadline = time.monotonic() + 120
        while client.status(job.id).request_counts.completed == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        worker.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert worker.proc.wait(120) == 0  # type: ignore[union-attr]
        summary = client.store.micro_batch_summary(job.id)
        assert "running" not in summary, summary
        assert summary.get("queued", 0) > 0  # it stopped before the end
        second = start_worker(env, client, tmp_path / "worker2.log")
        try:
            job = client.wait(job.id, timeout=240)
        finally:
            second.stop()
        assert job.status == JobStatus.COMPLETED and job.request_counts.completed == 600
        ids = [line["custom_id"] for line in client.results(job.id)]
        assert len(ids) == len(set(ids)) == 600
