"""`backups/<id>/manifest.json`: what a backup holds, with a sha256 for every object. Written
last, so a backup without a manifest is incomplete and is never restored."""

from __future__ import annotations

from pydantic import BaseModel

PREFIX = "backups/"


class TableEntry(BaseModel):
    rows: int
    sha256: str  # digest of the table's rows ordered by every column (see ops.backup.snapshot)
    columns: list[str]


class ObjectEntry(BaseModel):
    key: str  # relative to the backup's folder
    sha256: str
    bytes: int


class Manifest(BaseModel):
    id: str
    created_at: float
    kind: str  # "postgresql" | "sqlite": a backup restores into the same kind of store
    schema_version: int
    tables: dict[str, TableEntry]
    objects: list[ObjectEntry]

    @property
    def bytes(self) -> int:
        return sum(o.bytes for o in self.objects)


def folder(backup_id: str) -> str:
    return f"{PREFIX}{backup_id}/"


def manifest_key(backup_id: str) -> str:
    return folder(backup_id) + "manifest.json"


def verify_key(backup_id: str) -> str:
    return folder(backup_id) + "verify.json"
