"""The one place configuration is read: every `BEMQ_*` environment variable, typed and validated
at start-up. A bad value stops the program with a message that names the variable."""

from __future__ import annotations

import functools
import itertools
import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ops.redis_clients import target as redis_target
from ops.store.dispatch import Window
from schemas.constants import SCHEDULED

# Variables earlier releases read, with what replaces them.
REMOVED = {
    "BEMQ_DRIFT_EMBEDDINGS_PER_BATCH": "BEMQ_DRIFT_EMBEDDING_RATE (the share of output vectors "
                                       "kept, each drawn on its own)",
}


class SettingsError(ValueError):
    """A `BEMQ_*` variable has a value bemq cannot use."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BEMQ_", extra="ignore", frozen=True)

    # Where the embedded default keeps its broker folders, SQLite file and blobs.
    home: Path = Path("var")
    broker_url: str = "filesystem://"
    # With a `sentinel://a:26379;sentinel://b:26379;...` broker: the name the sentinels monitor
    # the primary under (Celery, RedBeat, the online queue and the rate limiter all use it).
    sentinel_master: str = ""
    # Seconds a beat leader's lock outlives its last extension: how soon another host's beat
    # takes over from one that died or was cut off (0 = five times the shortest of the
    # reconcile and canary intervals, at least 30).
    beat_lock_seconds: int = Field(0, ge=0)
    database_url: str = ""
    blob_url: str = ""
    s3_endpoint_url: str | None = None
    redis_prefix: str = "bemq:"
    tenant: str = "default"

    # Model and batching.
    model_name: str = "minilm"
    model_dir: Path | None = None
    model_class: str = "workers.encoder:BertEncoder"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Weights, activations and adapters: "auto" = bfloat16 on CUDA, float32 on the CPU.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    torch_threads: int = Field(0, ge=0)
    kernels: Literal["auto", "triton", "reference"] = "auto"
    max_batch_tokens: int = Field(8192, ge=16)
    max_batch_size: int = Field(256, ge=1)
    max_lines: int = Field(50_000, ge=1)
    max_file_bytes: int = Field(200 * 1024 * 1024, ge=1)
    # Word pieces a tenant may have waiting in batch jobs (queued or running micro-batches); a
    # job that would pass it fails validation with `token_limit_exceeded` (0 = no bound).
    tenant_max_queued_tokens: int = Field(50_000_000, ge=0)
    adapter_cache_bytes: int = Field(2 * 1024**3, ge=0)
    # Fault drill: raise an out-of-memory error for any forward above this many padded tokens
    # (0 = off), so OOM handling can be exercised on a CPU.
    simulate_oom_above_tokens: int = Field(0, ge=0)
    metrics_port: int = Field(0, ge=0, le=65535)
    # Tenants given their own series in the per-tenant queue gauges (the rest are summed).
    metrics_max_tenants: int = Field(20, ge=1)

    # Delivery: the store keeps a lease and a delivery count per micro-batch.
    lease_seconds: float = Field(300.0, gt=0)
    max_deliveries: int = Field(5, ge=1)
    # Micro-batches a GPU worker's pipeline holds in each of its queues (claimed and decoded,
    # waiting for the forward; embedded, waiting to be written): enough to keep the device busy,
    # few enough that a worker holds only leases it will soon run.
    pipeline_depth: int = Field(2, ge=1)
    # Micro-batches one dispatch message claims at once (at most `pipeline_depth`): more make
    # fewer, cheaper turns under the store's dispatch lock (the limit on how many workers one
    # store serves), at the cost of new work waiting behind up to the depth on each worker.
    claim_size: int = Field(1, ge=1)
    # Which micro-batch runs next (`ops.fairshare`): "share" = by tenant weight, then a tenant's
    # job priority, then its jobs in turn; "arrival" = first in, first out.
    dispatch_order: Literal["share", "arrival"] = "share"
    # Dispatch messages the broker holds per live GPU worker: each worker holds at most one at a
    # time (prefetch 1), so 2 leave one waiting for it whenever it asks.
    dispatch_window: int = Field(2, ge=1)
    requeue_after_seconds: float = Field(120.0, gt=0)
    visibility_timeout: int = Field(3600, ge=1)
    task_soft_time_limit: int = Field(600, ge=1)
    task_time_limit: int = Field(900, ge=1)
    reconcile_interval: float = Field(10.0, gt=0)
    # A worker records a heartbeat every `heartbeat_seconds`; one silent for
    # `dead_after_heartbeats` of them is dead, and the leases it holds end (see `dead_after`).
    heartbeat_seconds: float = Field(5.0, gt=0)
    dead_after_heartbeats: int = Field(3, ge=2)
    # Scheduled tasks a GPU worker runs itself (a thread, one per host through a lock file):
    # "auto" = every beat entry on the embedded broker and none elsewhere (beat does it there),
    # "none", or a comma-separated list of entries such as "jobs.reconcile,canary.step".
    worker_schedule: str = "auto"

    # Store connection. Whether a process applies missing schema migrations when it starts:
    # unset = yes on SQLite (the embedded default), no on PostgreSQL (run `bemq migrate`).
    migrate_on_start: bool | None = None
    db_pool_size: int = Field(8, ge=1)
    db_retry_seconds: float = Field(30.0, ge=0)

    # Client polling.
    poll_interval: float = Field(0.5, gt=0)

    # Canary weight changes (`canary.step`): schedule, defaults for `bemq canary start`, and the
    # gates' limits. Output safety: a pooled (pre-normalisation) embedding norm outside
    # [safety_norm_min, safety_norm_max], or a non-finite value, is a violation.
    canary_interval: float = Field(60.0, gt=0)
    canary_steps: str = "5,25,50,100"
    canary_min_samples: int = Field(200, ge=1)
    canary_shadow_fraction: float = Field(0.1, ge=0, le=1)
    canary_min_shadow: int = Field(20, ge=1)
    canary_max_error_delta: float = Field(0.01, ge=0)
    canary_max_latency_ratio: float = Field(1.15, gt=0)
    canary_min_agreement: float = Field(0.9, ge=-1, le=1)
    canary_confidence: float = Field(0.95, gt=0, lt=1)
    canary_resamples: int = Field(2000, ge=100)
    canary_probe_rows: int = Field(8, ge=0)  # 0: no latency probes, the latency gate is skipped
    canary_min_probes: int = Field(10, ge=2)
    # Seconds a step may hold without a verdict (too few samples, or a gate inconclusive)
    # before the canary is rolled back for it.
    canary_max_hold: float = Field(86400.0, gt=0)
    safety_norm_min: float = Field(0.1, ge=0)
    safety_norm_max: float = Field(1000.0, gt=0)

    # Drift detection (`drift.check`): recent window vs the pinned reference.
    drift_interval: float = Field(300.0, gt=0)
    drift_window_seconds: float = Field(3600.0, gt=0)
    drift_min_samples: int = Field(200, ge=10)
    drift_alpha: float = Field(0.01, gt=0, lt=1)
    drift_psi_alert: float = Field(0.1, gt=0)
    drift_psi_severe: float = Field(0.25, gt=0)
    drift_min_effect: float = Field(0.1, gt=0, le=1)
    drift_components: int = Field(10, ge=1)
    # Share of outputs whose vector a worker keeps for the embedding test, each drawn on its
    # own (so a window's vectors are independent draws, whatever the micro-batches).
    drift_embedding_rate: float = Field(0.02, ge=0, le=1)

    # Online requests (`POST /v1/embeddings`): dynamic batching in the worker, and how many
    # online forwards in a row may pass a waiting batch-job forward.
    online_max_queue_delay_ms: float = Field(5.0, ge=0)
    online_max_batch_tokens: int = Field(4096, ge=16)
    online_max_batch_size: int = Field(64, ge=1)
    online_timeout_seconds: float = Field(30.0, gt=0)
    # Online requests waiting in the queue at most; one more is refused at once (429).
    online_max_queue: int = Field(1000, ge=1)
    online_priority_burst: int = Field(4, ge=1)
    online_batch_forward_tokens: int = Field(1024, ge=16)

    # HTTP gateway limits, per API key and endpoint.
    rate_limit_per_second: float = Field(20.0, gt=0)
    rate_limit_burst: int = Field(40, ge=1)
    # How long the gateway remembers an API key's owner: a revoked key stops working within
    # this many seconds (0: the store is read on every request).
    api_key_cache_seconds: float = Field(5.0, ge=0)
    http_max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # Embeddings calls in flight per gateway process at most: the bound starts here and, under
    # overload, adapts to the calls' latency (`producers.http.in_flight`), refusing with 429
    # rather than queueing.
    http_max_in_flight: int = Field(128, ge=1)

    # Data lifecycle (`retention.run`): how long each kind of data is kept, in seconds (0 = for
    # ever). Files get an expiry when they are written: an input file `retain_input_files` after
    # its upload, an output or error file `retain_output_files` after its job finishes (a
    # caller's `expires_after` / `output_expires_after` wins). Rows go past their age.
    retain_input_files: int = Field(30 * 86400, ge=0)
    retain_output_files: int = Field(30 * 86400, ge=0)
    retain_jobs: float = Field(30 * 86400, ge=0)  # a finished job and its micro-batch rows
    retain_canary_samples: float = Field(7 * 86400, ge=0)  # after their canary ended
    retain_drift: float = Field(7 * 86400, ge=0)  # drift reports and live feature samples
    retain_online_requests: float = Field(3600, ge=0)  # embedded online requests left behind
    retention_interval: float = Field(300.0, gt=0)
    retention_chunk: int = Field(500, ge=1)  # rows deleted per transaction

    # Backups (`backup.run`, `backup.verify`) of the store, adapters and configuration; they go
    # to `backup_url` (file:// or s3://) when set, else under `backups/` in the blob store.
    backup_url: str = ""
    backup_interval: float = Field(3600.0, gt=0)
    backup_verify_interval: float = Field(86400.0, gt=0)
    backup_keep_last: int = Field(24, ge=1)
    backup_keep_days: float = Field(7.0, ge=0)

    @field_validator("broker_url")
    @classmethod
    def _broker_scheme(cls, value: str) -> str:
        scheme = urlparse(value).scheme
        if scheme not in {"filesystem", "redis", "rediss", "sentinel", "memory", "amqp"}:
            raise ValueError(f"unsupported broker scheme {scheme!r} in {value!r}")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: str) -> str:
        if value and urlparse(value).scheme not in {"sqlite", "postgresql", "postgres"}:
            raise ValueError(f"expected sqlite:///PATH or postgresql://..., got {value!r}")
        return value

    @field_validator("blob_url", "backup_url")
    @classmethod
    def _blob_scheme(cls, value: str) -> str:
        if value and urlparse(value).scheme not in {"file", "s3"}:
            raise ValueError(f"expected file://PATH or s3://BUCKET/PREFIX, got {value!r}")
        return value

    @field_validator("worker_schedule")
    @classmethod
    def _worker_schedule(cls, value: str) -> str:
        """Kept as "auto", "none" or the named entries in schedule order, comma-separated."""
        if value.strip() in {"auto", "none"}:
            return value.strip()
        names = {v.strip() for v in value.split(",") if v.strip()}
        if not names or names - set(SCHEDULED):
            raise ValueError(f"expected auto, none or some of {', '.join(SCHEDULED)}; "
                             f"got {value!r}")
        return ",".join(name for name in SCHEDULED if name in names)

    @field_validator("canary_steps")
    @classmethod
    def _steps(cls, value: str) -> str:
        parse_steps(value)
        return value

    @model_validator(mode="after")
    def _limits(self) -> Settings:
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError("BEMQ_TASK_SOFT_TIME_LIMIT must be below BEMQ_TASK_TIME_LIMIT")
        if self.safety_norm_min >= self.safety_norm_max:
            raise ValueError("BEMQ_SAFETY_NORM_MIN must be below BEMQ_SAFETY_NORM_MAX")
        if self.claim_size > self.pipeline_depth:
            raise ValueError(f"BEMQ_CLAIM_SIZE ({self.claim_size}) must not exceed "
                             f"BEMQ_PIPELINE_DEPTH ({self.pipeline_depth})")
        if self.canary_probe_rows == 0 and self.canary_shadow_fraction == 0:
            raise ValueError(
                "BEMQ_CANARY_PROBE_ROWS=0 with BEMQ_CANARY_SHADOW_FRACTION=0 leaves a canary no "
                "gate that compares it with stable (only errors and unsafe outputs would count, "
                "so wrong but well-formed outputs would promote): keep one of them on")
        redis_target(self.broker_url, self.sentinel_master)  # a bad Sentinel URL stops here
        return self

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'bemq.sqlite3').resolve()}"

    @property
    def migrates_on_start(self) -> bool:
        if self.migrate_on_start is not None:
            return self.migrate_on_start
        return urlparse(self.store_url).scheme == "sqlite"

    @property
    def blobs_url(self) -> str:
        return self.blob_url or f"file://{(self.home / 'blobs').resolve()}"

    @property
    def backups_url(self) -> str:
        return self.backup_url or self.blobs_url

    @property
    def broker_folder(self) -> Path:
        return (self.home / "broker").resolve()

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def dead_after(self) -> float:
        """Seconds without a heartbeat after which a worker counts as dead."""
        return self.dead_after_heartbeats * self.heartbeat_seconds

    @property
    def window(self) -> Window:
        """How many dispatch messages the broker holds (see `ops.store.dispatch`)."""
        return Window(self.dispatch_window, self.dead_after)

    @property
    def worker_schedule_entries(self) -> tuple[str, ...]:
        """The beat entries a GPU worker runs in its own scheduler thread."""
        if self.worker_schedule == "auto":
            return SCHEDULED if self.embedded_broker else ()
        if self.worker_schedule == "none":
            return ()
        return tuple(self.worker_schedule.split(","))


def parse_steps(value: str) -> list[float]:
    """"5,25,50,100" → [5.0, 25.0, 50.0, 100.0]: rising canary weights in percent, ending at 100."""
    try:
        steps = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"canary steps must be numbers, got {value!r}") from None
    rising = all(a < b for a, b in itertools.pairwise(steps))
    if not steps or steps[-1] != 100 or steps[0] <= 0 or not rising:
        raise ValueError(f"canary steps must rise within (0, 100] and end at 100: {value!r}")
    return steps


def load_settings() -> Settings:
    """Read and validate the environment; a bad value raises `SettingsError` naming the variable,
    and so does a variable bemq no longer reads (it would otherwise be ignored unseen)."""
    gone = [f"{name}: no longer read; set {instead}" for name, instead in REMOVED.items()
            if name in os.environ]
    if gone:
        raise SettingsError("; ".join(gone))
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            name = f"BEMQ_{field.upper()}" if err["loc"] else "settings"
            problems.append(f"{name}: {err['msg']}")
        raise SettingsError("; ".join(problems)) from None


@functools.cache
def settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
