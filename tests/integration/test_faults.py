"""Fault injection with real processes on private servers: whatever breaks mid-job, every item
ends exactly once in the output or the error file.

Recovery runs as in production: a GPU worker, an ops worker with beat (RedBeat on Redis) firing
`jobs.reconcile`, short leases so that lost work comes back within seconds.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.store import StoreUnavailable
from producers.client import Client
from producers.corpus import sentences
from schemas.batch import Job
from tests.conftest import embedded_env
from tests.support.deploy import (
    FAST_RECOVERY,
    assert_exactly_once,
    max_deliveries,
    running,
    settings_for,
    start_worker,
    wait_for,
)
from tests.support.private import PrivatePostgres, PrivateRedis
from tests.support.services import create_database, drop_database

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]

@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    yield server
    server.kill()


def fault_env(tmp_path: Path, redis_url: str, database_url: str) -> dict[str, str]:
    return embedded_env(tmp_path / "var") | FAST_RECOVERY | {
        "BEMQ_BROKER_URL": redis_url, "BEMQ_DATABASE_URL": database_url,
        "BEMQ_DB_RETRY_SECONDS": "60",
    }


def submit_and_start(client: Client, items: int, seed: int) -> Job:
    """Submit a job and return once its first items are done: the fault then hits mid-job."""
    job = client.submit_job(sentences(client.model, items, seed=seed))
    wait_for(lambda: client.status(job.id).request_counts.completed > 0, 120,
             "first completions")
    return job


def test_worker_killed_five_times_mid_batch(tmp_path: Path, private_redis: PrivateRedis) -> None:
    """kill -9 of the GPU worker in the middle of a micro-batch, five times in one job."""
    pg = create_database()
    env = fault_env(tmp_path, private_redis.url, pg)
    try:
        with Client(settings_for(env)) as client:
            with running(env, client, tmp_path, gpus=0):
                job = client.submit_job(sentences(client.model, 1500, seed=9))
                for kill in range(5):
                    worker = start_worker(env, client, tmp_path / f"gpu{kill}.log")
                    wait_for(lambda: "running" in client.store.micro_batch_summary(job.id),
                             60, "a running micro-batch")
                    worker.kill()
                final = start_worker(env, client, tmp_path / "gpu-final.log")
                try:
                    job = client.wait(job.id, timeout=300)
                finally:
                    final.stop()
            assert_exactly_once(client, job, 1500)
            assert max_deliveries(client, job.id) >= 2  # killed batches really came back
    finally:
        drop_database(pg)


def test_redis_restarted_empty_mid_job(tmp_path: Path, private_redis: PrivateRedis) -> None:
    """Redis loses every message mid-job; jobs.reconcile re-sends what the store says is
    pending, and the job completes with nothing lost or doubled."""
    pg = create_database()
    env = fault_env(tmp_path, private_redis.url, pg)
    try:
        with Client(settings_for(env)) as client:
            worker = start_worker(env, client, tmp_path / "gpu.log")
            try:
                job = submit_and_start(client, 800, seed=12)
                private_redis.restart_empty()
                with running(env, client, tmp_path, gpus=0):
                    job = client.wait(job.id, timeout=300)
            finally:
                worker.stop()
            assert_exactly_once(client, job, 800)
    finally:
        drop_database(pg)


def test_postgres_restarted_mid_job(tmp_path: Path, private_redis: PrivateRedis) -> None:
    """PostgreSQL goes down for a few seconds mid-job: workers and the polling client retry
    with backoff; the job completes exactly once. Kept down past the bound, a client gets a
    clear StoreUnavailable instead of hanging."""
    pg = PrivatePostgres()
    env = fault_env(tmp_path, private_redis.url, pg.url)
    try:
        with Client(settings_for(env)) as client:
            with running(env, client, tmp_path):
                job = submit_and_start(client, 800, seed=13)
                pg.stop()
                time.sleep(4)
                pg.start()
                job = client.wait(job.id, timeout=300)
            assert_exactly_once(client, job, 800)
        pg.stop()
        bounded = settings_for(env | {"BEMQ_DB_RETRY_SECONDS": "2"})
        start = time.monotonic()
        with pytest.raises(StoreUnavailable, match="PostgreSQL unreachable for 2s"):
            Client(bounded)
        assert time.monotonic() - start < 20
    finally:
        pg.close()


def test_two_beats_never_double_fire(tmp_path: Path, private_redis: PrivateRedis) -> None:
    """Two `celery beat` processes on one Redis: RedBeat's lock lets one fire, so over N
    intervals at most N+1 reconcile messages are sent, not 2N."""
    pg = create_database()
    env = fault_env(tmp_path, private_redis.url, pg) | {"BEMQ_RECONCILE_INTERVAL": "1"}
    beats = []
    try:
        for n in range(2):
            log = (tmp_path / f"beat{n}.log").open("wb")
            beats.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "workers.app", "beat", "--loglevel",
                 "INFO"], env=env, stdout=log, stderr=subprocess.STDOUT))
        import redis

        r = redis.Redis.from_url(private_redis.url)
        queue = env.get("BEMQ_REDIS_PREFIX", "bemq:") + "ops"
        wait_for(lambda: r.llen(queue) > 0, 60, "the first reconcile message")
        first = time.monotonic()
        start_count = r.llen(queue)
        time.sleep(8)
        fired = r.llen(queue) - start_count
        elapsed = time.monotonic() - first
        assert all(b.poll() is None for b in beats), "a beat process died"
        assert 1 <= fired <= elapsed / 1.0 + 1, (fired, elapsed)
    finally:
        for b in beats:
            b.terminate()
            b.wait(30)
        drop_database(pg)



def test_micro_batch_that_keeps_killing_workers_goes_dead(tmp_path: Path,
                                                         private_redis: PrivateRedis) -> None:
    """A micro-batch whose item crashes the worker process on every delivery is marked dead
    after BEMQ_MAX_DELIVERIES: its items land in the error file, the job ends, and
    `bemq status` shows the dead micro-batch."""
    pg = create_database()
    env = fault_env(tmp_path, private_redis.url, pg) | {
        "BEMQ_MODEL_CLASS": "tests.support.poison:CrashEncoder", "BEMQ_MAX_DELIVERIES": "2",
        "BEMQ_MAX_BATCH_SIZE": "8"}
    try:
        with Client(settings_for(env)) as client, running(env, client, tmp_path, gpus=0):
            texts = sentences(client.model, 64, seed=3)
            texts[17] = "this sentence will crash the worker"
            job = client.submit_job(texts)
            crashes = 0
            while not client.status(job.id).status.terminal:
                worker = start_worker(env, client, tmp_path / f"gpu{crashes}.log")
                proc = worker.proc
                assert proc is not None
                while proc.poll() is None and not client.status(job.id).status.terminal:
                    time.sleep(0.1)
                if proc.poll() is not None:
                    assert proc.returncode == 70
                    crashes += 1
                worker.stop()
                assert crashes <= 3, "the crashing micro-batch was never declared dead"
            job = client.status(job.id)
            assert crashes == 2
            assert job.dead_micro_batches == 1
            errors = list(client.errors(job.id))
            assert "item-17" in {e["custom_id"] for e in errors}
            assert {e["error"]["code"] for e in errors} == {"micro_batch_dead"}
            assert_exactly_once(client, job, 64)
            status = subprocess.run([sys.executable, "-m", "producers.cli", "status", job.id],
                                    env=env, capture_output=True, text=True, timeout=60)
            assert "(1 dead)" in status.stdout
    finally:
        drop_database(pg)


def test_s3_partitioned_mid_job(tmp_path: Path, private_redis: PrivateRedis, moto) -> None:  # type: ignore[no-untyped-def]
    """The S3 endpoint becomes unreachable for several seconds mid-job: shard writes fail, the
    micro-batch is retried later, the job completes exactly once, and the output file is
    published only whole."""
    from ops.blobs.s3 import S3Blobs
    from tests.support.proxy import TcpProxy

    proxy = TcpProxy(int(moto.url.rsplit(":", 1)[1]))
    bucket = f"bemq-fault-{int(time.time() * 1000)}"
    S3Blobs(bucket, endpoint_url=moto.url).ensure_bucket()
    pg = create_database()
    env = fault_env(tmp_path, private_redis.url, pg) | {
        "BEMQ_BLOB_URL": f"s3://{bucket}/data",
        "BEMQ_S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"}
    try:
        with Client(settings_for(env)) as client:
            with running(env, client, tmp_path):
                job = submit_and_start(client, 800, seed=14)
                proxy.cut()
                # Longer than botocore's standard retries can ride out (5 attempts, up to about
                # 15 s of backoff between them), so the outage reaches bemq as BlobsUnavailable.
                time.sleep(20)
                assert client.status(job.id).output_file_id is None
                proxy.restore()
                job = client.wait(job.id, timeout=300)
            assert_exactly_once(client, job, 800)
            log = (tmp_path / "gpu.log").read_text()
            assert "BlobsUnavailable" in log  # the outage was really hit
    finally:
        proxy.close()
        drop_database(pg)
