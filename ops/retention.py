"""`retention.run`: remove what has outlived its retention, in bounded chunks, so that the store
and the blob store reach a plateau under steady work.

Order matters more than speed: nothing a user can still ask for loses its bytes. A file is
gone for its users from its `expires_at` on (the store hides it), then its bytes are deleted,
then its row; a crash in between leaves a hidden row that the next run finishes. A job's
output shards go when its files are written (`ops.lifecycle`); its row and micro-batch rows go
`retain_jobs` after it ended, and only once its shards are gone. Every deletion counts in
`bem_retention_deleted_total{kind}`. Each run ends by reclaiming the space of the churning
tables (`Store.reclaim`: VACUUM on PostgreSQL).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from ops import metrics
from ops.blobs import Blobs
from ops.settings import Settings
from ops.store import Store

log = logging.getLogger(__name__)

# A worker's heartbeat row outlives the worker by this much (dead workers are shown, then go).
WORKER_ROWS_KEPT = 86400.0
# One run stops after this long; what is left waits for the next run.
RUN_SECONDS = 60.0
# Tables whose rows churn (deleted here, or updated on every item): their space is reclaimed
# after each run, so the store plateaus even where PostgreSQL's autovacuum is off.
CHURNING_TABLES = ("files", "jobs", "micro_batches", "workers", "online_requests", "features",
                   "drift_reports", "canary_samples", "rate_buckets", "dispatch",
                   "dispatch_tokens", "dispatch_shares")


def run(store: Store, blobs: Blobs, cfg: Settings) -> dict[str, int]:
    """One pass over every kind of data; returns how many of each were removed."""
    now = time.time()
    stop_at = time.monotonic() + RUN_SECONDS
    removed: Counter[str] = Counter()
    chunk = cfg.retention_chunk

    def chunks(kind: str, delete_chunk: Callable[[], int]) -> None:
        while time.monotonic() < stop_at:
            n = delete_chunk()
            removed[kind] += n
            if n < chunk:
                return

    def files() -> int:
        expired = store.expired_files(chunk)
        for _, key in expired:
            blobs.delete(key)
        store.delete_files([file_id for file_id, _ in expired])
        return len(expired)

    chunks("file", files)
    if cfg.retain_jobs:
        def jobs() -> int:
            n_jobs, n_batches = store.delete_finished_jobs(now - cfg.retain_jobs, chunk)
            removed["micro_batch"] += n_batches
            return n_jobs

        chunks("job", jobs)
    if cfg.retain_canary_samples:
        chunks("canary_sample", lambda: store.delete_oldest(
            "canary_samples", "at", now - cfg.retain_canary_samples, chunk,
            "canary_id IN (SELECT id FROM canaries WHERE ended_at IS NOT NULL)"))
    if cfg.retain_drift:
        # A drift check reads two windows back: live samples stay at least that long.
        features_before = now - max(cfg.retain_drift, 2 * cfg.drift_window_seconds)
        chunks("drift_feature", lambda: store.delete_oldest(
            "features", "at", features_before, chunk, "reference = 0"))
        chunks("drift_report", lambda: store.delete_oldest(
            "drift_reports", "at", now - cfg.retain_drift, chunk))
    if cfg.retain_online_requests:
        chunks("online_request", lambda: store.delete_oldest(
            "online_requests", "enqueued_at", now - cfg.retain_online_requests, chunk))
    chunks("worker", lambda: store.delete_oldest("workers", "last_seen", now - WORKER_ROWS_KEPT,
                                                 chunk))
    store.reclaim(CHURNING_TABLES)
    for kind, n in removed.items():
        if n:
            metrics.RETENTION_DELETED.labels(kind).inc(n)
    if any(removed.values()):
        log.info("retention removed %s", dict(+removed))
    return dict(+removed)
