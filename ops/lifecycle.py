"""Job lifecycle steps that any process may run: finalising a job whose micro-batches are all
finished, and reconciling the store with a broker that may have lost messages.

Both are idempotent: finalisation rebuilds the output files from per-micro-batch shards under
deterministic keys, so running it twice publishes the same files once. Once the job has ended
with its files written, its shards are removed; a process that dies in between leaves the job
marked `shards_cleared = 0`, and reconcile removes them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence

from ops import metrics
from ops.blobs import BlobNotFound, Blobs
from ops.keys import error_file_id, file_key, job_shards, output_file_id, shard_key
from ops.store import Store, Window
from schemas.batch import FileObject, Job, JobStatus

log = logging.getLogger(__name__)

ACTIVE = (JobStatus.IN_PROGRESS, JobStatus.FINALIZING, JobStatus.CANCELLING)
# Finished jobs whose leftover shards one reconcile pass removes at most.
SHARD_SWEEP = 100


def finalize(store: Store, blobs: Blobs, job_id: str) -> Job | None:
    """Publish the output and error files and end the job, if no micro-batch is still open.

    Returns the finished job, or None when there is nothing to do (yet)."""
    job = store.get_job(job_id)
    if job is None or job.status not in ACTIVE or store.open_micro_batches(job_id):
        return None
    if job.status == JobStatus.IN_PROGRESS:
        store.set_status(job_id, JobStatus.FINALIZING, only_from=(JobStatus.IN_PROGRESS,))
    shards = store.finished_shards(job_id)
    try:
        out_id = _publish(store, blobs, job, "out", [s for s, ok, _ in shards if ok],
                          output_file_id)
        err_id = _publish(store, blobs, job, "err", [s for s, _, err in shards if err],
                          error_file_id)
    except BlobNotFound:
        ended = store.get_job(job_id)
        if ended is not None and ended.status.terminal:
            return None  # another process finished the job and removed its shards first
        raise
    if job.status == JobStatus.CANCELLING:
        end = JobStatus.CANCELLED
    elif job.expired_at is not None:
        end = JobStatus.EXPIRED
    else:
        end = JobStatus.COMPLETED
    store.set_status(
        job_id, end, only_from=(JobStatus.FINALIZING, JobStatus.CANCELLING),
        output_file_id=out_id, error_file_id=err_id,
    )
    clear_shards(store, blobs, job_id)
    return store.get_job(job_id)


def clear_shards(store: Store, blobs: Blobs, job_id: str) -> int:
    """Remove a finished job's output shards (its output and error files hold their lines)."""
    keys = blobs.list(job_shards(job_id))
    for key in keys:
        blobs.delete(key)
    store.mark_shards_cleared(job_id)
    if keys:
        metrics.RETENTION_DELETED.labels("shard").inc(len(keys))
    return len(keys)


def _publish(store: Store, blobs: Blobs, job: Job, kind: str, seqs: Sequence[int],
             make_id: Callable[[str], str]) -> str | None:
    if not seqs:
        return None
    file_id = make_id(job.id)
    size = blobs.put_chunks(file_key(file_id), _concat(blobs, job.id, kind, seqs))
    now = int(time.time())
    store.add_file(
        FileObject(id=file_id, bytes=size, created_at=now,
                   filename=f"{job.id}_{'output' if kind == 'out' else 'error'}.jsonl",
                   purpose="batch_output", tenant=job.tenant,
                   expires_at=now + job.output_expires_after if job.output_expires_after
                   else None),
        file_key(file_id),
    )
    return file_id


def _concat(blobs: Blobs, job_id: str, kind: str, seqs: Sequence[int]) -> Iterator[bytes]:
    for seq in seqs:
        data = blobs.get(shard_key(job_id, seq, kind))
        yield data if data.endswith(b"\n") else data + b"\n"


def reconcile(store: Store, blobs: Blobs, send: Callable[[Sequence[str]], None],
              requeue_after: float, dead_after: float, window: Window) -> dict[str, int]:
    """One pass of `jobs.reconcile`: expire jobs past their window, end the leases of dead
    workers and put their micro-batches back in the queue, forget dispatch messages the broker
    lost and refill the window, and finish jobs left unfinalised (a worker died between its
    last completion and the output files)."""
    expired = sum(store.expire(job_id) for job_id in store.overdue_jobs(time.time()))
    ended = store.end_dead_leases(dead_after)
    if ended:
        log.info("ended %d lease(s) held by workers silent for %.0fs", ended, dead_after)
    requeued = store.requeue_lapsed()
    lost = store.drop_lost_tokens(requeue_after)
    if lost:
        log.info("%d dispatch message(s) unused for %.0fs presumed lost", lost, requeue_after)
    tokens = store.top_up(window)
    if tokens:
        send(tokens)
    finalized = 0
    for job_id in store.finishable_jobs(ACTIVE):
        if finalize(store, blobs, job_id) is not None:
            finalized += 1
    shards = sum(clear_shards(store, blobs, job_id)
                 for job_id in store.jobs_with_shards(SHARD_SWEEP))
    return {"requeued": requeued, "expired": expired, "lost_messages": lost,
            "sent": len(tokens), "finalized": finalized, "shards_removed": shards}
