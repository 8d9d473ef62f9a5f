"""Conversions between store rows and schema objects, kept apart so the SQL reads cleanly."""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter

from schemas.batch import BatchErrors, FileObject, Job, JobStatus, RequestCounts
from schemas.microbatch import Item

JOB_COLUMNS = (
    "id, tenant, model, endpoint, status, input_file_id, output_file_id, error_file_id, "
    "completion_window, created_at, in_progress_at, expires_at, finalizing_at, completed_at, "
    "failed_at, expired_at, cancelling_at, cancelled_at, total, completed, failed, "
    "micro_batches, errors, metadata, output_expires_after, priority"
)
JOB_FIELDS = [c.strip() for c in JOB_COLUMNS.split(",")]

ITEMS = TypeAdapter(list[Item])  # a micro-batch's `items` column

FILE_COLUMNS = "id, tenant, purpose, filename, bytes, created_at, expires_at, blob_key"


def job_from_row(row: tuple[Any, ...], dead: int = 0) -> Job:
    data = dict(zip(JOB_FIELDS, row, strict=True))
    counts = RequestCounts(
        total=data.pop("total"), completed=data.pop("completed"), failed=data.pop("failed")
    )
    errors = data.pop("errors")
    metadata = data.pop("metadata")
    status = JobStatus(data.pop("status"))
    return Job(
        **data,
        status=status,
        request_counts=counts,
        errors=BatchErrors.model_validate_json(errors) if errors else None,
        metadata=json.loads(metadata) if metadata else None,
        dead_micro_batches=dead,
    )


def file_from_row(row: tuple[Any, ...]) -> tuple[FileObject, str]:
    """The file object and the blob key that holds its bytes."""
    fid, tenant, purpose, filename, size, created_at, expires_at, blob_key = row
    obj = FileObject(
        id=fid, tenant=tenant, purpose=purpose, filename=filename, bytes=size,
        created_at=created_at, expires_at=expires_at,
    )
    return obj, blob_key
