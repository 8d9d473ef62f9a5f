"""Store records for the data lifecycle: listing and expiring files, and deleting what has
outlived its retention in bounded chunks (see `ops.retention` for the order and the policy)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ops.store.core import Transactional, retried, storable
from ops.store.rows import FILE_COLUMNS, file_from_row
from schemas.batch import TERMINAL_STATUSES, FileObject, JobStatus

_TERMINAL = tuple(s.value for s in TERMINAL_STATUSES)
# When a finished job ended: the stamp of the terminal status it reached.
_ENDED = "COALESCE(completed_at, failed_at, cancelled_at, expired_at)"


class RetentionRecords(Transactional):
    @retried
    def list_files(self, tenant: str, *, purpose: str | None = None, after: str | None = None,
                   limit: int = 20, descending: bool = True) -> list[FileObject]:
        """A tenant's live files by creation time (newest first unless `descending` is False);
        `after` is the id of the last file of the previous page."""
        now = int(time.time())
        sql = (f"SELECT {FILE_COLUMNS} FROM files WHERE tenant = ? "
               "AND (expires_at IS NULL OR expires_at > ?)")
        params: list[Any] = [tenant, now]
        if purpose is not None:
            sql += " AND purpose = ?"
            params.append(purpose)
        cmp, direction = ("<", "DESC") if descending else (">", "ASC")
        if not all(storable(v) for v in (after, purpose) if v is not None):
            return []
        with self.tx() as cur:
            if after is not None:
                anchor = cur.execute("SELECT created_at FROM files WHERE id = ? AND tenant = ?",
                                     (after, tenant)).fetchone()
                if anchor is None:
                    return []
                sql += f" AND (created_at {cmp} ? OR (created_at = ? AND id {cmp} ?))"
                params += [anchor[0], anchor[0], after]
            sql += f" ORDER BY created_at {direction}, id {direction} LIMIT ?"
            rows = cur.execute(sql, [*params, limit]).fetchall()
        return [file_from_row(r)[0] for r in rows]

    @retried
    def expire_file(self, file_id: str) -> None:
        """Make a file expire now: from this transaction on it answers 404, though its bytes
        and row are removed after (the order that never leaves a visible row without bytes)."""
        now = int(time.time())
        with self.tx() as cur:
            cur.execute("UPDATE files SET expires_at = ? WHERE id = ? "
                        "AND (expires_at IS NULL OR expires_at > ?)", (now, file_id, now))

    @retried
    def expired_files(self, limit: int) -> list[tuple[str, str]]:
        """(id, blob key) of files past their expiry, but never the input of a job still being
        validated (it is being read)."""
        with self.tx() as cur:
            rows = cur.execute(
                "SELECT id, blob_key FROM files WHERE expires_at <= ? AND id NOT IN ("
                "SELECT input_file_id FROM jobs WHERE status = ? AND input_file_id IS NOT NULL) "
                "ORDER BY expires_at LIMIT ?",
                (int(time.time()), JobStatus.VALIDATING.value, limit)).fetchall()
        return [(r[0], r[1]) for r in rows]

    @retried
    def delete_files(self, file_ids: Sequence[str]) -> None:
        """Delete file rows (their bytes already gone) in one statement."""
        if not file_ids:
            return
        with self.tx() as cur:
            cur.execute(f"DELETE FROM files WHERE id IN ({', '.join('?' for _ in file_ids)})",
                        list(file_ids))

    @retried
    def jobs_with_shards(self, limit: int) -> list[str]:
        """Finished jobs whose output shards have not been removed yet."""
        marks = ", ".join("?" for _ in _TERMINAL)
        with self.tx() as cur:
            rows = cur.execute(f"SELECT id FROM jobs WHERE status IN ({marks}) "
                               f"AND shards_cleared = 0 LIMIT ?", (*_TERMINAL, limit)).fetchall()
        return [r[0] for r in rows]

    @retried
    def mark_shards_cleared(self, job_id: str) -> None:
        with self.tx() as cur:
            cur.execute("UPDATE jobs SET shards_cleared = 1 WHERE id = ?", (job_id,))

    @retried
    def delete_finished_jobs(self, ended_before: float, limit: int) -> tuple[int, int]:
        """Delete up to `limit` jobs that ended before `ended_before` (their shards already
        removed) with their micro-batch rows, in one transaction; returns (jobs, micro-batches).
        Their files have expiries of their own."""
        marks = ", ".join("?" for _ in _TERMINAL)
        with self.tx() as cur:
            ids = [r[0] for r in cur.execute(
                f"SELECT id FROM jobs WHERE status IN ({marks}) AND shards_cleared = 1 "
                f"AND {_ENDED} < ? LIMIT ?", (*_TERMINAL, ended_before, limit)).fetchall()]
            if not ids:
                return 0, 0
            id_marks = ", ".join("?" for _ in ids)
            cur.execute(f"DELETE FROM micro_batches WHERE job_id IN ({id_marks})", ids)
            batches = cur.rowcount
            cur.execute(f"DELETE FROM jobs WHERE id IN ({id_marks})", ids)
            return cur.rowcount, batches

    @retried
    def delete_oldest(self, table: str, column: str, before: float, limit: int,
                      where: str = "", params: Sequence[Any] = ()) -> int:
        """Delete about `limit` of the oldest rows of `table` whose `column` (a time) is before
        `before` and that match `where`: one bounded chunk, in one short transaction.
        `table`, `column` and `where` are the caller's constants, never user input."""
        cond = f"{column} < ?" + (f" AND {where}" if where else "")
        with self.tx() as cur:
            edge = cur.execute(f"SELECT {column} FROM {table} WHERE {cond} ORDER BY {column} "
                               f"LIMIT 1 OFFSET ?", (before, *params, limit - 1)).fetchone()
            cur.execute(f"DELETE FROM {table} WHERE {cond} AND {column} <= ?",
                        (before, *params, edge[0] if edge else before))
            return cur.rowcount
