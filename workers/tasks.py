"""Celery tasks. Thin: each delegates to logic in workers.runner or ops.lifecycle."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from celery import Task
from celery.signals import worker_ready, worker_shutdown

from ops import metrics
from ops.blobs import BlobsUnavailable
from ops.lifecycle import reconcile
from ops.store import StoreUnavailable
from schemas.constants import QUEUE_GPU, TASK_RECONCILE, TASK_RUN_MICRO_BATCH
from workers import runner
from workers.app import app
from workers.runtime import runtime

_heartbeat = None


@app.task(name=TASK_RUN_MICRO_BATCH, bind=True, max_retries=None)
def run_micro_batch(self: Task, job_id: str, seq: int) -> str:
    rt = runtime()
    try:
        return runner.run(rt, job_id, seq)
    except (StoreUnavailable, BlobsUnavailable) as exc:
        # Hand the lease back so the retry can claim at once; if the store is the thing that
        # is down, the lease expires instead and jobs.reconcile re-sends the micro-batch.
        with contextlib.suppress(StoreUnavailable):
            rt.store.release(job_id, seq, rt.name, f"{type(exc).__name__}: {exc}")
        raise self.retry(exc=exc, countdown=min(60, 2 ** min(self.request.retries, 6))) from exc


@app.task(name=TASK_RECONCILE)
def reconcile_jobs() -> dict[str, int]:
    rt = runtime()
    return reconcile(rt.store, rt.blobs, send_micro_batches,
                     requeue_after=rt.settings.requeue_after_seconds)


def send_micro_batches(pairs: Sequence[tuple[str, int]]) -> None:
    with app.producer_or_acquire() as producer:
        for job_id, seq in pairs:
            app.send_task(TASK_RUN_MICRO_BATCH, args=[job_id, seq], queue=QUEUE_GPU,
                          producer=producer)


@worker_ready.connect
def _on_ready(sender, **_: object) -> None:  # type: ignore[no-untyped-def]
    global _heartbeat
    queues = ",".join(sorted(q.name for q in sender.app.amqp.queues.consume_from.values()))
    rt = runtime()
    metrics.serve(rt.settings.metrics_port)
    if QUEUE_GPU in queues:
        _ = rt.model  # load before the first message, not during it
    _heartbeat = rt.start_heartbeat(queues)


@worker_shutdown.connect
def _on_shutdown(**_: object) -> None:
    if _heartbeat is not None:
        _heartbeat.set()
        runtime().store.forget_worker(runtime().name)
