"""Fair-share benchmark: one worker, the real model, the embedded default, measured in one run.

- small_job_wait_ratio: a 20-item job's completion time (submit to `wait` returning, polled
  every 50 ms) while another tenant's 5,000-item job runs, ÷ the same job's completion time on
  the idle system (medians of `--small-runs` each; the small jobs behind are submitted one after
  another while the big job runs). `arrival_small_job_wait_ratio`: one such job in arrival
  order (BEMQ_DISPATCH_ORDER=arrival), which waits out the whole big job.
- share_error: tenants of weights 1 and 3 with the same backlog (`--share-items` each, submitted
  one right after the other): over the middle half of the time both have work waiting (the
  heavier one's first claim to its last), |the light tenant's share of the texts completed −
  0.25| (the heavy one's error is the same number); the largest over the share-order runs.
  `share_error_window_max` is the largest such deviation over windows of `--window`
  consecutive micro-batches in that half, for the short-term picture.
- fair_throughput_ratio: texts/s of that two-tenant work with the fair dispatcher ÷ texts/s of
  the same work in arrival order (BEMQ_DISPATCH_ORDER=arrival), `--rounds` runs of each in ABBA
  order, each on a fresh worker and store; texts/s from the first claim to the last completion.

Usage: python bench/fairness.py --json PATH [--big-items 5000] [--share-items 8000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console

from bench.report import report
from producers.client import Client
from producers.corpus import sentences
from producers.local_worker import LocalWorker
from schemas.batch import JobStatus
from tests.support.deploy import settings_for

console = Console(stderr=True)
SMALL_ITEMS = 20


@contextlib.contextmanager
def deployment(home: Path, order: str) -> Iterator[dict[str, str]]:
    """An embedded deployment with one GPU worker (its log under `home`), yielding its env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEMQ_")}
    env.update(BEMQ_HOME=str(home), BEMQ_POLL_INTERVAL="0.05", BEMQ_DISPATCH_ORDER=order,
               PYTHONPATH=str(Path.cwd()))
    worker = LocalWorker(env, home / "worker.log").start()
    try:
        with Client(settings_for(env)) as client:
            console.print(f"{order}: worker ready in {worker.wait_ready(client.store):.1f} s")
        yield env
    finally:
        worker.stop()


def completion_seconds(client: Client, texts: list[str]) -> float:
    start = time.perf_counter()
    job = client.wait(client.submit_job(texts).id, timeout=600)
    assert job.status == JobStatus.COMPLETED, job.status
    return time.perf_counter() - start


def small_job_wait(env: dict[str, str], big_items: int, runs: int) -> dict[str, float]:
    cfg = settings_for(env)
    with Client(cfg, tenant="alpha") as alpha, Client(cfg, tenant="beta") as beta:
        small = [sentences(beta.model, SMALL_ITEMS, seed=100 + n) for n in range(runs + 1)]
        completion_seconds(beta, small[0])  # warm-up
        idle = [completion_seconds(beta, small[n]) for n in range(1, runs + 1)]
        big = alpha.submit_job(sentences(alpha.model, big_items, seed=7))
        while alpha.status(big.id).request_counts.completed == 0:
            time.sleep(0.05)
        behind = []
        for n in range(1, runs + 1):
            behind.append(completion_seconds(beta, small[n]))
            left = alpha.status(big.id)
            console.print(f"small job behind: {behind[-1]:.2f} s "
                          f"(big job at {left.request_counts.completed}/{big_items})")
            if left.request_counts.completed >= big_items:
                break  # in arrival order the first one waited for all of it
        alpha.cancel(big.id)
    return {"small_job_idle_s": statistics.median(idle),
            "small_job_behind_s": statistics.median(behind),
            "small_job_wait_ratio": statistics.median(behind) / statistics.median(idle)}


def two_tenants(env: dict[str, str], items: int, window: int) -> dict[str, float]:
    """Weights 1 and 3, the same backlog each; shares and texts/s from the store's records."""
    cfg = settings_for(env)
    with Client(cfg, tenant="light") as light, Client(cfg, tenant="heavy") as heavy:
        light.store.set_tenant_weight("light", 1)
        light.store.set_tenant_weight("heavy", 3)
        jobs = [(c, c.submit_job(sentences(c.model, items, seed=seed)))
                for c, seed in ((light, 11), (heavy, 12))]
        for client, job in jobs:
            done = client.wait(job.id, timeout=1800, on_progress=lambda j: console.print(
                f"  {j.tenant}: {j.request_counts.completed}/{j.request_counts.total}",
                end="\r"))
            assert done.status == JobStatus.COMPLETED, done.status
        console.print()
        with light.store.tx() as cur:
            rows = cur.execute(
                "SELECT j.tenant, mb.rows, mb.claimed_at, mb.completed_at FROM micro_batches mb "
                "JOIN jobs j ON j.id = mb.job_id WHERE j.tenant IN ('light', 'heavy') "
                "ORDER BY mb.completed_at").fetchall()
    heavy_at = [i for i, r in enumerate(rows) if r[0] == "heavy"]
    span = rows[heavy_at[0]:heavy_at[-1] + 1]
    middle = span[len(span) // 4: 3 * len(span) // 4]

    def light_share(part: list[tuple]) -> float:
        return sum(r[1] for r in part if r[0] == "light") / sum(r[1] for r in part)

    windows = [middle[i:i + window] for i in range(0, len(middle) - window + 1, window)]
    seconds = max(r[3] for r in rows) - min(r[2] for r in rows)
    return {"light_share": light_share(middle),
            "share_error": abs(light_share(middle) - 0.25),
            "share_error_window_max": max(abs(light_share(w) - 0.25) for w in windows),
            "middle_micro_batches": len(middle),
            "items_per_s": sum(r[1] for r in rows) / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the figures")
    parser.add_argument("--big-items", type=int, default=5000)
    parser.add_argument("--small-runs", type=int, default=3)
    parser.add_argument("--share-items", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=2,
                        help="two-tenant runs per order (ABBA: share, arrival, arrival, share)")
    parser.add_argument("--window", type=int, default=8,
                        help="micro-batches per window of share_error_window_max")
    args = parser.parse_args()

    figures: dict[str, float] = {}
    # Orders in ABBA sequence (share, arrival, arrival, share, ...), each on a fresh worker and
    # store, so a drift in the machine's speed weighs on both alike.
    orders = [o for _ in range(args.rounds // 2 + 1) for o in ("share", "arrival", "arrival",
                                                                "share")][:2 * args.rounds]
    runs: dict[str, list[dict[str, float]]] = {"share": [], "arrival": []}
    with tempfile.TemporaryDirectory(prefix="bemq-fair-") as tmp:
        for n, order in enumerate(orders):
            with deployment(Path(tmp) / f"{n}-{order}", order) as env:
                if n == 0:
                    figures |= small_job_wait(env, args.big_items, args.small_runs)
                elif n == 1:  # the same in arrival order: what the broker alone would give
                    waited = small_job_wait(env, args.big_items, 1)
                    figures["arrival_small_job_wait_ratio"] = waited["small_job_wait_ratio"]
                else:  # warm, as the first run's worker is
                    with Client(settings_for(env)) as client:
                        completion_seconds(client, sentences(client.model, SMALL_ITEMS, seed=1))
                runs[order].append(two_tenants(env, args.share_items, args.window))
    fair, fifo = runs["share"], runs["arrival"]
    figures |= {"light_share": statistics.mean(r["light_share"] for r in fair),
                "share_error": max(r["share_error"] for r in fair),
                "share_error_window_max": max(r["share_error_window_max"] for r in fair),
                "middle_micro_batches": min(r["middle_micro_batches"] for r in fair),
                "fair_items_per_s": statistics.mean(r["items_per_s"] for r in fair),
                "arrival_items_per_s": statistics.mean(r["items_per_s"] for r in fifo),
                "arrival_light_share": statistics.mean(r["light_share"] for r in fifo)}
    figures["fair_throughput_ratio"] = (figures["fair_items_per_s"]
                                        / figures["arrival_items_per_s"])

    report(args.json, figures, "bench/fairness.py (one worker, real model)",
           {"small_job_wait_ratio": "≤ 3", "share_error": "≤ 0.05",
            "fair_throughput_ratio": "≥ 0.97"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
