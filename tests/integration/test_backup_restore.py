"""Backups: run jobs, back up, lose the database, restore, and every job, its status and its
output files are back; a corrupted object is detected and the restore refuses; retention keeps
what it should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ops import apikeys
from ops.adapters import blob_key
from ops.backup import service as backup
from ops.backup.manifest import folder
from ops.blobs import open_blobs
from producers.client import Client
from schemas.batch import JobStatus
from tests.support.deploy import request_lines, settings_for, start_worker
from tests.support.services import POSTGRES_URL, create_database, drop_database
from workers.adapters import make_adapter

pytestmark = pytest.mark.timeout(300)


def bemq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "producers.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def lose_store(env: dict[str, str]) -> None:
    """Drop the PostgreSQL database and create it again empty, or delete the SQLite file."""
    url = env.get("BEMQ_DATABASE_URL")
    if url:
        import psycopg

        drop_database(url)
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{url.rsplit("/", 1)[1]}"')
        return
    for path in Path(env["BEMQ_HOME"]).glob("bemq.sqlite3*"):
        path.unlink()


def test_restore_after_losing_the_database(deployment_env: dict[str, str],
                                           tmp_path: Path) -> None:
    """Backups to their own target (BEMQ_BACKUP_URL): lose the store, restore from there."""
    env = deployment_env | {"BEMQ_BACKUP_URL": f"file://{tmp_path / 'backups'}"}
    cfg = settings_for(env)
    with Client(cfg) as client:
        adapter = tmp_path / "v1.safetensors"
        adapter.write_bytes(make_adapter(client.model, experts=2, rank=4, b_std=0.05))
        client.add_adapter("support-v1", adapter)
        key_id, key = apikeys.create(client.store, "acme")
        worker = start_worker(env, client, tmp_path / "worker.log")
        try:
            done = client.wait(client.submit_job(
                request_lines([f"sentence {i}" for i in range(40)], model="minilm:support-v1")
            ).id, timeout=120)
        finally:
            worker.stop()
        assert done.status == JobStatus.COMPLETED
        before = {j.id: j for j in client.list(limit=100)}
        output = list(client.results(done.id))
        adapter_bytes = client.blobs.get(blob_key("support-v1"))

    made = bemq(env, "backup", "now")
    assert made.returncode == 0, made.stderr
    backup_id = made.stdout.split(":")[0]
    listed = bemq(env, "backup", "list")
    assert backup_id in listed.stdout
    assert (tmp_path / "backups" / folder(backup_id) / "manifest.json").exists()
    assert open_blobs(cfg.blobs_url, endpoint_url=cfg.s3_endpoint_url).list("backups/") == []

    lose_store(env)
    blobs = open_blobs(cfg.blobs_url, endpoint_url=cfg.s3_endpoint_url)
    blobs.delete(blob_key("support-v1"))
    restored = bemq(env, "restore", backup_id)
    assert restored.returncode == 0, restored.stderr
    assert "jobs" in restored.stdout and "micro_batches" in restored.stdout

    with Client(cfg) as client:
        after = {j.id: j for j in client.list(limit=100)}
        assert after.keys() == before.keys()
        for job_id, job in before.items():
            assert after[job_id].model_dump() == job.model_dump()
        assert list(client.results(done.id)) == output
        assert client.blobs.get(blob_key("support-v1")) == adapter_bytes
        assert [a.name for a in client.adapters()] == ["support-v1"]
        assert apikeys.owner(client.store, key) == (key_id, "acme")  # keys survive a restore

    verified = bemq(env, "backup", "verify", backup_id)
    assert verified.returncode == 0, verified.stderr


def test_corrupted_backup_is_refused_and_target_untouched(deployment_env: dict[str, str],
                                                          tmp_path: Path) -> None:
    env = deployment_env
    cfg = settings_for(env)
    with Client(cfg) as client:
        client.upload_file(b'{"x": 1}\n', "keep.jsonl")
    blobs = open_blobs(cfg.blobs_url, endpoint_url=cfg.s3_endpoint_url)
    manifest = backup.run(cfg, client.blobs, blobs)
    victim = manifest.objects[0].key
    blobs.put(folder(manifest.id) + victim, b"not the bytes that were backed up")

    sqlite_target = f"sqlite:///{tmp_path / 'target.sqlite3'}"
    target = create_database(migrated=False) if cfg.database_url else sqlite_target
    try:
        refused = bemq(env, "restore", manifest.id, "--database-url", target)
        assert refused.returncode == 1
        assert f"object {victim} is corrupted" in refused.stderr
        if cfg.database_url:
            import psycopg

            with psycopg.connect(target) as conn:
                tables = conn.execute("SELECT COUNT(*) FROM information_schema.tables "
                                      "WHERE table_schema = 'public'").fetchone()
            assert tables == (0,)  # nothing was written, not even the schema
        else:
            assert not (tmp_path / "target.sqlite3").exists()
        failed = bemq(env, "backup", "verify", manifest.id)
        assert failed.returncode == 1 and "corrupted" in failed.stderr
        assert backup.verification(blobs, manifest.id)["ok"] is False
    finally:
        if cfg.database_url:
            drop_database(target)


def test_retention_keeps_the_last_n_and_the_young(tmp_path: Path) -> None:
    from tests.conftest import embedded_env

    env = embedded_env(tmp_path / "var") | {"BEMQ_BACKUP_KEEP_LAST": "2",
                                             "BEMQ_BACKUP_KEEP_DAYS": "0"}
    cfg = settings_for(env)
    Client(cfg).close()
    blobs = open_blobs(cfg.blobs_url)
    ids = []
    for _ in range(4):
        ids.append(backup.run(cfg, blobs, blobs).id)
    kept = [m.id for m in backup.manifests(blobs)]
    assert kept == ids[:-3:-1]
    young = settings_for(env | {"BEMQ_BACKUP_KEEP_DAYS": "1"})
    backup.run(young, blobs, blobs)
    assert len(backup.manifests(blobs)) == 3
