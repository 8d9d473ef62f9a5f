"""Capacity of one PostgreSQL and one Redis: how many GPU workers they carry, measured with no
model at all and then extrapolated.

N load-generator processes each do, per micro-batch, the store and broker work a GPU worker does
(`workers.runner`): consume a dispatch message (kombu on Redis, acknowledged once the claim
holds), claim the micro-batch the store puts next (`Store.claim_next`: the dispatch lock, fair
share, the window refilled), publish the refill's messages, count the forward begun
(`begin_forward`) and complete it (`complete`); and each heartbeats every second, as workers do.
Besides each call's time, the claim's hold of the store's dispatch lock (`Claims.locked_seconds`,
what serialises every worker's claims), and from it the serial ceiling of micro-batches/s; and
how long each claim waited for the lock behind the others' (`Claims.lock_wait_seconds`).
Each level runs once per claim size (`--claim-sizes`: micro-batches one message claims, as
`BEMQ_CLAIM_SIZE`), side by side, with the ratio of completions/s to a claim size of 1.
The micro-batches are real ones: a job of the demo corpus packed by the producer (`--batch-size`
items each), copied inside PostgreSQL as often as a level needs. A second phase runs the broker
alone (publish and consume, no store). Per N: completions/s, broker messages/s, p50/p99 of every
call, and the CPU cores PostgreSQL and Redis used.

All on this machine: the generator shares its two cores with both servers, so the figures are
the floor of what dedicated servers do. A private `redis-server` (so its CPU is its own) and a
fresh database on the local PostgreSQL.

Usage: python bench/capacity.py --json PATH [--levels 1,2,4,8] [--claim-sizes 1,8] [--seconds 8]
    [--batch-size 256]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from multiprocessing.synchronize import Barrier
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kombu import Connection
from rich.console import Console
from rich.table import Table

from bench.proc import named_cpu_seconds
from bench.report import report
from ops.fairshare import DispatchOrder
from ops.store import Window, open_store
from ops.store.base import ANALYZE_AFTER_MICRO_BATCHES
from producers.client import Client
from producers.corpus import sentences
from schemas.batch import Job, JobStatus
from tests.support import services
from tests.support.deploy import settings_for
from tests.support.private import PrivateRedis

console = Console(stderr=True)
QUEUE = "capacity"
WINDOW = Window(per_worker=2, live_within=3.0)
LEASE, MAX_DELIVERIES = 60.0, 10


def broker(url: str) -> Connection:
    return Connection(url, transport_options={"visibility_timeout": 600})


def generator(n: int, pg: str, url: str, seconds: float, store_too: bool, claim_size: int,
              out: mp.Queue, ready: Barrier) -> None:
    """One simulated GPU worker for `seconds` from the moment every one of them is connected
    (`ready`); puts (completions, messages, latencies by call)."""
    store = open_store(pg, pool_size=2) if store_too else None
    name = f"capacity-{n}-{os.getpid()}"
    lat: dict[str, list[float]] = {"consume": [], "publish": [], "claim": [], "lock": [],
                                   "lock_wait": [], "begin_forward": [], "complete": []}
    done = messages = 0
    stop = threading.Event()

    def heartbeat() -> None:
        while store is not None and not stop.wait(1.0):
            store.heartbeat(name, os.getpid(), "gpu,online", "cpu")

    if store is not None:
        store.heartbeat(name, os.getpid(), "gpu,online", "cpu")
        threading.Thread(target=heartbeat, name="capacity-heartbeat", daemon=True).start()
    with broker(url) as conn:
        queue = conn.SimpleQueue(QUEUE)
        conn.ensure_connection()
        last = None
        ready.wait()
        until = time.time() + seconds
        while time.time() < until:
            t = time.perf_counter()
            try:
                msg = queue.get(block=True, timeout=0.5)
            except queue.Empty:
                continue
            lat["consume"].append(time.perf_counter() - t)
            messages += 1
            if store is None:  # broker alone: the message goes round again
                t = time.perf_counter()
                queue.put(msg.payload)
                msg.ack()
                lat["publish"].append(time.perf_counter() - t)
                messages += 1
                done += 1
                continue
            t = time.perf_counter()
            got = store.claim_next(msg.payload, name, LEASE, MAX_DELIVERIES,
                                   DispatchOrder.SHARE, WINDOW, claim_size)
            lat["claim"].append(time.perf_counter() - t)
            if got.claims:
                lat["lock"].append(got.locked_seconds)
                lat["lock_wait"].append(got.lock_wait_seconds)
            msg.ack()
            for token in got.tokens:
                t = time.perf_counter()
                queue.put(token)
                lat["publish"].append(time.perf_counter() - t)
                messages += 1
            for claim in got.claims:
                mb = claim.micro_batch
                assert mb is not None
                t = time.perf_counter()
                store.begin_forward(mb.job_id, mb.seq, name, last, claim.rank[0])
                lat["begin_forward"].append(time.perf_counter() - t)
                last = (mb.job_id, mb.seq)
                t = time.perf_counter()
                store.complete(mb.job_id, mb.seq, len(mb.items), 0)
                lat["complete"].append(time.perf_counter() - t)
                done += 1
        queue.close()
    stop.set()
    if store is not None:
        store.forget_worker(name)
        store.close()
    out.put((done, messages, lat))


def seed(store, template: str, copies: int) -> str:  # type: ignore[no-untyped-def]
    """A job of `copies` × the template job's micro-batches, queued, copied inside PostgreSQL."""
    job = Job(id=f"batch_{uuid.uuid4().hex}", status=JobStatus.VALIDATING, tenant="capacity",
              model="minilm", endpoint="/v1/embeddings", input_file_id="file_capacity",
              completion_window="24h", created_at=int(time.time()))
    store.create_job(job)
    with store.tx() as cur:
        per = cur.execute("SELECT COUNT(*), SUM(rows) FROM micro_batches WHERE job_id = ?",
                          (template,)).fetchone()
        cur.execute(
            "INSERT INTO micro_batches (job_id, seq, state, items, tokens, rows, real_tokens, "
            "padded_tokens, enqueued_at) SELECT ?, mb.seq + c.k * ?, 'queued', mb.items, "
            "mb.tokens, mb.rows, mb.real_tokens, mb.padded_tokens, ? FROM micro_batches mb "
            "CROSS JOIN generate_series(0, ? - 1) AS c(k) WHERE mb.job_id = ?",
            (job.id, per[0], time.time(), copies, template))
        cur.execute("UPDATE jobs SET status = 'in_progress', total = ?, micro_batches = ? "
                    "WHERE id = ?", (per[1] * copies, per[0] * copies, job.id))
    if per[0] * copies >= ANALYZE_AFTER_MICRO_BATCHES:  # as `Store.start_job` does
        store.analyze_micro_batches()
    return job.id


def level(n: int, seconds: float, pg: str, url: str, store_too: bool,
          claim_size: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    # The clock starts once every process has started up and connected: spawning eight on two
    # cores took longer than a fixed head start, and their window had ended before they ran.
    ready = ctx.Barrier(n + 1, timeout=300)
    procs = [ctx.Process(target=generator,
                         args=(k, pg, url, seconds, store_too, claim_size, out, ready),
                         name=f"capacity-{k}") for k in range(n)]
    for p in procs:
        p.start()
    ready.wait()
    start = time.time()
    cpu_before = {"pg": named_cpu_seconds("postgres"), "redis": named_cpu_seconds("redis-server")}
    results = [out.get(timeout=seconds + 120) for _ in procs]
    elapsed = time.time() - start
    cpu = {"pg": named_cpu_seconds("postgres") - cpu_before["pg"],
           "redis": named_cpu_seconds("redis-server") - cpu_before["redis"]}
    for p in procs:
        p.join(30)
    lat: dict[str, list[float]] = {}
    for _, _, part in results:
        for call, values in part.items():
            lat.setdefault(call, []).extend(values)
    row = {"processes": n, "completions_per_s": sum(r[0] for r in results) / elapsed,
           "messages_per_s": sum(r[1] for r in results) / elapsed,
           "postgres_cores": cpu["pg"] / elapsed, "redis_cores": cpu["redis"] / elapsed}
    for call, values in lat.items():
        if values:
            values.sort()
            row[f"{call}_p50_ms"] = 1000 * statistics.median(values)
            row[f"{call}_p99_ms"] = 1000 * values[min(len(values) - 1, int(0.99 * len(values)))]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--levels", default="1,2,4,8")
    parser.add_argument("--claim-sizes", default="1,8")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    levels = [int(v) for v in args.levels.split(",")]
    sizes = [int(v) for v in args.claim_sizes.split(",")]
    if sizes[0] != 1 or any(k < 1 for k in sizes):
        parser.error("--claim-sizes: the first must be 1 (the others are compared with it)")

    home = Path(tempfile.mkdtemp(prefix="bemq-capacity-"))
    redis = PrivateRedis(home / "redis")
    pg = services.create_database()
    env = {"BEMQ_HOME": str(home), "BEMQ_DATABASE_URL": pg, "BEMQ_BROKER_URL": "memory://",
           "BEMQ_MAX_BATCH_SIZE": str(args.batch_size)}
    rows: list[dict[str, float]] = []
    try:
        with Client(settings_for(env)) as client:
            template = client.submit_job(sentences(client.model, args.batch_size * 20,
                                                   seed=31)).id
            client.cancel(template)  # its rows stay, as the copies' source
            store = client.store
            with store.tx() as cur:
                items = cur.execute("SELECT SUM(rows) * 1.0 / COUNT(*) FROM micro_batches "
                                    "WHERE job_id = ?", (template,)).fetchone()[0]
            items = float(items)
            # A first guess of completions/s for each claim size, then the best seen: the
            # job seeded for a level holds half as much again as that rate would complete.
            rates = {k: 150.0 * k for k in sizes}
            for n in levels:
                for k in [*sizes, 0]:  # 0: the broker alone
                    store_too = k > 0
                    with store.tx() as cur:
                        cur.execute("DELETE FROM dispatch_tokens")
                    job = None
                    if store_too:
                        job = seed(store, template,
                                   max(2, int(rates[k] * args.seconds * 1.5 / 20)))
                    with broker(redis.url) as conn:
                        queue = conn.SimpleQueue(QUEUE)
                        queue.clear()
                        store.heartbeat("capacity-seed", os.getpid(), "gpu", "cpu")
                        tokens = store.top_up(Window(2 * n, WINDOW.live_within)) \
                            if store_too else [uuid.uuid4().hex for _ in range(2 * n)]
                        store.forget_worker("capacity-seed")
                        for token in tokens:
                            queue.put(token)
                        queue.close()
                    row = level(n, args.seconds, pg, redis.url, store_too, max(k, 1))
                    row["store"], row["claim_size"] = float(store_too), float(k)
                    if store_too:
                        rates[k] = max(rates[k], row["completions_per_s"])
                        if not store.micro_batch_summary(job).get("queued"):
                            console.print(f"[yellow]N={n}, claim size {k}: the seeded job ran "
                                          "out; its rate is a floor[/yellow]")
                        with store.tx() as cur:
                            cur.execute("DELETE FROM jobs WHERE id = ?", (job,))
                    rows.append(row)
                    console.print({key: round(v, 2) for key, v in row.items()})
    finally:
        services.drop_database(pg)
        redis.kill()

    table = Table("N", "claim size", "completions/s", "÷ claim size 1", "claim p50/p99 ms",
                  "lock held p50/p99 ms", "lock wait p50/p99 ms", "complete p50/p99 ms",
                  "messages/s", "PG cores",
                  "Redis cores", "broker alone msg/s",
                  title=f"one PostgreSQL + one Redis, {items:.0f} items a micro-batch")
    figures: dict[str, object] = {"items_per_micro_batch": items, "cpu_count": os.cpu_count()}
    for n in levels:
        alone = next(r for r in rows if r["processes"] == n and not r["store"])
        base = next(r for r in rows if r["processes"] == n and r["claim_size"] == 1)
        for k in sizes:
            both = next(r for r in rows if r["processes"] == n and r["claim_size"] == k)
            ratio = both["completions_per_s"] / base["completions_per_s"]
            table.add_row(str(n), str(k), f"{both['completions_per_s']:,.0f}", f"{ratio:.2f}",
                          f"{both['claim_p50_ms']:.1f} / {both['claim_p99_ms']:.1f}",
                          f"{both['lock_p50_ms']:.1f} / {both['lock_p99_ms']:.1f}",
                          f"{both['lock_wait_p50_ms']:.1f} / {both['lock_wait_p99_ms']:.1f}",
                          f"{both['complete_p50_ms']:.1f} / {both['complete_p99_ms']:.1f}",
                          f"{both['messages_per_s']:,.0f}", f"{both['postgres_cores']:.2f}",
                          f"{both['redis_cores']:.2f}",
                          f"{alone['messages_per_s']:,.0f}" if k == 1 else "")
            figures |= {f"k{k}_n{n}_{key}": v for key, v in both.items()
                        if key not in ("processes", "store", "claim_size")}
            if k != 1:
                figures[f"k{k}_n{n}_completions_ratio_to_k1"] = ratio
        figures[f"n{n}_broker_alone_messages_per_s"] = alone["messages_per_s"]
        figures[f"n{n}_broker_alone_redis_cores"] = alone["redis_cores"]
    Console(stderr=True).print(table)
    stored = [r for r in rows if r["store"]]
    best = max(stored, key=lambda r: r["completions_per_s"])
    figures["store_completions_per_s_max"] = best["completions_per_s"]
    figures["store_completions_processes"] = best["processes"]
    figures["store_completions_claim_size"] = best["claim_size"]
    figures["broker_messages_per_s_max"] = max(r["messages_per_s"] for r in rows
                                               if not r["store"])
    # The claim holds the dispatch row lock for its whole transaction, so claims are serial:
    # the lock's hold with no other claim waiting (the first level) bounds the turns per second
    # of any number of workers, and a turn of claim size k claims k micro-batches.
    for k in sizes:
        alone_claim = next(r for r in stored if r["processes"] == levels[0]
                           and r["claim_size"] == k)
        figures[f"k{k}_lock_serial_ceiling_micro_batches_per_s"] = \
            k * 1000 / alone_claim["lock_p50_ms"]
    report(args.json, figures, "capacity (bench/capacity.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
