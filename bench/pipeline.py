"""Pipeline benchmark: length bucketing vs FIFO, and the end-to-end cost of the queue.

Measured in one run on one machine, over a synthetic corpus with log-normal token lengths
(median ≈ 20, tail to 256):

- padding_efficiency_bucketed / _fifo: real ÷ padded tokens; FIFO = the same number of
  batches, of equal row count, in arrival order.
- model_speedup_bucketed_vs_fifo: items/s of direct model calls over those two batchings.
- pipeline_efficiency: items/s of a job through Redis + PostgreSQL + S3 (moto_server) + a real
  worker process, ÷ the direct bucketed items/s.
- status_poll_p95_ms: latency of Client.status against PostgreSQL while that job runs.

Usage: python bench/pipeline.py --json PATH [--items 10000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table

from ops.models import model_files
from ops.settings import Settings
from producers.client import Client
from producers.corpus import sentences, to_jsonl
from producers.local_worker import LocalWorker
from producers.packing import pack, pack_fifo, padding_efficiency
from producers.validate import validate_jsonl
from schemas.microbatch import Item
from tests.support import services
from tests.support.deploy import settings_for
from workers.runtime import Runtime

console = Console(stderr=True)


def time_batches(rt: Runtime, batches: list[list[Item]], label: str) -> float:
    """Seconds to embed every batch directly (no queue), after one warm-up call."""
    rt.embed(batches[0][0].texts)
    start = time.perf_counter()
    for n, batch in enumerate(batches, 1):
        rt.embed([t for item in batch for t in item.texts])
        if n % 10 == 0:
            console.print(f"  {label}: {n}/{len(batches)} batches", end="\r")
    console.print()
    return time.perf_counter() - start


def run_pipeline(texts: list[str], home: Path) -> tuple[float, list[float], int]:
    """Items/s of one job through Redis + PostgreSQL + S3 and a worker; poll latencies (ms)."""
    redis = services.redis_client()
    prefix = f"bemqbench-{uuid.uuid4().hex[:8]}:"
    pg = services.create_database()
    moto = services.MotoServer()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEMQ_")}
    env.update(BEMQ_HOME=str(home), BEMQ_BROKER_URL=services.REDIS_URL, BEMQ_REDIS_PREFIX=prefix,
               BEMQ_DATABASE_URL=pg, BEMQ_BLOB_URL=f"s3://bench-{uuid.uuid4().hex[:8]}/b",
               BEMQ_S3_ENDPOINT_URL=moto.url, BEMQ_POLL_INTERVAL="0.2",
               AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
               AWS_DEFAULT_REGION="us-east-1")
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    cfg = settings_for(env)
    from ops.blobs.s3 import S3Blobs

    bucket = cfg.blobs_url.split("/")[2]
    S3Blobs(bucket, endpoint_url=moto.url).ensure_bucket()
    worker = LocalWorker(env, home / "worker.log")
    polls: list[float] = []
    try:
        with Client(cfg) as client:
            worker.start().wait_ready(client.store)
            stop = threading.Event()
            start = time.perf_counter()
            job = client.submit_job(texts)
            poller = threading.Thread(target=_poll, args=(client, job.id, polls, stop))
            poller.start()
            job = client.wait(job.id, timeout=3600)
            elapsed = time.perf_counter() - start
            stop.set()
            poller.join()
            assert job.request_counts.completed == len(texts), job.request_counts
            return len(texts) / elapsed, polls, job.micro_batches
    finally:
        worker.stop()
        moto.stop()
        services.drop_database(pg)
        services.drop_prefix(redis, prefix)


def _poll(client: Client, job_id: str, out: list[float], stop: threading.Event) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        client.status(job_id)
        out.append((time.perf_counter() - t) * 1000)
        stop.wait(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the figures")
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--max-batch-tokens", type=int, default=Settings().max_batch_tokens)
    parser.add_argument("--max-batch-size", type=int, default=Settings().max_batch_size)
    args = parser.parse_args()

    model = model_files("minilm")
    texts = sentences(model, args.items, median_tokens=20, seed=1234)
    check = validate_jsonl(to_jsonl(texts, "minilm"), model=model, served="minilm",
                           max_lines=args.items, max_bytes=1 << 31)
    assert not check.errors, check.errors[:3]
    items = check.items
    lengths = [i.max_length for i in items]
    bucketed = pack(items, args.max_batch_tokens, args.max_batch_size)
    fifo = pack_fifo(items, math.ceil(len(items) / len(bucketed)))

    with tempfile.TemporaryDirectory() as tmp:
        rt = Runtime(Settings(home=Path(tmp)))
        console.print(f"direct model calls: {len(bucketed)} bucketed batches, {len(fifo)} FIFO")
        t_bucketed = time_batches(rt, bucketed, "bucketed")
        t_fifo = time_batches(rt, fifo, "fifo")
        direct_ips = len(items) / t_bucketed
        console.print("end-to-end job through Redis + PostgreSQL + S3 + worker")
        pipeline_ips, polls, n_micro = run_pipeline(texts, Path(tmp) / "pipeline")

    polls.sort()
    figures = {
        "items": len(items),
        "device": str(rt.device),
        "token_length_median": statistics.median(lengths),
        "token_length_max": max(lengths),
        "bucketed_batches": len(bucketed),
        "fifo_batches": len(fifo),
        "padding_efficiency_bucketed": round(padding_efficiency(bucketed), 4),
        "padding_efficiency_fifo": round(padding_efficiency(fifo), 4),
        "direct_items_per_s_bucketed": round(direct_ips, 1),
        "direct_items_per_s_fifo": round(len(items) / t_fifo, 1),
        "model_speedup_bucketed_vs_fifo": round(t_fifo / t_bucketed, 3),
        "pipeline_items_per_s": round(pipeline_ips, 1),
        "pipeline_micro_batches": n_micro,
        "pipeline_efficiency": round(pipeline_ips / direct_ips, 4),
        "status_polls": len(polls),
        "status_poll_p50_ms": round(polls[len(polls) // 2], 2),
        "status_poll_p95_ms": round(polls[int(len(polls) * 0.95)], 2),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    table = Table("figure", "value", title="bench/pipeline.py")
    for key, value in figures.items():
        table.add_row(key, str(value))
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
