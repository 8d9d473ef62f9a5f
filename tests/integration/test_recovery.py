"""Lost work comes back on its own, and in seconds: a worker's death is told by its silent
heartbeat, not by a lease running out, on the embedded default (workers only, no beat, no ops
worker) and on Redis + PostgreSQL with beat. A slow worker that still heartbeats keeps its lease.

Leases keep their default length (BEMQ_LEASE_SECONDS, 300 s) here, longer than any of these
tests may take: whatever brings the work back, it is not the lease running out.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from producers.client import Client
from producers.corpus import sentences
from producers.local_worker import LocalWorker
from tests.conftest import embedded_env
from tests.support.deploy import (
    assert_exactly_once,
    max_deliveries,
    running,
    settings_for,
    start_worker,
    wait_for,
)
from tests.support.private import PrivateRedis
from tests.support.services import create_database, drop_database

pytestmark = [pytest.mark.timeout(280), pytest.mark.slow]

LEASE_SECONDS = 300.0
QUICK_HEARTBEATS = {"BEMQ_HEARTBEAT_SECONDS": "1", "BEMQ_RECONCILE_INTERVAL": "1",
                    "BEMQ_MAX_BATCH_SIZE": "32"}


def holds_a_lease(client: Client, worker: LocalWorker, job_id: str) -> bool:
    """Whether `worker` is running one of the job's micro-batches right now: holds its lease
    and has begun its forward (a worker also holds micro-batches claimed ahead)."""
    name = f"{socket.gethostname()}-{worker.pid}"
    with client.store.tx() as cur:
        row = cur.execute("SELECT COUNT(*) FROM micro_batches WHERE job_id = ? AND state = ? "
                          "AND worker = ? AND deliveries > finished_forwards",
                          (job_id, "running", name)).fetchone()
    return bool(row and row[0])


def test_embedded_restart_after_kill_recovers_at_once(tmp_path: Path) -> None:
    """Embedded default, `bemq worker` processes only: kill -9 mid-batch, start a fresh worker;
    the killed micro-batch is re-sent at its start-up (its holder's pid is gone) and the job
    completes exactly once, long before the killed lease would have run out."""
    env = embedded_env(tmp_path / "var") | {"BEMQ_MAX_BATCH_SIZE": "32"}
    with Client(settings_for(env)) as client:
        first = start_worker(env, client, tmp_path / "worker1.log")
        job = client.submit_job(sentences(client.model, 1200, seed=21))
        wait_for(lambda: client.status(job.id).request_counts.completed > 0
                 and holds_a_lease(client, first, job.id), 120, "a running micro-batch")
        first.kill()
        second = start_worker(env, client, tmp_path / "worker2.log")
        started = time.monotonic()
        try:
            job = client.wait(job.id, timeout=LEASE_SECONDS / 2)
        finally:
            second.stop()
        assert time.monotonic() - started < LEASE_SECONDS / 2
        assert_exactly_once(client, job, 1200)
        assert max_deliveries(client, job.id) == 2  # the killed micro-batch ran again, once
        assert "start-up reconcile" in (tmp_path / "worker2.log").read_text()


def test_embedded_survivor_takes_over_the_schedule(tmp_path: Path) -> None:
    """Two embedded workers; the one holding the worker schedule is killed mid-batch. The
    survivor takes the schedule over, ends the dead worker's lease once its heartbeats stop,
    and completes the job exactly once, with no process started after the kill."""
    env = embedded_env(tmp_path / "var") | QUICK_HEARTBEATS
    with Client(settings_for(env)) as client:
        holder = start_worker(env, client, tmp_path / "holder.log")
        wait_for(lambda: "running the worker schedule" in holder.tail(200), 60,
                 "the first worker to take the schedule")
        survivor = start_worker(env, client, tmp_path / "survivor.log")
        try:
            job = client.submit_job(sentences(client.model, 1500, seed=22))
            wait_for(lambda: holds_a_lease(client, holder, job.id), 120,
                     "a micro-batch on the schedule's holder")
            holder.kill()
            job = client.wait(job.id, timeout=LEASE_SECONDS / 2)
        finally:
            survivor.stop()
        assert_exactly_once(client, job, 1500)
        assert max_deliveries(client, job.id) == 2
        assert "running the worker schedule" in survivor.tail(400)


@pytest.fixture
def private_redis(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = PrivateRedis(tmp_path / "redis")
    yield server
    server.kill()


def production_recovery_env(tmp_path: Path, redis_url: str, database_url: str) -> dict[str, str]:
    return embedded_env(tmp_path / "var") | QUICK_HEARTBEATS | {
        "BEMQ_BROKER_URL": redis_url, "BEMQ_DATABASE_URL": database_url}


def test_redis_killed_worker_recovers_without_its_lease(tmp_path: Path,
                                                        private_redis: PrivateRedis) -> None:
    """Redis + PostgreSQL, beat and an ops worker, two GPU workers: one is killed mid-batch.
    Its lease ends with its heartbeat; the other completes the job exactly once."""
    pg = create_database()
    env = production_recovery_env(tmp_path, private_redis.url, pg)
    try:
        with Client(settings_for(env)) as client:
            with running(env, client, tmp_path, gpus=2) as (victim, _):
                job = client.submit_job(sentences(client.model, 1200, seed=23))
                wait_for(lambda: holds_a_lease(client, victim, job.id), 120,
                         "a micro-batch on the victim")
                victim.kill()
                job = client.wait(job.id, timeout=LEASE_SECONDS / 2)
            assert_exactly_once(client, job, 1200)
            assert max_deliveries(client, job.id) == 2
    finally:
        drop_database(pg)


def test_slow_live_worker_keeps_its_lease(tmp_path: Path, private_redis: PrivateRedis) -> None:
    """A worker whose forwards take three times as long as a worker's death takes to tell
    (SlowEncoder: 3 s; dead after 3 × 0.5 s) keeps heartbeating, so keeps its leases: with
    reconcile every half second and a second worker idle, no micro-batch runs twice."""
    pg = create_database()
    env = production_recovery_env(tmp_path, private_redis.url, pg) | {
        "BEMQ_MODEL_CLASS": "tests.support.poison:SlowEncoder", "BEMQ_HEARTBEAT_SECONDS": "0.5",
        "BEMQ_RECONCILE_INTERVAL": "0.5", "BEMQ_MAX_BATCH_SIZE": "16"}
    try:
        with Client(settings_for(env)) as client:
            with running(env, client, tmp_path, gpus=2):
                job = client.wait(client.submit_job(sentences(client.model, 64, seed=24)).id,
                                  timeout=200)
            assert_exactly_once(client, job, 64)
            assert job.micro_batches >= 4
            assert max_deliveries(client, job.id) == 1
            assert "held by workers silent" not in (tmp_path / "ops.log").read_text()
    finally:
        drop_database(pg)
