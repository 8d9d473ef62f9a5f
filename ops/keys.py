"""Identifiers and blob keys, derived deterministically wherever a retry must land on the same
object (a re-run shard or a second finalisation overwrites, never duplicates)."""

from __future__ import annotations

import hashlib
import uuid

from schemas.constants import FILE_ID_PREFIX, JOB_ID_PREFIX


def new_job_id() -> str:
    return JOB_ID_PREFIX + uuid.uuid4().hex


def new_file_id() -> str:
    return FILE_ID_PREFIX + uuid.uuid4().hex


def output_file_id(job_id: str) -> str:
    return f"{FILE_ID_PREFIX}out-{job_id.removeprefix(JOB_ID_PREFIX)}"


def error_file_id(job_id: str) -> str:
    return f"{FILE_ID_PREFIX}err-{job_id.removeprefix(JOB_ID_PREFIX)}"


def request_id(job_id: str, custom_id: str) -> str:
    digest = hashlib.sha256(f"{job_id}\0{custom_id}".encode()).hexdigest()[:24]
    return f"batch_req_{digest}"


def file_key(file_id: str) -> str:
    return f"files/{file_id}"


def shard_key(job_id: str, seq: int, kind: str) -> str:
    """`kind` is "out" or "err": one shard per micro-batch and kind."""
    return f"{job_shards(job_id)}{kind}/{seq:06d}.jsonl"


def job_shards(job_id: str) -> str:
    """The prefix under which a job's shards live."""
    return f"jobs/{job_id}/"
