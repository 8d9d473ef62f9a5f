"""Soak benchmark: many concurrent submitters and pollers against real workers for minutes.

4 GPU-queue worker processes and an ops worker with beat (jobs.reconcile) on Redis +
PostgreSQL (+ local or S3 blobs); 20 submitter threads create jobs of 50–2,000 items
(log-uniform) until at least `--jobs` jobs exist and `--min-seconds` have passed; pollers call
Client.status at `--polls-per-s`. Everything is bounded in count and time and talks to loopback
only. Then every job's output and error files are read back and every custom_id counted.

Keys: items_submitted, items_accounted (must be equal), duplicates (must be 0),
job_p95_completion_s, status_poll_p95_ms, worker_rss_growth_mb (RSS after the run minus RSS
after the first finished job, summed over workers).

With `--retention SECONDS` every retention (input and output files, finished jobs, drift, canary
samples) is set to that and `retention.run` runs every 10 s: each job's files are read back as
soon as it finishes (inside its retention), and the store's bytes (PostgreSQL's
`pg_database_size`) and the blob store's bytes are sampled every 10 s. `store_bytes_max_dev` and
`blob_bytes_max_dev` are the largest deviation of a sample from the mean of the samples taken
from 2 × retention + 60 s until submissions stop at `--min-seconds` (the plateau), as a fraction.
`retained_blob_bytes_max_dev` is the same for the blobs of finished jobs only (the blob store
less the input files of unfinished jobs and all output shards): what retention governs, apart
from the work in flight, which follows the load.

With `--store sqlite` it runs the embedded default instead: SQLite, the filesystem broker and one
worker process that also runs every beat entry; the store's bytes are the database file and its
write-ahead log.

With `--steady ITEMS_PER_S` one submitter sends jobs of `--job-items` on a fixed schedule
instead (open loop), so that the work in flight is stationary and what moves is retention's.

Usage: python bench/soak.py --json PATH [--jobs 200] [--min-seconds 300] [--blobs local|s3]
       [--retention 120] [--steady 80 --job-items 200] [--store sqlite --workers 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops.blobs import BlobNotFound
from ops.keys import file_key
from ops.store.sqlite import SqliteStore
from producers.client import Client
from producers.corpus import sentences
from producers.local_worker import LocalWorker
from tests.support import services
from tests.support.deploy import settings_for


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


class Soak:
    def __init__(self, args: argparse.Namespace, client: Client) -> None:
        self.args = args
        self.client = client
        self.lock = threading.Lock()
        self.jobs: dict[str, tuple[float, int]] = {}  # id -> (submitted at, items)
        self.inputs: dict[str, str] = {}  # job id -> blob key of its input file
        self.done: dict[str, float] = {}  # id -> first seen terminal
        self.polls: list[float] = []
        self.seen: Counter[str] = Counter()  # custom_id@job -> lines found in its files
        self.read_back: set[str] = set()
        self.stop = threading.Event()
        self.start = time.monotonic()
        self.pool = sentences(client.model, 4000, seed=99)
        self.skipped = 0  # steady arrivals not submitted: too many jobs in flight

    def enough(self) -> bool:
        elapsed = time.monotonic() - self.start
        return (len(self.jobs) >= self.args.jobs and elapsed >= self.args.min_seconds) \
            or elapsed >= self.args.max_seconds

    def submitter(self, n: int) -> None:
        rng = random.Random(n)
        while not self.stop.is_set() and not self.enough():
            with self.lock:
                active = len(self.jobs) - len(self.done)
            if active >= self.args.max_active:
                time.sleep(0.2)
                continue
            size = int(math.exp(rng.uniform(math.log(50), math.log(2000))))
            texts = [self.pool[rng.randrange(len(self.pool))] for _ in range(size)]
            job = self.client.submit_job(texts, metadata={"soak": str(n)})
            with self.lock:
                self.jobs[job.id] = (time.monotonic(), size)
                self.inputs[job.id] = file_key(job.input_file_id or "")

    def steady_submitter(self) -> None:
        """Open-loop arrivals: a job of `--job-items` every `job_items / steady` seconds, on
        schedule whatever the workers do (a job due while `--max-active` are in flight is
        skipped and counted), so the data in flight and the data retained are stationary."""
        rng = random.Random(0)
        interval = self.args.job_items / self.args.steady
        due = time.monotonic()
        while not self.stop.is_set() and not self.enough():
            self.stop.wait(max(0.0, due - time.monotonic()))
            due += interval
            with self.lock:
                active = len(self.jobs) - len(self.done)
            if active >= self.args.max_active:
                self.skipped += 1
                continue
            texts = [self.pool[rng.randrange(len(self.pool))]
                     for _ in range(self.args.job_items)]
            job = self.client.submit_job(texts, metadata={"soak": "steady"})
            with self.lock:
                self.jobs[job.id] = (time.monotonic(), self.args.job_items)
                self.inputs[job.id] = file_key(job.input_file_id or "")

    def poller(self, rate: float) -> None:
        rng = random.Random()
        while not self.stop.is_set():
            with self.lock:  # finished jobs are not polled (retention may delete them)
                ids = [j for j in self.jobs if j not in self.done]
            if ids:
                job_id = rng.choice(ids)
                t = time.perf_counter()
                job = self.client.status(job_id)
                took = time.perf_counter() - t
                with self.lock:
                    self.polls.append(took * 1000)
                    if job.status.terminal and job_id not in self.done:
                        self.done[job_id] = time.monotonic()
            self.stop.wait(1.0 / rate)

    def reader(self) -> None:
        """Read every finished job's output and error files once, right after it ends."""
        while not self.stop.is_set():
            with self.lock:
                todo = [j for j in self.done if j not in self.read_back]
            for job_id in todo:
                self.read(job_id)
            self.stop.wait(0.5)

    def read(self, job_id: str) -> None:
        lines = Counter(f"{line['custom_id']}@{job_id}" for line in self.client.results(job_id))
        lines.update(f"{line['custom_id']}@{job_id}" for line in self.client.errors(job_id))
        with self.lock:
            self.seen.update(lines)
            self.read_back.add(job_id)


def store_bytes(client: Client) -> int:
    """PostgreSQL's `pg_database_size`; SQLite's database file with its write-ahead log."""
    if isinstance(client.store, SqliteStore):
        wal = Path(f"{client.store.path}-wal")
        return client.store.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    with client.store.tx() as cur:
        return int(cur.execute("SELECT pg_database_size(current_database())").fetchone()[0])


def table_bytes(client: Client) -> dict[str, int]:
    """Each table's bytes with its indexes and TOAST, the system catalogs' too: which one a
    store's growth is in (PostgreSQL only)."""
    if isinstance(client.store, SqliteStore):
        return {}
    with client.store.tx() as cur:
        rows = cur.execute("SELECT relname, pg_total_relation_size(oid) FROM pg_class"
                           " WHERE relkind = 'r'").fetchall()
    return {name: int(size) for name, size in rows}


def blob_bytes(client: Client, in_flight: set[str]) -> tuple[int, int]:
    """(all bytes, bytes of work in flight: the input files of unfinished jobs and every
    job's output shards)."""
    total = flight = 0
    for key in client.blobs.list(""):
        with contextlib.suppress(BlobNotFound):  # removed since the listing (a job's shards)
            size = client.blobs.size(key)
            total += size
            if key in in_flight or key.startswith("jobs/"):
                flight += size
    return total, flight


def plateau_deviation(samples: list[tuple[float, int]], after: float, until: float
                      ) -> float | None:
    steady = [v for t, v in samples if after <= t <= until]
    if len(steady) < 3:
        return None
    mean = sum(steady) / len(steady)
    return round(max(abs(v / mean - 1) for v in steady), 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--min-seconds", type=float, default=300)
    parser.add_argument("--max-seconds", type=float, default=2400)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--submitters", type=int, default=20)
    parser.add_argument("--polls-per-s", type=float, default=200)
    parser.add_argument("--max-active", type=int, default=40, help="jobs in flight at most")
    parser.add_argument("--blobs", choices=["local", "s3"], default="local")
    parser.add_argument("--store", choices=["postgres", "sqlite"], default="postgres",
                        help="sqlite: the embedded default (SQLite, filesystem broker, one "
                        "worker process that also runs the beat entries); --workers must be 1")
    parser.add_argument("--steady", type=float, default=0,
                        help="items/s arriving on schedule as jobs of --job-items, from one "
                        "submitter (0: --submitters closed-loop submitters, jobs of 50–2,000)")
    parser.add_argument("--job-items", type=int, default=200)
    parser.add_argument("--retention", type=float, default=0,
                        help="seconds every retention is set to (0: the defaults)")
    args = parser.parse_args()
    embedded = args.store == "sqlite"
    if embedded and args.workers != 1:
        parser.error("--store sqlite runs the embedded default: one worker (--workers 1)")

    home = Path(f"/tmp/bemq-soak-{uuid.uuid4().hex[:8]}")
    redis = None if embedded else services.redis_client()
    prefix = f"bemqsoak-{uuid.uuid4().hex[:8]}:"
    pg = None if embedded else services.create_database()
    moto = services.MotoServer() if args.blobs == "s3" else None
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEMQ_")}
    env.update(BEMQ_HOME=str(home), BEMQ_RECONCILE_INTERVAL="10",
               BEMQ_TORCH_THREADS=str(max(1, (os.cpu_count() or 1) // args.workers)))
    if pg is not None:
        env.update(BEMQ_BROKER_URL=services.REDIS_URL, BEMQ_REDIS_PREFIX=prefix,
                   BEMQ_DATABASE_URL=pg, BEMQ_DB_POOL_SIZE="16")
    if args.retention:
        keep = str(int(args.retention))
        env.update(BEMQ_RETAIN_INPUT_FILES=keep, BEMQ_RETAIN_OUTPUT_FILES=keep,
                   BEMQ_RETAIN_JOBS=keep, BEMQ_RETAIN_DRIFT=keep, BEMQ_RETAIN_CANARY_SAMPLES=keep,
                   BEMQ_RETAIN_ONLINE_REQUESTS=keep, BEMQ_DRIFT_WINDOW_SECONDS=keep,
                   BEMQ_RETENTION_INTERVAL="10")
    if moto is not None:
        env.update(BEMQ_BLOB_URL=f"s3://soak-{uuid.uuid4().hex[:8]}/d",
                   BEMQ_S3_ENDPOINT_URL=moto.url, AWS_ACCESS_KEY_ID="soak",
                   AWS_SECRET_ACCESS_KEY="soak", AWS_DEFAULT_REGION="us-east-1")
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    cfg = settings_for(env)
    if moto is not None:
        from ops.blobs.s3 import S3Blobs

        S3Blobs(cfg.blobs_url.split("/")[2], endpoint_url=moto.url).ensure_bucket()
    workers = [LocalWorker(env, home / f"gpu{n}.log") for n in range(args.workers)]
    # Embedded, the one worker runs every beat entry itself (BEMQ_WORKER_SCHEDULE=auto).
    ops = [] if embedded else [LocalWorker(env, home / "ops.log", queues="ops", extra=("--beat",))]
    try:
        with Client(cfg) as client:
            for w in [*workers, *ops]:
                w.start()
            for w in [*workers, *ops]:
                w.wait_ready(client.store)
            soak = Soak(args, client)
            if args.steady:
                threads = [threading.Thread(target=soak.steady_submitter, daemon=True)]
            else:
                threads = [threading.Thread(target=soak.submitter, args=(n,), daemon=True)
                           for n in range(args.submitters)]
            pollers = [threading.Thread(target=soak.poller, args=(args.polls_per_s / 4,),
                                        daemon=True) for _ in range(4)]
            pollers.append(threading.Thread(target=soak.reader, daemon=True))
            for t in [*threads, *pollers]:
                t.start()
            rss_start: list[float] | None = None
            rss_samples: list[tuple[float, float]] = []
            bytes_samples: list[tuple[float, int, int, int]] = []
            tables: list[tuple[float, dict[str, int]]] = []
            while True:
                time.sleep(1)
                second = int(time.monotonic() - soak.start)
                if second % 30 == 0:
                    rss_samples.append((second, round(sum(rss_mb(w.pid) for w in workers), 1)))
                if second % 10 == 0:
                    with soak.lock:
                        in_flight = {k for j, k in soak.inputs.items() if j not in soak.done}
                    bytes_samples.append((second, store_bytes(client),
                                          *blob_bytes(client, in_flight)))
                    tables.append((second, table_bytes(client)))
                with soak.lock:
                    submitted, finished = len(soak.jobs), len(soak.done)
                if rss_start is None and finished:
                    rss_start = [rss_mb(w.pid) for w in workers]
                elapsed = time.monotonic() - soak.start
                print(f"\r{elapsed:6.0f}s  jobs submitted {submitted}  finished {finished}",
                      end="", file=sys.stderr)
                if soak.enough() and not any(t.is_alive() for t in threads) \
                        and finished >= submitted:
                    break
                if elapsed > args.max_seconds + 600:
                    raise TimeoutError("soak did not drain within its time bound")
            while len(soak.read_back) < len(soak.done):
                time.sleep(0.5)
            soak.stop.set()
            for t in pollers:
                t.join()
            rss_end = [rss_mb(w.pid) for w in workers]
            wall = time.monotonic() - soak.start
            print(file=sys.stderr)

            submitted_items = sum(size for _, size in soak.jobs.values())
            accounted = len(soak.seen)
            duplicates = sum(c - 1 for c in soak.seen.values())
            completion = [soak.done[j] - t0 for j, (t0, _) in soak.jobs.items()]
    finally:
        for w in [*workers, *ops]:
            w.stop()
        if moto is not None:
            moto.stop()
        if pg is not None:
            services.drop_database(pg)
        if redis is not None:
            services.drop_prefix(redis, prefix)

    figures = {
        "wall_s": round(wall, 1), "workers": args.workers, "submitters": args.submitters,
        "blobs": args.blobs, "store": args.store, "jobs": len(soak.jobs),
        "items_submitted": submitted_items, "items_accounted": accounted,
        "duplicates": duplicates, "items_per_s": round(submitted_items / wall, 1),
        "job_p50_completion_s": round(percentile(completion, 0.5), 2),
        "job_p95_completion_s": round(percentile(completion, 0.95), 2),
        "status_polls": len(soak.polls),
        "status_polls_per_s": round(len(soak.polls) / wall, 1),
        "status_poll_p50_ms": round(percentile(soak.polls, 0.5), 2),
        "status_poll_p95_ms": round(percentile(soak.polls, 0.95), 2),
        "worker_rss_start_mb": [round(x, 1) for x in rss_start or []],
        "worker_rss_end_mb": [round(x, 1) for x in rss_end],
        "worker_rss_growth_mb": round(sum(rss_end) - sum(rss_start or rss_end), 1),
        "worker_rss_total_mb_over_time": rss_samples,
        "steady_items_per_s": args.steady or None, "steady_skipped": soak.skipped,
        "retention_s": args.retention or None,
        "store_bytes_over_time": [(t, s) for t, s, _, _ in bytes_samples],
        "blob_bytes_over_time": [(t, b) for t, _, b, _ in bytes_samples],
        "blob_bytes_in_flight_over_time": [(t, f) for t, _, _, f in bytes_samples],
    }
    if args.retention:
        after = 2 * args.retention + 60
        # The plateau: from two retentions in until submissions stop (then the work drains).
        figures["plateau_s"] = [after, args.min_seconds]
        figures["store_bytes_max_dev"] = plateau_deviation(
            [(t, s) for t, s, _, _ in bytes_samples], after, args.min_seconds)
        figures["blob_bytes_max_dev"] = plateau_deviation(
            [(t, b) for t, _, b, _ in bytes_samples], after, args.min_seconds)
        # What retention governs: the blobs of finished jobs (the rest is work in flight,
        # which follows the load, not retention).
        figures["retained_blob_bytes_max_dev"] = plateau_deviation(
            [(t, b - f) for t, _, b, f in bytes_samples], after, args.min_seconds)
        # The tables that grew most over the plateau, with their bytes at its start and end:
        # where a store's growth is.
        steady = [sizes for t, sizes in tables if after <= t <= args.min_seconds]
        if steady:
            first, last = steady[0], steady[-1]
            figures["table_bytes_plateau_first_last"] = {
                name: [first.get(name, 0), last[name]]
                for name in sorted(last, key=lambda n: first.get(n, 0) - last[n])[:12]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0 if accounted == submitted_items and duplicates == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
