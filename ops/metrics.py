"""Prometheus metrics (`bem_*`), one registry per process. Labels are bounded: no job ids or
custom ids ever become label values."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

ITEMS = Counter("bem_items", "Items finished by workers", ["model", "adapter", "outcome"])
BATCH_SIZE = Histogram("bem_batch_size", "Rows per model forward",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
BATCH_TOKENS = Histogram("bem_batch_tokens", "Padded tokens per model forward",
                         buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768))
PADDING_EFFICIENCY = Histogram("bem_batch_padding_efficiency",
                               "Real tokens / padded tokens per micro-batch",
                               buckets=(0.1, 0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1.0))
INFERENCE_LATENCY = Histogram("bem_inference_latency_seconds", "Model forward time", ["model"])
DISPATCH_LOCK = Histogram(
    "bem_dispatch_lock_seconds", "Seconds a claim held the store's dispatch lock: claims are "
    "serial, so their sum per second over every worker is the share of the store's claim "
    "capacity in use", buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))
OOM_SPLITS = Counter("bem_worker_oom_splits", "Forwards split after running out of memory")
TOKEN_BUDGET = Gauge("bem_worker_token_budget", "Padded tokens this worker puts in one forward")
BUSY_RATIO = Gauge("bem_worker_busy_ratio", "Share of the last minute this worker spent inside "
                   "model forwards")
MICRO_BATCHES = Counter("bem_micro_batches", "Micro-batch deliveries by outcome", ["outcome"])
SAFETY_VIOLATIONS = Counter("bem_safety_violations", "Outputs refused as unsafe", ["type"])

# Ops workers.
CANARY_WEIGHT = Gauge("bem_canary_weight", "Percent of a stable version's items served by its "
                      "canary", ["stable", "canary"])
CANARY_DECISIONS = Counter("bem_canary_decisions", "Canary step decisions", ["decision"])
DRIFT_ALERTS = Counter("bem_drift_alerts", "Drift checks that alerted, by component",
                       ["component"])
BACKUP_LAST_SUCCESS = Gauge("bem_backup_last_success_timestamp_seconds",
                            "When the newest backup was written")
BACKUP_LAST_VERIFIED = Gauge("bem_backup_last_verify_success_timestamp_seconds",
                             "When a backup last restored and matched its manifest")
RETENTION_DELETED = Counter("bem_retention_deleted", "Rows, files and shards removed past their "
                            "retention or expiry", ["kind"])
BACKUP_VERIFY_FAILURES = Counter("bem_backup_verify_failures",
                                 "Backup verifications that failed")
ONLINE_ADMISSION = Counter("bem_online_requests",
                           "Online requests at the gateway's door: admitted, or refused by reason "
                           "(overloaded, queue_full, deadline, no_worker)", ["outcome"])
ONLINE_IN_FLIGHT_LIMIT = Gauge("bem_online_in_flight_limit",
                               "Embeddings calls this gateway process lets be in flight now "
                               "(adapted to their latency; more are refused as overloaded)")
ONLINE_DROPPED = Counter("bem_online_dropped",
                         "Online requests dropped before their forward: past their deadline "
                         "(a worker's count) or their caller disconnected (the gateway's)",
                         ["reason"])


def serve(port: int) -> None:
    """Expose this process's metrics on http://0.0.0.0:PORT/metrics (0 = off)."""
    if port:
        start_http_server(port)
