"""Backup operations: `run` (hourly), `verify` (daily), `restore`, `list`, and retention.

Backups live in their own blob store (`open_backups`: BEMQ_BACKUP_URL, by default the data's
blob store), under `backups/`; `blobs` below is always the data's (adapter files come from and
return to it). Restore and verify check every object's sha256 against the manifest before
anything is written, so a corrupted or incomplete backup is refused without touching the target.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import logging
import secrets
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ops import adapters, metrics
from ops.backup import snapshot
from ops.backup.manifest import (
    PREFIX,
    Manifest,
    ObjectEntry,
    TableEntry,
    folder,
    manifest_key,
    verify_key,
)
from ops.blobs import BlobNotFound, Blobs, open_blobs
from ops.settings import Settings
from ops.store import migrations

log = logging.getLogger(__name__)


class BackupError(RuntimeError):
    """A backup is missing, incomplete or corrupted; the message says which object."""


def open_backups(cfg: Settings) -> Blobs:
    """Where backups go: BEMQ_BACKUP_URL, or the data's blob store."""
    return open_blobs(cfg.backups_url, endpoint_url=cfg.s3_endpoint_url)


def run(cfg: Settings, blobs: Blobs, backups: Blobs) -> Manifest:
    """Snapshot the store, copy adapter files and the configuration into `backups`, write the
    manifest last, then apply retention."""
    now = time.time()
    backup_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + secrets.token_hex(3)
    base = folder(backup_id)
    objects: list[ObjectEntry] = []

    def put(key: str, chunks: Iterable[bytes]) -> tuple[str, int]:
        h = hashlib.sha256()

        def hashed() -> Iterator[bytes]:
            for chunk in chunks:
                h.update(chunk)
                yield chunk

        size = backups.put_chunks(base + key, hashed())
        objects.append(ObjectEntry(key=key, sha256=h.hexdigest(), bytes=size))
        return h.hexdigest(), size

    kind = snapshot.kind_of(cfg.store_url)
    dump = snapshot.sqlite_dump if kind == "sqlite" else snapshot.pg_dump
    tables = dump(cfg.store_url, put)
    for key in blobs.list(adapters.PREFIX):
        put(key, [blobs.get(key)])
    put("config.json", [json.dumps(effective_config(cfg), indent=2).encode()])
    manifest = Manifest(id=backup_id, created_at=now, kind=kind, schema_version=migrations.latest(),
                        tables=tables, objects=objects)
    backups.put(manifest_key(backup_id), manifest.model_dump_json(indent=2).encode())
    metrics.BACKUP_LAST_SUCCESS.set(now)
    prune(cfg, backups, now)
    return manifest


def effective_config(cfg: Settings) -> dict[str, Any]:
    """Every setting as the process saw it, passwords in URLs masked."""
    out = cfg.model_dump(mode="json")
    for key, value in out.items():
        if isinstance(value, str) and "://" in value:
            parts = urlparse(value)
            if parts.password:
                out[key] = value.replace(f":{parts.password}@", ":***@", 1)
    return out


def manifests(blobs: Blobs) -> list[Manifest]:
    """Complete backups, newest first."""
    found = []
    for key in blobs.list(PREFIX):
        if key.endswith("/manifest.json"):
            found.append(Manifest.model_validate_json(blobs.get(key)))
    return sorted(found, key=lambda m: m.created_at, reverse=True)


def load(blobs: Blobs, backup_id: str) -> Manifest:
    try:
        return Manifest.model_validate_json(blobs.get(manifest_key(backup_id)))
    except BlobNotFound:
        raise BackupError(f"no complete backup {backup_id!r} (no manifest.json)") from None


def fetch_checked(blobs: Blobs, manifest: Manifest) -> dict[str, bytes]:
    """Every object of a backup, each checked against its sha256 and size."""
    out = {}
    for entry in manifest.objects:
        key = folder(manifest.id) + entry.key
        try:
            data = blobs.get(key)
        except BlobNotFound:
            raise BackupError(f"backup {manifest.id}: object {entry.key} is missing") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256 or len(data) != entry.bytes:
            raise BackupError(f"backup {manifest.id}: object {entry.key} is corrupted "
                              f"(sha256 {digest[:12]}…, manifest says {entry.sha256[:12]}…)")
        out[entry.key] = data
    return out


def restore(cfg: Settings, blobs: Blobs, backups: Blobs, backup_id: str,
            target_url: str | None = None) -> dict[str, int]:
    """Restore a backup from `backups` into an empty store at `target_url` (default: the
    configured store) and put its adapter files back into `blobs`; returns rows per table."""
    manifest = load(backups, backup_id)
    target = target_url or cfg.store_url
    _check_kind(manifest, target)
    objects = fetch_checked(backups, manifest)
    counts = _restore_tables(manifest, objects, target, upgrade=True)
    for key, data in objects.items():
        if key.startswith(adapters.PREFIX):
            blobs.put(key, data)
    return counts


def verify(cfg: Settings, backups: Blobs, backup_id: str | None = None) -> dict[str, Any]:
    """Restore a backup (default: the newest) into a scratch database or file and compare
    every table's row count and digest with the manifest. The result is written beside the
    manifest; a failure counts in `bem_backup_verify_failures_total` and raises."""
    found = manifests(backups) if backup_id is None else [load(backups, backup_id)]
    if not found:
        raise BackupError("no backup to verify")
    manifest = found[0]
    result: dict[str, Any] = {"id": manifest.id, "at": time.time(), "ok": False}
    try:
        objects = fetch_checked(backups, manifest)
        restored = _scratch_digests(cfg, manifest, objects)
        mismatched = [t for t, e in manifest.tables.items()
                      if restored.get(t) is None or restored[t].sha256 != e.sha256
                      or restored[t].rows != e.rows]
        result["tables"] = {t: {"rows": e.rows, "match": t not in mismatched}
                            for t, e in manifest.tables.items()}
        if mismatched:
            raise BackupError(f"backup {manifest.id}: restored tables differ: {mismatched}")
        result["ok"] = True
        metrics.BACKUP_LAST_VERIFIED.set(result["at"])
        return result
    except Exception as exc:
        result["error"] = str(exc)
        metrics.BACKUP_VERIFY_FAILURES.inc()
        raise
    finally:
        backups.put(verify_key(manifest.id), json.dumps(result, indent=2).encode())


def verification(blobs: Blobs, backup_id: str) -> dict[str, Any] | None:
    try:
        return json.loads(blobs.get(verify_key(backup_id)))
    except BlobNotFound:
        return None


def prune(cfg: Settings, blobs: Blobs, now: float) -> list[str]:
    """Keep the newest `backup_keep_last` backups and every one younger than
    `backup_keep_days`; remove the rest, and folders left without a manifest for a day."""
    complete = manifests(blobs)
    complete_ids = {m.id for m in complete}
    keep = {m.id for m in complete[: cfg.backup_keep_last]}
    keep |= {m.id for m in complete if now - m.created_at < cfg.backup_keep_days * 86400}
    by_folder: dict[str, list[str]] = {}
    for key in blobs.list(PREFIX):
        by_folder.setdefault(key[len(PREFIX):].split("/", 1)[0], []).append(key)
    removed = []
    for backup_id, keys in by_folder.items():
        if backup_id in keep:
            continue
        if backup_id not in complete_ids and now - _created(backup_id, now) < 86400:
            continue  # possibly a backup still being written
        for key in keys:
            blobs.delete(key)
        removed.append(backup_id)
    return removed


def _created(backup_id: str, default: float) -> float:
    try:
        return calendar.timegm(time.strptime(backup_id.split("-")[0], "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return default


def _check_kind(manifest: Manifest, target: str) -> None:
    kind = snapshot.kind_of(target)
    if kind != manifest.kind:
        raise snapshot.RestoreRefused(f"backup {manifest.id} is of a {manifest.kind} store; "
                                      f"the target is {kind}")
    if manifest.schema_version > migrations.latest():
        raise snapshot.RestoreRefused(f"backup {manifest.id} has schema version "
                                      f"{manifest.schema_version}; this bemq knows up to "
                                      f"{migrations.latest()}")


def _restore_tables(manifest: Manifest, objects: dict[str, bytes], target: str, *,
                    upgrade: bool) -> dict[str, int]:
    """Restore at the backup's schema version, then (`upgrade`) migrate to this bemq's."""
    if manifest.kind == "sqlite":
        return snapshot.sqlite_restore(target, objects, manifest.tables, manifest.schema_version,
                                       upgrade=upgrade)
    return snapshot.pg_restore(target, objects, manifest.tables, manifest.schema_version,
                               upgrade=upgrade)


def _scratch_digests(cfg: Settings, manifest: Manifest, objects: dict[str, bytes]
                     ) -> dict[str, TableEntry]:
    if manifest.kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "verify.sqlite3"
            _restore_tables(manifest, objects, f"sqlite:///{path}", upgrade=False)
            return snapshot.sqlite_digests(path)
    if snapshot.kind_of(cfg.store_url) != "postgresql":
        raise BackupError(f"backup {manifest.id} is of PostgreSQL; verify needs a PostgreSQL "
                          "store to make a scratch database beside")
    with snapshot.pg_scratch(cfg.store_url, f"bemq_verify_{secrets.token_hex(4)}") as scratch:
        _restore_tables(manifest, objects, scratch, upgrade=False)
        return snapshot.pg_digests(scratch)
