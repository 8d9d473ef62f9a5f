"""The data lifecycle with real processes: files expire and answer 404 at once, `retention.run`
(here through the embedded worker's schedule) removes their bytes and rows, finished jobs and
their micro-batch rows, while a job inside its retention keeps every file; shards go once a
job's files are written, also when the process writing them dies in between."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from ops.keys import file_key, job_shards
from producers.client import Client, NotFound
from producers.corpus import sentences
from schemas.batch import JobStatus
from tests.conftest import embedded_env
from tests.support.deploy import assert_exactly_once, settings_for, start_worker, wait_for
from tests.support.services import free_port

pytestmark = pytest.mark.timeout(240)


def deleted_total(port: int, kind: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    match = re.search(rf'^bem_retention_deleted_total\{{kind="{kind}"\}} (\S+)$', body,
                      re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def rows(client: Client, sql: str, *params: object) -> int:
    with client.store.tx() as cur:
        return int(cur.execute(sql, params).fetchone()[0])


def test_expired_files_and_old_jobs_go_and_the_rest_stays(tmp_path: Path) -> None:
    """Job A's input and outputs expire (after 15 s): 404 at once, then bytes and rows removed
    by the worker's schedule; job rows go 30 s after they end; job B's files, inside their
    retention, stay throughout, also after B's own row is gone."""
    port = free_port()
    env = embedded_env(tmp_path / "var") | {
        "BEMQ_RETENTION_INTERVAL": "1", "BEMQ_RETAIN_JOBS": "30", "BEMQ_METRICS_PORT": str(port),
        "BEMQ_MAX_BATCH_SIZE": "16"}
    with Client(settings_for(env)) as client, \
            Client(settings_for(env | {"BEMQ_RETAIN_INPUT_FILES": "15"})) as short:
        worker = start_worker(env, client, tmp_path / "worker.log")
        try:
            a = short.submit_job(sentences(client.model, 60, seed=1), output_expires_after=15)
            a = client.wait(a.id, timeout=120)
            assert len(list(client.results(a.id))) == 60  # well inside its 15 s
            b = client.wait(client.submit_job(sentences(client.model, 60, seed=2)).id,
                            timeout=120)
            assert a.status == b.status == JobStatus.COMPLETED
            b_files = [b.input_file_id, b.output_file_id]
            for job in (a, b):  # shards go once the files are written; items are dropped
                # (the job reads completed a moment before its finalizer removes them)
                wait_for(lambda j=job: client.blobs.list(job_shards(j.id)) == [], 10,
                         "the shards to be removed after the files were written")
                assert rows(client, "SELECT COUNT(*) FROM micro_batches WHERE job_id = ? "
                                    "AND items != '[]'", job.id) == 0
            a_files = [a.input_file_id, a.output_file_id]
            wait_for(lambda: all(_gone(client, f) for f in a_files), 60, "A's files to expire")
            with pytest.raises(NotFound):
                list(client.results(a.id))
            wait_for(lambda: not any(client.blobs.exists(file_key(f)) for f in a_files)
                     and rows(client, "SELECT COUNT(*) FROM files WHERE id IN (?, ?)",
                              *a_files) == 0, 30, "A's bytes and rows to be removed")
            assert all(client.file_content(f) for f in b_files)  # B keeps its files
            wait_for(lambda: client.store.get_job(a.id) is None, 90, "A's job row to go")
            assert rows(client, "SELECT COUNT(*) FROM micro_batches WHERE job_id = ?", a.id) == 0
            wait_for(lambda: client.store.get_job(b.id) is None, 90, "B's job row to go")
            assert len(client.file_content(b.output_file_id).splitlines()) == 60  # files
            assert client.file_content(b.input_file_id)  # outlive their job's row
            assert deleted_total(port, "file") >= 2
            assert deleted_total(port, "job") >= 1 and deleted_total(port, "micro_batch") >= 4
            assert deleted_total(port, "shard") >= 4
        finally:
            worker.stop()


def _gone(client: Client, file_id: str) -> bool:
    try:
        client.file(file_id)
    except NotFound:
        return True
    return False


# Runs a job's micro-batches with the worker's own code, then dies (SIGKILL) where the shards
# would be removed: after the job ended with its output files written.
KILLED_BETWEEN = """
import os, signal, sys, time
from ops import lifecycle
from workers import runner
from workers.runtime import runtime
lifecycle.clear_shards = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
rt = runtime()
for _ in range(int(sys.argv[1])):
    runner.run(rt, rt.store.add_token(time.time()), lambda tokens, countdown: None)
"""


def test_shards_of_a_process_killed_after_its_files_are_removed_by_reconcile(
        tmp_path: Path) -> None:
    """A process writes a job's output files, then is killed before removing its shards: the
    job is complete and its shards are left; the next worker's reconcile removes them, and the
    output still holds every item once."""
    env = embedded_env(tmp_path / "var") | {"BEMQ_MAX_BATCH_SIZE": "16"}
    with Client(settings_for(env)) as client:
        job = client.submit_job(sentences(client.model, 50, seed=3))
        killed = subprocess.run([sys.executable, "-c", KILLED_BETWEEN,
                                 str(job.micro_batches)], env=env, capture_output=True,
                                timeout=180)
        assert killed.returncode == -9, killed.stderr.decode()[-2000:]
        job = client.status(job.id)
        assert job.status == JobStatus.COMPLETED
        left = client.blobs.list(job_shards(job.id))
        assert len(left) == job.micro_batches
        worker = start_worker(env, client, tmp_path / "worker.log")
        try:
            wait_for(lambda: client.blobs.list(job_shards(job.id)) == [], 60,
                     "reconcile to remove the shards")
        finally:
            worker.stop()
        assert rows(client, "SELECT shards_cleared FROM jobs WHERE id = ?", job.id) == 1
        assert_exactly_once(client, job, 50)
