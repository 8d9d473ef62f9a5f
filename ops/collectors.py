"""Gauges read at scrape time from the shared state, exported by the ops worker (one exporter,
so there are no duplicate series): jobs by status, live workers and each tenant's queue from the
store, queue depth from the broker. GPU memory is exported by each GPU worker for its own device."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ops.online import KEY_QUEUE
from ops.redis_clients import sync_client
from ops.settings import Settings
from ops.store import Store, TenantQueue
from schemas.batch import JobStatus
from schemas.constants import QUEUE_GPU, QUEUE_ONLINE, QUEUE_OPS

log = logging.getLogger(__name__)

OTHER_TENANTS = "_other"  # the label of the tenants past BEMQ_METRICS_MAX_TENANTS


class StateCollector(Collector):
    def __init__(self, cfg: Settings, store: Store) -> None:
        self.cfg, self.store = cfg, store
        # One broker connection for every scrape (redis-py reconnects after a failure).
        self.redis = (None if cfg.embedded_broker
                      else sync_client(cfg.broker_url, cfg.sentinel_master))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("bem_jobs", "Jobs by status", labels=["status"])
        try:
            counts = self.store.job_counts()
            for status in JobStatus:
                jobs.add_metric([status.value], counts.get(status.value, 0))
            yield jobs
            alive = GaugeMetricFamily("bem_workers_alive", "Workers with a fresh heartbeat, "
                                      "by queue they consume", labels=["queue"])
            live = self.store.live_workers(self.cfg.dead_after)
            for queue in (QUEUE_GPU, QUEUE_ONLINE, QUEUE_OPS):
                alive.add_metric([queue], sum(queue in w["queues"].split(",") for w in live))
            yield alive
            yield from tenant_gauges(self.store.tenant_queues(), self.cfg.metrics_max_tenants,
                                     time.time())
        except Exception as exc:  # a scrape must not fail because the store is restarting
            log.warning("store metrics unavailable: %s", exc)
        depth = GaugeMetricFamily("bem_queue_depth", "Messages waiting in the broker, by queue",
                                  labels=["queue"])
        try:
            for queue, n in self._queue_depths().items():
                depth.add_metric([queue], n)
            yield depth
        except Exception as exc:
            log.warning("broker metrics unavailable: %s", exc)

    def _queue_depths(self) -> dict[str, int]:
        """Waiting messages per Celery queue, and waiting online requests under "online"."""
        cfg = self.cfg
        if self.redis is None:
            folder = Path(cfg.broker_folder) / "queue"
            files = [p.name for p in folder.glob("*.msg")] if folder.exists() else []
            return {q: sum(name.endswith(f".{q}.msg") for name in files)
                    for q in (QUEUE_GPU, QUEUE_ONLINE, QUEUE_OPS)}
        # kombu's Redis transport keeps a list per queue (and per priority: "queue\x06\x16N").
        out = {}
        for q in (QUEUE_GPU, QUEUE_OPS):
            out[q] = sum(int(self.redis.llen(cfg.redis_prefix + name))
                         for name in (q, *(f"{q}\x06\x16{p}" for p in (3, 6, 9))))
        out[QUEUE_ONLINE] = int(self.redis.llen(cfg.redis_prefix + KEY_QUEUE))
        return out


def tenant_gauges(queues: Sequence[TenantQueue], limit: int,
                  now: float) -> Iterator[GaugeMetricFamily]:
    """Queued texts and the oldest queued micro-batch's age per tenant. Labels stay bounded:
    the `limit` tenants with the most queued, the rest summed under tenant="_other"."""
    items = GaugeMetricFamily("bem_tenant_queued_items", "Texts waiting in queued "
                              "micro-batches, by tenant", labels=["tenant"])
    age = GaugeMetricFamily("bem_tenant_oldest_queued_seconds", "Age of the tenant's oldest "
                            "queued micro-batch (0: none queued)", labels=["tenant"])
    shown, rest = queues[:limit], queues[limit:]
    for q in shown:
        items.add_metric([q.tenant], q.queued_items)
        age.add_metric([q.tenant], now - q.oldest_queued_at if q.oldest_queued_at else 0.0)
    if rest:
        items.add_metric([OTHER_TENANTS], sum(q.queued_items for q in rest))
        oldest = min((q.oldest_queued_at for q in rest if q.oldest_queued_at), default=None)
        age.add_metric([OTHER_TENANTS], now - oldest if oldest else 0.0)
    yield items
    yield age


class GpuMemoryCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        import torch

        if not torch.cuda.is_available():
            return
        g = GaugeMetricFamily("bem_gpu_memory_bytes", "CUDA memory of this worker's device",
                              labels=["kind"])
        g.add_metric(["allocated"], torch.cuda.memory_allocated())
        g.add_metric(["reserved"], torch.cuda.memory_reserved())
        free, total = torch.cuda.mem_get_info()
        g.add_metric(["free"], free)
        g.add_metric(["total"], total)
        yield g
