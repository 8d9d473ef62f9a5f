"""Online benchmark: `/v1/embeddings` latency and throughput through a live gateway and a real
GPU worker, with and without dynamic batching, and a batch job's progress under online load.

All on loopback, in one run: Redis (private key prefix), a fresh PostgreSQL database, local blobs,
one `bemq serve` process and one worker process (restarted between configurations).

- online_p50_ms, online_p99_ms, online_rps: N clients, each sending one sentence per request,
  back to back, for D seconds, against the default dynamic batcher.
- online_batching_gain: online_rps ÷ the rps of the same load with max_queue_delay_ms=0 and
  batch size 1.
- batch_progress_under_online_load: a batch job's items/s while the N clients run ÷ its items/s
  alone.

Usage: python bench/online.py --json PATH [--clients 16] [--seconds 20] [--items 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from rich.console import Console
from rich.table import Table

from ops import apikeys
from producers.client import Client
from producers.corpus import sentences
from producers.local_worker import LocalWorker
from tests.support import services
from tests.support.deploy import settings_for

console = Console(stderr=True)


def start_gateway(env: dict[str, str], home: Path, processes: int = 1
                  ) -> tuple[subprocess.Popen[bytes], str]:
    port = services.free_port()
    with (home / "gateway.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "producers.cli", "serve", "--port",
                                 str(port), "--workers", str(processes)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("gateway did not start")


def deployment(name: str) -> tuple[Path, str, str, dict[str, str]]:
    """A fresh deployment's (home, Redis key prefix, PostgreSQL URL, environment): Redis +
    PostgreSQL + local blobs, rate limits out of the way, heartbeats every second."""
    home = Path(tempfile.mkdtemp(prefix=f"bemq-{name}-"))
    prefix = f"bemqbench-{uuid.uuid4().hex[:8]}:"
    pg = services.create_database()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEMQ_")}
    env.update(BEMQ_HOME=str(home), BEMQ_BROKER_URL=services.REDIS_URL,
               BEMQ_REDIS_PREFIX=prefix, BEMQ_DATABASE_URL=pg, BEMQ_POLL_INTERVAL="0.2",
               BEMQ_RATE_LIMIT_PER_SECOND="100000", BEMQ_RATE_LIMIT_BURST="100000",
               BEMQ_HEARTBEAT_SECONDS="1")
    return home, prefix, pg, env


def load(url: str, key: str, texts: list[str], clients: int, seconds: float,
         stop: threading.Event | None = None) -> tuple[list[float], int, float]:
    """N threads sending single sentences back to back; (latencies ms, errors, elapsed s)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(n: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                          timeout=60) as http:
            i = n
            while time.monotonic() < deadline and not (stop and stop.is_set()):
                started = time.perf_counter()
                r = http.post("/v1/embeddings", json={"model": "minilm",
                                                      "input": texts[i % len(texts)]})
                took = (time.perf_counter() - started) * 1000
                with lock:
                    if r.status_code == 200:
                        latencies.append(took)
                    else:
                        errors[0] += 1
                i += clients

    began = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0], time.monotonic() - began


def batch_job(client: Client, texts: list[str]) -> float:
    """Items/s of one batch job, from submit to completion."""
    started = time.monotonic()
    job = client.wait(client.submit_job(texts).id, timeout=1800)
    assert job.status.value == "completed", job
    return len(texts) / (time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--items", type=int, default=3000)
    args = parser.parse_args()

    home, prefix, pg, env = deployment("online")
    cfg = settings_for(env)
    client = Client(cfg)
    _, key = apikeys.create(client.store, "bench")
    texts = sentences(client.model, 2000, seed=11)
    job_texts = sentences(client.model, args.items, seed=12)
    gateway, url = start_gateway(env, home)
    results: dict[str, float] = {}
    try:
        def with_worker(extra: dict[str, str], label: str) -> LocalWorker:
            worker = LocalWorker(env | extra, home / f"worker-{label}.log").start()
            worker.wait_ready(client.store)
            load(url, key, texts, 2, 2.0)  # warm-up: first forwards, connections
            return worker

        console.print(f"[bold]dynamic batching[/]: {args.clients} clients × {args.seconds:g}s")
        worker = with_worker({}, "dynamic")
        lat, errs, took = load(url, key, texts, args.clients, args.seconds)
        lat.sort()
        results |= {"online_p50_ms": statistics.median(lat),
                    "online_p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
                    "online_rps": len(lat) / took, "online_errors": errs}

        console.print(f"[bold]batch job alone[/]: {args.items} items")
        alone = batch_job(client, job_texts)
        console.print("[bold]batch job under online load[/]")
        stop = threading.Event()
        holder: dict[str, tuple[list[float], int, float]] = {}
        loader = threading.Thread(target=lambda: holder.setdefault(
            "r", load(url, key, texts, args.clients, 3600, stop)))
        loader.start()
        time.sleep(1.0)
        under = batch_job(client, job_texts)
        stop.set()
        loader.join()
        worker.stop()
        results |= {"batch_items_per_s_alone": alone, "batch_items_per_s_under_load": under,
                    "batch_progress_under_online_load": under / alone,
                    "online_rps_during_batch_job": len(holder["r"][0]) / holder["r"][2]}

        console.print("[bold]no batching[/]: max_queue_delay_ms=0, batch size 1")
        worker = with_worker({"BEMQ_ONLINE_MAX_QUEUE_DELAY_MS": "0",
                              "BEMQ_ONLINE_MAX_BATCH_SIZE": "1"}, "single")
        lat1, _, took1 = load(url, key, texts, args.clients, args.seconds)
        worker.stop()
        results |= {"online_rps_unbatched": len(lat1) / took1,
                    "online_p50_ms_unbatched": statistics.median(lat1),
                    "online_batching_gain": results["online_rps"] / (len(lat1) / took1)}
    finally:
        gateway.terminate()
        gateway.wait(20)
        client.close()
        services.drop_database(pg)
        services.drop_prefix(services.redis_client(), prefix)

    results |= {"clients": args.clients, "seconds": args.seconds, "batch_items": args.items,
                "cpu_count": os.cpu_count() or 0}
    table = Table("metric", "value", title="online benchmark")
    for name, value in results.items():
        table.add_row(name, f"{value:.3f}" if isinstance(value, float) else str(value))
    Console().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
