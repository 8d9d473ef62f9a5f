"""Every queue name, task name and Redis key prefix in one place, so producers, workers and
tests can never disagree about a spelling."""

QUEUE_GPU = "gpu"
QUEUE_ONLINE = "online"
QUEUE_OPS = "ops"

# "Run the next micro-batch": the dispatch message (see `ops.store.dispatch`).
TASK_RUN_NEXT = "bemq.run_next"
TASK_RECONCILE = "bemq.jobs.reconcile"
TASK_CANARY_STEP = "bemq.canary.step"
TASK_DRIFT_CHECK = "bemq.drift.check"
TASK_BACKUP_RUN = "bemq.backup.run"
TASK_BACKUP_VERIFY = "bemq.backup.verify"
TASK_RETENTION = "bemq.retention.run"
# Beat entry names (celery beat's schedule keys; BEMQ_WORKER_SCHEDULE names them too) → task.
SCHEDULED_TASKS = {
    "jobs.reconcile": TASK_RECONCILE,
    "canary.step": TASK_CANARY_STEP,
    "drift.check": TASK_DRIFT_CHECK,
    "backup.run": TASK_BACKUP_RUN,
    "backup.verify": TASK_BACKUP_VERIFY,
    "retention.run": TASK_RETENTION,
}
SCHEDULED = tuple(SCHEDULED_TASKS)
OPS_TASKS = tuple(SCHEDULED_TASKS.values())  # every scheduled task runs on the ops queue

# Redis keys live under the configured prefix (setting BEMQ_REDIS_PREFIX, default "bemq:").
# Celery's own keys get it through kombu's `global_keyprefix`; ours append these suffixes.
KEY_BEAT = "beat:"

# Files under BEMQ_HOME: the lock that makes one worker per host run the worker schedule, and
# celery beat's own schedule state on the embedded broker (RedBeat keeps it in Redis otherwise).
SCHEDULER_LOCK_FILE = "scheduler.lock"
BEAT_SCHEDULE_FILE = "celerybeat-schedule"

ENDPOINT_EMBEDDINGS = "/v1/embeddings"
COMPLETION_WINDOWS = {"24h": 24 * 3600}

JOB_ID_PREFIX = "batch_"
FILE_ID_PREFIX = "file-"
