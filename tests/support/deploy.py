"""Helpers to run a client and real workers for one test deployment environment."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from ops.settings import Settings
from producers.client import Client
from producers.local_worker import LocalWorker
from schemas.batch import Job, JobStatus

# Short leases, frequent reconcile and heartbeats: lost work comes back within seconds.
FAST_RECOVERY = {
    "BEMQ_LEASE_SECONDS": "4",
    "BEMQ_RECONCILE_INTERVAL": "1",
    "BEMQ_REQUEUE_AFTER_SECONDS": "3",
    "BEMQ_VISIBILITY_TIMEOUT": "20",
    "BEMQ_HEARTBEAT_SECONDS": "1",
    "BEMQ_MAX_BATCH_SIZE": "32",
    "BEMQ_MAX_DELIVERIES": "10",
}


def settings_for(env: dict[str, str]) -> Settings:
    """The Settings a process started with `env` would read."""
    return Settings(**{k[5:].lower(): v for k, v in env.items()
                       if k.startswith("BEMQ_") and k != "BEMQ_REQUIRE_SERVICES"})


def start_worker(env: dict[str, str], client: Client, log: Path, **kw: object) -> LocalWorker:
    worker = LocalWorker(env, log, **kw).start()  # type: ignore[arg-type]
    try:
        worker.wait_ready(client.store)
    except Exception:
        worker.kill()
        raise
    return worker


@contextlib.contextmanager
def running(env: dict[str, str], client: Client, logs: Path, *,
            gpus: int = 1) -> Iterator[list[LocalWorker]]:
    """An ops worker with beat (jobs.reconcile and the other scheduled tasks) and `gpus` GPU
    workers (logs gpu.log, gpu1.log, ...), yielded; all stopped afterwards, also the killed."""
    started = [start_worker(env, client, logs / "ops.log", queues="ops", extra=("--beat",))]
    try:
        for n in range(gpus):
            started.append(start_worker(env, client, logs / f"gpu{n or ''}.log"))
        yield started[1:]
    finally:
        for worker in reversed(started):
            worker.stop()


def request_lines(texts: list[str], model: str = "minilm", prefix: str = "r") -> list[dict]:
    return [{"custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/embeddings",
             "body": {"model": model, "input": t}} for i, t in enumerate(texts)]


def assert_exactly_once(client: Client, job: Job, expected: int) -> None:
    """The job completed and every item is in the output or the error file exactly once."""
    assert job.status == JobStatus.COMPLETED, job
    counts = job.request_counts
    assert counts.completed + counts.failed == counts.total == expected
    seen = Counter(line["custom_id"] for line in client.results(job.id))
    seen.update(line["custom_id"] for line in client.errors(job.id))
    assert len(seen) == expected and max(seen.values()) == 1


def max_deliveries(client: Client, job_id: str) -> int:
    with client.store.tx() as cur:
        return int(cur.execute("SELECT MAX(deliveries) FROM micro_batches WHERE job_id = ?",
                               (job_id,)).fetchone()[0])


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
