"""The one place configuration is read: every `BEMQ_*` environment variable, typed and validated
at start-up. A bad value stops the program with a message that names the variable."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(ValueError):
    """A `BEMQ_*` variable has a value bemq cannot use."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BEMQ_", extra="ignore", frozen=True)

    # Where the embedded default keeps its broker folders, SQLite file and blobs.
    home: Path = Path("var")
    broker_url: str = "filesystem://"
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
    torch_threads: int = Field(0, ge=0)
    kernels: Literal["auto", "triton", "reference"] = "auto"
    max_batch_tokens: int = Field(8192, ge=16)
    max_batch_size: int = Field(256, ge=1)
    max_lines: int = Field(50_000, ge=1)
    max_file_bytes: int = Field(200 * 1024 * 1024, ge=1)
    adapter_cache_bytes: int = Field(2 * 1024**3, ge=0)
    # Fault drill: raise an out-of-memory error for any forward above this many padded tokens
    # (0 = off), so OOM handling can be exercised on a CPU.
    simulate_oom_above_tokens: int = Field(0, ge=0)
    metrics_port: int = Field(0, ge=0, le=65535)

    # Delivery: the store keeps a lease and a delivery count per micro-batch.
    lease_seconds: float = Field(300.0, gt=0)
    max_deliveries: int = Field(5, ge=1)
    requeue_after_seconds: float = Field(120.0, gt=0)
    visibility_timeout: int = Field(3600, ge=1)
    task_soft_time_limit: int = Field(600, ge=1)
    task_time_limit: int = Field(900, ge=1)
    reconcile_interval: float = Field(30.0, gt=0)
    heartbeat_seconds: float = Field(5.0, gt=0)

    # Store connection.
    db_pool_size: int = Field(8, ge=1)
    db_retry_seconds: float = Field(30.0, ge=0)

    # Client polling.
    poll_interval: float = Field(0.5, gt=0)

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

    @field_validator("blob_url")
    @classmethod
    def _blob_scheme(cls, value: str) -> str:
        if value and urlparse(value).scheme not in {"file", "s3"}:
            raise ValueError(f"expected file://PATH or s3://BUCKET/PREFIX, got {value!r}")
        return value

    @model_validator(mode="after")
    def _limits(self) -> Settings:
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError("BEMQ_TASK_SOFT_TIME_LIMIT must be below BEMQ_TASK_TIME_LIMIT")
        return self

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'bemq.sqlite3').resolve()}"

    @property
    def blobs_url(self) -> str:
        return self.blob_url or f"file://{(self.home / 'blobs').resolve()}"

    @property
    def broker_folder(self) -> Path:
        return (self.home / "broker").resolve()

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")


def load_settings() -> Settings:
    """Read and validate the environment; a bad value raises `SettingsError` naming the variable."""
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
