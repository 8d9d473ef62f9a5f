"""Gateway rows: API keys (hash only), token buckets and the online request queue of the
embedded deployment (with Redis, buckets and the queue live there instead)."""

from __future__ import annotations

import time
from typing import Any

from ops.store.core import Cursor, Transactional, retried


class GatewayRecords(Transactional):
    # -- API keys ----------------------------------------------------------------------------
    @retried
    def add_key(self, key_id: str, tenant: str, digest: str) -> None:
        with self.tx() as cur:
            cur.execute("INSERT INTO api_keys (id, tenant, sha256, created_at) "
                        "VALUES (?, ?, ?, ?)", (key_id, tenant, digest, time.time()))

    @retried
    def key_owner(self, digest: str) -> tuple[str, str] | None:
        """(key id, tenant) of a live key with this sha256."""
        with self.tx() as cur:
            row = cur.execute("SELECT id, tenant FROM api_keys WHERE sha256 = ? AND "
                              "revoked_at IS NULL", (digest,)).fetchone()
        return (row[0], row[1]) if row else None

    @retried
    def revoke_key(self, key_id: str) -> bool:
        with self.tx() as cur:
            cur.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                        (time.time(), key_id))
            return cur.rowcount == 1

    @retried
    def api_keys(self) -> list[dict[str, Any]]:
        with self.tx() as cur:
            rows = cur.execute("SELECT id, tenant, created_at, revoked_at FROM api_keys "
                               "ORDER BY created_at").fetchall()
        return [dict(zip(("id", "tenant", "created_at", "revoked_at"), r, strict=True))
                for r in rows]

    # -- token buckets (embedded) ----------------------------------------------------------
    @retried
    def take_token(self, key: str, rate: float, burst: float) -> float:
        """Take one token; 0 if granted, else the seconds until one is available."""
        now = time.time()
        with self.tx() as cur:
            row = cur.execute("SELECT tokens, updated_at FROM rate_buckets WHERE key = ?",
                              (key,)).fetchone()
            tokens = burst if row is None else min(burst, row[0] + (now - row[1]) * rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / rate
            if wait == 0:
                tokens -= 1
            cur.execute("INSERT INTO rate_buckets (key, tokens, updated_at) VALUES (?, ?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, "
                        "updated_at = excluded.updated_at", (key, tokens, now))
        return wait

    # -- online queue (embedded) -----------------------------------------------------------
    @retried
    def push_online(self, request_id: str, payload: str, at: float, max_waiting: int) -> bool:
        """Queue a request unless `max_waiting` already wait; False when the queue is full."""
        with self.tx() as cur:
            if _waiting(cur) >= max_waiting:
                return False
            cur.execute("INSERT INTO online_requests (id, payload, enqueued_at) VALUES (?, ?, ?)",
                        (request_id, payload, at))
        return True

    @retried
    def online_waiting(self) -> int:
        with self.tx() as cur:
            return _waiting(cur)

    @retried
    def take_online(self) -> str | None:
        """Take the oldest waiting request: its payload, or None when none waits or another
        worker took it first (the guarded update decides)."""
        with self.tx() as cur:
            row = cur.execute("SELECT id, payload FROM online_requests WHERE taken = 0 "
                              "ORDER BY enqueued_at, id LIMIT 1").fetchone()
            if row is None:
                return None
            cur.execute("UPDATE online_requests SET taken = 1 WHERE id = ? AND taken = 0",
                        (row[0],))
            return row[1] if cur.rowcount == 1 else None

    @retried
    def put_online_result(self, request_id: str, result: str) -> None:
        with self.tx() as cur:
            cur.execute("UPDATE online_requests SET result = ? WHERE id = ?", (result, request_id))

    @retried
    def pop_online_result(self, request_id: str) -> str | None:
        with self.tx() as cur:
            row = cur.execute("SELECT result FROM online_requests WHERE id = ?",
                              (request_id,)).fetchone()
            if row is None or row[0] is None:
                return None
            cur.execute("DELETE FROM online_requests WHERE id = ?", (request_id,))
        return row[0]

    @retried
    def drop_online(self, request_id: str) -> bool:
        """Forget a request and its answer; whether it was still waiting (no worker took it)."""
        with self.tx() as cur:
            row = cur.execute("SELECT taken FROM online_requests WHERE id = ?",
                              (request_id,)).fetchone()
            cur.execute("DELETE FROM online_requests WHERE id = ?", (request_id,))
        return row is not None and not row[0]


def _waiting(cur: Cursor) -> int:
    return int(cur.execute("SELECT COUNT(*) FROM online_requests WHERE taken = 0").fetchone()[0])
