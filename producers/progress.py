"""Terminal presentation shared by the CLI and the demo: a progress bar while a job runs, and
tables for jobs."""

from __future__ import annotations

import datetime

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from producers.client import Client
from schemas.batch import Job

console = Console(stderr=True)


def wait_with_progress(client: Client, job_id: str, timeout: float | None = None) -> Job:
    """`Client.wait` drawing a bar of finished items (completed + failed) over the total."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TaskProgressColumn(), TextColumn("{task.fields[status]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(job_id[:18], total=None, status="")

        def show(job: Job) -> None:
            counts = job.request_counts
            bar.update(task, total=counts.total or None,
                       completed=counts.completed + counts.failed, status=job.status.value)

        return client.wait(job_id, timeout=timeout, on_progress=show)


def job_table(job: Job) -> Table:
    table = Table(show_header=False, title=f"batch {job.id}")
    counts = job.request_counts
    rows = [
        ("status", job.status.value),
        ("requests", f"{counts.completed} completed, {counts.failed} failed, {counts.total} total"),
        ("micro-batches", f"{job.micro_batches} ({job.dead_micro_batches} dead)"),
        ("input file", job.input_file_id or "-"),
        ("output file", job.output_file_id or "-"),
        ("error file", job.error_file_id or "-"),
    ]
    for field in ("created_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at",
                  "expired_at", "cancelling_at", "cancelled_at"):
        value = getattr(job, field)
        if value is not None:
            rows.append((field, when(value)))
    if job.errors and job.errors.data:
        rows += [("error", e.message) for e in job.errors.data[:20]]
    for key, value in rows:
        table.add_row(key, value)
    return table


def jobs_table(jobs: list[Job], *, tenants: bool = False) -> Table:
    """Jobs as rows; `tenants` adds each job's tenant and priority (an operator's view)."""
    table = Table("status", "completed", "failed", "total", "created (UTC)")
    if tenants:
        table.add_column("tenant")
        table.add_column("priority", justify="right")
    table.add_column("id", no_wrap=True, min_width=38)
    for job in jobs:
        c = job.request_counts
        who = [job.tenant, str(job.priority)] if tenants else []
        table.add_row(job.status.value, str(c.completed), str(c.failed), str(c.total),
                      when(job.created_at), *who, job.id)
    return table


def when(ts: float | None) -> str:
    """A Unix time as UTC, to the second ("-" for none)."""
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
