"""Every Celery setting, derived from the one `Settings` object (`BEMQ_*` environment).

Delivery semantics: messages are acknowledged late (after the task), one at a time per process.
On Redis an unacknowledged message only returns after `visibility_timeout`, and a killed worker's
message is not redelivered at once (celery#3541), so the store's per-micro-batch lease and
delivery count, with `jobs.reconcile`, are what bring lost work back; the broker settings below
only make redelivery possible, not prompt.
"""

from __future__ import annotations

from kombu import Queue

from ops.settings import settings
from schemas.constants import (
    KEY_BEAT,
    QUEUE_GPU,
    QUEUE_ONLINE,
    QUEUE_OPS,
    TASK_RECONCILE,
    TASK_RUN_MICRO_BATCH,
)

_s = settings()

broker_url = _s.broker_url
broker_connection_retry_on_startup = True
if _s.embedded_broker:
    _folder = _s.broker_folder
    for _sub in ("queue", "control", "processed"):
        (_folder / _sub).mkdir(parents=True, exist_ok=True)
    broker_transport_options = {
        "data_folder_in": str(_folder / "queue"),
        "data_folder_out": str(_folder / "queue"),
        "control_folder": str(_folder / "control"),
        "processed_folder": str(_folder / "processed"),
        "store_processed": False,
        "polling_interval": 0.1,
    }
else:
    broker_transport_options = {
        "visibility_timeout": _s.visibility_timeout,
        "global_keyprefix": _s.redis_prefix,
    }
# Results live in the store; Celery's result backend is not used. Its transport options match
# the broker's so that a backend added later cannot silently differ on visibility timeout.
task_ignore_result = True
result_backend = None
result_backend_transport_options = dict(broker_transport_options)

task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_soft_time_limit = _s.task_soft_time_limit
task_time_limit = _s.task_time_limit
task_serializer = "json"
accept_content = ["json"]

task_queues = (Queue(QUEUE_GPU), Queue(QUEUE_ONLINE), Queue(QUEUE_OPS))
task_default_queue = QUEUE_GPU
task_routes = {
    TASK_RUN_MICRO_BATCH: {"queue": QUEUE_GPU},
    TASK_RECONCILE: {"queue": QUEUE_OPS},
}

# Flower and `celery events` need these.
worker_send_task_events = True
task_send_sent_event = True

beat_schedule = {
    "jobs.reconcile": {"task": TASK_RECONCILE, "schedule": _s.reconcile_interval},
}
if not _s.embedded_broker:
    beat_scheduler = "redbeat.RedBeatScheduler"
    redbeat_redis_url = _s.broker_url
    redbeat_key_prefix = _s.redis_prefix + KEY_BEAT
    redbeat_lock_timeout = int(max(30, _s.reconcile_interval * 5))
