"""The ops workers as deployed: a real `celery beat` (RedBeat) and an ops worker fire
`canary.step`, `drift.check`, `backup.run` and `backup.verify` on a shortened schedule against
Redis, PostgreSQL and the S3 endpoint, while a GPU worker serves jobs.

A healthy canary climbs to 100 %; a canary with NaN weights is rolled back automatically and no
item outside its share fails; drift reports and verified backups appear on schedule.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ops.backup import service as backup
from ops.canary.routing import arm_for
from producers.client import Client
from schemas.batch import JobStatus
from schemas.canary import Arm, Canary, CanaryState, Decision
from tests.support.deploy import request_lines, settings_for, start_worker
from tests.support.services import free_port
from workers.adapters import make_adapter

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]

SCHEDULE = {
    "BEMQ_CANARY_INTERVAL": "1", "BEMQ_DRIFT_INTERVAL": "2", "BEMQ_BACKUP_INTERVAL": "4",
    "BEMQ_BACKUP_VERIFY_INTERVAL": "6", "BEMQ_RECONCILE_INTERVAL": "2",
    "BEMQ_HEARTBEAT_SECONDS": "1", "BEMQ_CANARY_SHADOW_FRACTION": "0.5",
    "BEMQ_CANARY_MIN_SHADOW": "10", "BEMQ_CANARY_RESAMPLES": "500",
    "BEMQ_DRIFT_MIN_SAMPLES": "50",
    "BEMQ_MAX_BATCH_SIZE": "40",  # four micro-batches per job, each a paired latency probe
}
_ids = itertools.count()


@pytest.fixture
def production(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    from tests.conftest import production_env

    env = production_env(tmp_path / "var", request.getfixturevalue("redis_prefix"),
                         request.getfixturevalue("postgres_url"),
                         request.getfixturevalue("s3_url"), request.getfixturevalue("moto").url)
    return env | SCHEDULE


@contextlib.contextmanager
def deployed(env: dict[str, str], client: Client, tmp_path: Path,
             metrics_port: int) -> Iterator[None]:
    ops = start_worker(env | {"BEMQ_METRICS_PORT": str(metrics_port)}, client,
                       tmp_path / "ops.log", queues="ops", extra=("--beat",))
    gpu = start_worker(env, client, tmp_path / "gpu.log")
    try:
        yield
    finally:
        assert gpu.stop() == 0
        assert ops.stop() == 0


def until(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def bemq(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "producers.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_job(client: Client, adapter: str, n: int) -> tuple[list[dict], list[dict]]:
    batch = next(_ids)
    lines = request_lines([f"question {batch}-{i} about the order {i % 17}" for i in range(n)],
                          model=f"minilm:{adapter}", prefix=f"j{batch}")
    job = client.wait(client.submit_job(lines).id, timeout=180)
    assert job.status == JobStatus.COMPLETED
    return list(client.results(job.id)), list(client.errors(job.id))


def roll(client: Client, env: dict[str, str], canary_id: str, adapter: str,
         end: CanaryState) -> tuple[Canary, list[list[dict]]]:
    """Submit jobs for `adapter` until the canary reaches `end`; returns the error lines."""
    errors = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        c = client.store.get_canary(canary_id)
        assert c is not None
        if c.state == end:
            return c, errors
        assert c.state == CanaryState.RUNNING, c
        errors.append(run_job(client, adapter, 160)[1])
    raise AssertionError(f"canary never reached {end}: {bemq(env, 'canary', 'status')}")


def test_scheduled_canary_drift_and_backups(production: dict[str, str], tmp_path: Path) -> None:
    env = production
    cfg = settings_for(env)
    port = free_port()
    with Client(cfg) as client:
        for name, kw in (("support-v1", {"seed": 1}), ("support-v2", {"seed": 2}),
                         ("support-v3", {"seed": 3, "fill": float("nan")})):
            path = tmp_path / f"{name}.safetensors"
            path.write_bytes(make_adapter(client.model, experts=2, rank=4, b_std=0.02, **kw))
            client.add_adapter(name, path)

        with deployed(env, client, tmp_path, port):
            # A healthy canary climbs 25 → 50 → 100 on its own.
            out = bemq(env, "canary", "start", "--model", "minilm", "--stable", "support-v1",
                       "--canary", "support-v2", "--steps", "25,50,100", "--min-samples", "30")
            healthy = out.split()[0]
            c, errors = roll(client, env, healthy, "support-v1", CanaryState.PROMOTED)
            assert c.weight == 100 and not any(errors)
            decided = [d.decision for d in client.store.decisions(healthy)]
            assert decided[0] == Decision.START and decided[-1] == Decision.PROMOTE
            assert decided.count(Decision.ADVANCE) == 1
            advance = next(d for d in client.store.decisions(healthy)
                           if d.decision == Decision.ADVANCE)
            assert set(advance.numbers["gates"]) == {"error_rate_delta", "latency_p50_ratio",
                                                     "safety_violations", "shadow_agreement"}
            assert all(g["verdict"] == "pass" for g in advance.numbers["gates"].values())
            results, _ = run_job(client, "support-v1", 20)  # promoted: v2 serves v1's items
            assert len(results) == 20

            # A canary with NaN weights is rolled back; only its own items fail.
            out = bemq(env, "canary", "start", "--model", "minilm", "--stable", "support-v2",
                       "--canary", "support-v3", "--steps", "25,100", "--min-samples", "30")
            broken = out.split()[0]
            c, errors = roll(client, env, broken, "support-v2", CanaryState.ROLLED_BACK)
            assert c.weight == 0 and "safety_violations" in (c.reason or "")
            failed = [e for lines in errors for e in lines]
            assert failed, "the broken canary served no item"
            for line in failed:
                assert line["error"]["code"] == "invalid_output"
                assert arm_for(cfg.tenant, line["custom_id"], 25) == Arm.CANARY
            results, errs = run_job(client, "support-v2", 40)  # rolled back: all on stable
            assert len(results) == 40 and not errs
            status = json.loads(bemq(env, "canary", "status", broken, "--json"))
            assert status["canary"]["state"] == "rolled_back"
            assert [d["decision"] for d in status["decisions"]][-1] == "rollback"

            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                             timeout=5).read().decode()
            assert 'bem_canary_decisions_total{decision="rollback"} 1.0' in metrics
            assert re.search(r'bem_canary_weight\{canary="support-v3",stable="support-v2"\} 0\.0',
                             metrics)
            assert re.search(r'bem_canary_weight\{canary="support-v2",stable="support-v1"\} 100',
                             metrics)

            # drift.check and the backups ran on their own schedule meanwhile.
            until(lambda: client.store.drift_reports(cfg.model_name, limit=1), 30,
                  "a drift report")
            assert "drift_" in bemq(env, "drift", "report")
            verified = until(lambda: [m for m in backup.manifests(client.blobs)
                                      if (backup.verification(client.blobs, m.id) or {})
                                      .get("ok")], 60, "a verified backup")
            assert verified
            assert "ok" in bemq(env, "backup", "list")
