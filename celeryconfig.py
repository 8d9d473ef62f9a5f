"""Every Celery setting, derived from the one `Settings` object (`BEMQ_*` environment).

`build(settings)` returns the configuration; importing this module (as `celery -A workers.app`
does through `config_from_object`) applies it for the process's own settings.

Delivery semantics: messages are acknowledged late (after the task), one at a time per process.
On Redis an unacknowledged message only returns after `visibility_timeout`, and a killed worker's
message is not redelivered at once (celery#3541), so the store's per-micro-batch lease and
delivery count, with `jobs.reconcile`, are what bring lost work back; the broker settings below
only make redelivery possible, not prompt.
"""

from __future__ import annotations

from typing import Any

from kombu import Queue

from ops import redis_clients
from ops.redis_clients import SENTINEL_KWARGS, SOCKET_TIMEOUT
from ops.settings import Settings, settings
from schemas.constants import (
    BEAT_SCHEDULE_FILE,
    KEY_BEAT,
    OPS_TASKS,
    QUEUE_GPU,
    QUEUE_ONLINE,
    QUEUE_OPS,
    SCHEDULED_TASKS,
    TASK_RUN_NEXT,
)


def build(s: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "broker_url": s.broker_url,
        "broker_connection_retry_on_startup": True,
        # A worker keeps trying while the broker is away (its work is safe in the store), on
        # the short schedule of `workers.consumer`, not Celery's 2, 4, … 30 s one.
        "broker_connection_max_retries": None,
        "worker_consumer": "workers.consumer:Consumer",
        "broker_transport_options": _transport_options(s),
        # Results live in the store, not in a Celery result backend. The backend's transport
        # options still match the broker's, so one added later cannot differ on visibility.
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": s.task_soft_time_limit,
        "task_time_limit": s.task_time_limit,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_queues": (Queue(QUEUE_GPU), Queue(QUEUE_ONLINE), Queue(QUEUE_OPS)),
        "task_default_queue": QUEUE_GPU,
        # GPU workers consume gpu/online only; every scheduled task goes to ops.
        "task_routes": {TASK_RUN_NEXT: {"queue": QUEUE_GPU},
                        **{name: {"queue": QUEUE_OPS} for name in OPS_TASKS}},
        # Flower and `celery events` need task events from workers.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "beat_schedule": {name: {"task": task, "schedule": schedule_interval(s, name)}
                          for name, task in SCHEDULED_TASKS.items()},
    }
    conf["result_backend_transport_options"] = dict(conf["broker_transport_options"])
    if s.embedded_broker:
        # Messages written whole (see `ops.fs_broker`); beat's own state under BEMQ_HOME,
        # never in the working directory.
        conf["broker_transport"] = "ops.fs_broker:Transport"
        conf["beat_schedule_filename"] = str((s.home / BEAT_SCHEDULE_FILE).resolve())
    else:
        # One beat leader across hosts: RedBeat holds a lock in the broker's Redis, which a
        # waiting beat polls for every fifth of its expiry (see `workers.beat`).
        lock = s.beat_lock_seconds or int(max(30, min(s.reconcile_interval,
                                                      s.canary_interval) * 5))
        conf.update(
            beat_scheduler="workers.beat:LeaderScheduler",
            beat_max_loop_interval=max(1, lock // 5),
            redbeat_redis_url=s.broker_url,
            redbeat_key_prefix=s.redis_prefix + KEY_BEAT,
            redbeat_lock_timeout=lock,
        )
        found = redis_clients.target(s.broker_url, s.sentinel_master)
        if found is not None:  # RedBeat's Sentinel branch: a `redis-sentinel` URL, options
            conf.update(redbeat_redis_url="redis-sentinel://",
                        redbeat_redis_options=found.redbeat_options())
    return conf


def schedule_interval(s: Settings, entry: str) -> float:
    """Seconds between two runs of a beat entry (see `SCHEDULED_TASKS`)."""
    return {
        "jobs.reconcile": s.reconcile_interval,
        "canary.step": s.canary_interval,
        "drift.check": s.drift_interval,
        "backup.run": s.backup_interval,
        "backup.verify": s.backup_verify_interval,
        "retention.run": s.retention_interval,
    }[entry]


def _transport_options(s: Settings) -> dict[str, Any]:
    if s.embedded_broker:
        folder = s.broker_folder
        for sub in ("queue", "control", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "polling_interval": 0.1,
        }
    # A primary that vanishes without a reset (a cut link, a frozen host) must not hold the
    # worker: without a read timeout a publish on the dead connection waits for ever (the
    # dispatch task sends the window's refill), and kombu checks the consumer's BRPOP, overdue
    # by more than its timeout (1 s) + `health_check_interval`, only as often as that interval.
    options: dict[str, Any] = {"visibility_timeout": s.visibility_timeout,
                               "global_keyprefix": s.redis_prefix,
                               "socket_connect_timeout": SOCKET_TIMEOUT,
                               "socket_timeout": SOCKET_TIMEOUT,
                               "health_check_interval": int(SOCKET_TIMEOUT)}
    if redis_clients.target(s.broker_url, s.sentinel_master) is not None:
        # kombu asks every sentinel of the URL in turn, for the primary under this name.
        options["master_name"] = s.sentinel_master
        options["sentinel_kwargs"] = SENTINEL_KWARGS
    return options



globals().update(build(settings()))
