"""Recovery benchmark: how long lost work takes to come back after `kill -9` of a GPU worker
mid-batch, with every delivery setting at its default (lease 300 s, heartbeat 5 s, dead after
3 heartbeats, reconcile every 10 s).

- embedded: `bemq worker` processes only (filesystem broker, SQLite, local blobs); the worker is
  killed, then a fresh one started. Seconds from the fresh worker's launch until the killed
  micro-batch is done again (`embedded_recovered_after_start_s`) and until the job completes
  (`embedded_complete_after_start_s`).
- redis: Redis + PostgreSQL (local blobs), celery beat in an ops worker, two GPU workers; one
  is killed. Seconds from the kill (`redis_recovered_after_kill_s`,
  `redis_complete_after_kill_s`).

Every run checks that each item ended exactly once. Usage:
python bench/recovery.py --json PATH [--items 3000] [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table

from ops.models import model_files
from producers.client import Client
from producers.corpus import sentences
from producers.local_worker import LocalWorker
from schemas.batch import JobStatus
from tests.support import services
from tests.support.deploy import settings_for

console = Console(stderr=True)


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEMQ_")}
    env.update(BEMQ_HOME=str(home), BEMQ_POLL_INTERVAL="0.1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return env


def started(env: dict[str, str], client: Client, log: Path, **kw: object) -> LocalWorker:
    worker = LocalWorker(env, log, **kw).start()  # type: ignore[arg-type]
    worker.wait_ready(client.store)
    return worker


def kill_mid_batch(client: Client, victim: LocalWorker, job_id: str, after: int) -> int:
    """Wait until `after` items are done and the victim runs a micro-batch's forward (not one
    only claimed ahead); kill -9 it there.
    Returns the killed micro-batch's seq."""
    name = f"{socket.gethostname()}-{victim.pid}"
    while True:
        with client.store.tx() as cur:
            row = cur.execute("SELECT seq FROM micro_batches WHERE job_id = ? AND state = ? "
                              "AND worker = ? AND deliveries > finished_forwards",
                              (job_id, "running", name)).fetchone()
        if row and client.status(job_id).request_counts.completed >= after:
            victim.kill()
            return int(row[0])
        time.sleep(0.01)


def watch(client: Client, job_id: str, seq: int, since: float) -> tuple[float, float]:
    """Seconds from `since` until micro-batch `seq` is done and until the job is complete."""
    recovered = None
    while True:
        if recovered is None:
            with client.store.tx() as cur:
                state = cur.execute("SELECT state FROM micro_batches WHERE job_id = ? AND seq = ?",
                                    (job_id, seq)).fetchone()[0]
            if state == "done":
                recovered = time.monotonic() - since
        job = client.status(job_id)
        if job.status.terminal:
            assert job.status == JobStatus.COMPLETED, job
            assert recovered is not None
            return recovered, time.monotonic() - since
        time.sleep(0.05)


def exactly_once(client: Client, job_id: str, items: int) -> None:
    seen = Counter(line["custom_id"] for line in client.results(job_id))
    seen.update(line["custom_id"] for line in client.errors(job_id))
    assert len(seen) == items and max(seen.values()) == 1, "an item was lost or doubled"


def run_embedded(texts: list[str], home: Path) -> tuple[float, float]:
    env = base_env(home)
    with Client(settings_for(env)) as client:
        first = started(env, client, home / "worker1.log")
        job = client.submit_job(texts)
        seq = kill_mid_batch(client, first, job.id, len(texts) // 3)
        launch = time.monotonic()
        second = LocalWorker(env, home / "worker2.log").start()
        try:
            figures = watch(client, job.id, seq, launch)
        finally:
            second.stop()
        exactly_once(client, job.id, len(texts))
    return figures


def run_redis(texts: list[str], home: Path) -> tuple[float, float]:
    redis = services.redis_client()
    prefix = f"bemqbench-{uuid.uuid4().hex[:8]}:"
    pg = services.create_database()
    env = base_env(home) | {"BEMQ_BROKER_URL": services.REDIS_URL, "BEMQ_REDIS_PREFIX": prefix,
                            "BEMQ_DATABASE_URL": pg}
    workers: list[LocalWorker] = []
    try:
        with Client(settings_for(env)) as client:
            workers.append(started(env, client, home / "ops.log", queues="ops",
                                   extra=("--beat",)))
            victim = started(env, client, home / "victim.log")
            workers.append(started(env, client, home / "other.log"))
            job = client.submit_job(texts)
            seq = kill_mid_batch(client, victim, job.id, len(texts) // 3)
            figures = watch(client, job.id, seq, time.monotonic())
            exactly_once(client, job.id, len(texts))
        return figures
    finally:
        for w in workers:
            w.stop()
        services.drop_database(pg)
        services.drop_prefix(redis, prefix)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the figures")
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    runs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.runs):
            texts = sentences(model_files("minilm"), args.items, seed=100 + n)
            for deployment, run in (("embedded", run_embedded), ("redis", run_redis)):
                console.print(f"run {n + 1}/{args.runs}: {deployment}")
                recovered, complete = run(texts, Path(tmp) / f"{deployment}-{n}")
                since = "start" if deployment == "embedded" else "kill"
                runs.setdefault(f"{deployment}_recovered_after_{since}_s", []).append(recovered)
                runs.setdefault(f"{deployment}_complete_after_{since}_s", []).append(complete)
    figures: dict[str, object] = {"items": args.items, "runs": args.runs}
    for key, values in runs.items():
        figures[key] = round(max(values), 2)
        figures[key.removesuffix("_s") + "_each_s"] = [round(v, 2) for v in values]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    table = Table("figure (worst of the runs)", "seconds", "each run", title="bench/recovery.py")
    for key, values in runs.items():
        table.add_row(key, f"{max(values):.2f}", ", ".join(f"{v:.2f}" for v in values))
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
