"""Beat-scheduled tasks of the ops queue. Thin: the logic lives in `ops.canary`, `ops.drift`,
`ops.backup` and `ops.retention`; these only bind it to the worker's store, blob stores and
settings."""

from __future__ import annotations

import logging
from typing import Any

from ops import retention
from ops.backup import service as backup
from ops.canary import controller
from ops.drift import check as drift
from schemas.constants import (
    TASK_BACKUP_RUN,
    TASK_BACKUP_VERIFY,
    TASK_CANARY_STEP,
    TASK_DRIFT_CHECK,
    TASK_RETENTION,
)
from workers.app import app
from workers.runtime import runtime

log = logging.getLogger(__name__)


@app.task(name=TASK_CANARY_STEP)
def canary_step() -> list[dict[str, Any]]:
    rt = runtime()
    decisions = controller.step_all(rt.store, rt.settings)
    for d in decisions:
        if d.decision.value != "hold":
            log.info("canary %s: %s (%s)", d.canary_id, d.decision.value, d.reason)
    return [{"canary": d.canary_id, "decision": d.decision.value, "reason": d.reason}
            for d in decisions]


@app.task(name=TASK_DRIFT_CHECK)
def drift_check() -> dict[str, Any]:
    rt = runtime()
    report = drift.run(rt.store, rt.settings)
    if report["alerts"]:
        log.warning("drift: %d component(s) alert%s; report %s", report["alerts"],
                    " (severe)" if report["severe"] else "", report["id"])
    return {"id": report["id"], "status": report["status"], "alerts": report["alerts"],
            "severe": report["severe"]}


@app.task(name=TASK_BACKUP_RUN)
def backup_run() -> dict[str, Any]:
    rt = runtime()
    manifest = backup.run(rt.settings, rt.blobs, rt.backups)
    log.info("backup %s written: %d bytes", manifest.id, manifest.bytes)
    return {"id": manifest.id, "bytes": manifest.bytes}


@app.task(name=TASK_BACKUP_VERIFY)
def backup_verify() -> dict[str, Any]:
    rt = runtime()
    try:
        result = backup.verify(rt.settings, rt.backups)
    except Exception:
        log.exception("backup verification failed")
        raise
    log.info("backup %s verified", result["id"])
    return result


@app.task(name=TASK_RETENTION)
def retention_run() -> dict[str, int]:
    rt = runtime()
    return retention.run(rt.store, rt.blobs, rt.settings)
