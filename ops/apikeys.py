"""API keys for the HTTP gateway: shown once at creation, stored only as a sha256."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time

from ops.store import Store

KEY_PREFIX = "bemq-"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(store: Store, tenant: str) -> tuple[str, str]:
    """(key id, key) for `tenant`; the key itself is not kept anywhere."""
    if not tenant or len(tenant) > 64 or not tenant.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"tenant {tenant!r}: use 1-64 letters, digits, '-' or '_'")
    key_id = f"key_{secrets.token_hex(6)}"
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    store.add_key(key_id, tenant, digest(key))
    return key_id, key


def owner(store: Store, key: str) -> tuple[str, str] | None:
    """(key id, tenant) of a live key, None for an unknown or revoked one."""
    return store.key_owner(digest(key)) if key.startswith(KEY_PREFIX) else None


class KeyCache:
    """`owner` answers remembered for `ttl` seconds, so the gateway does not read the store on
    every request: a revoked key stops working within `ttl` seconds (BEMQ_API_KEY_CACHE_SECONDS)
    on every gateway process. Unknown keys are remembered too, which a flood of bad keys
    would otherwise turn into store reads."""

    def __init__(self, store: Store, ttl: float, max_entries: int = 10_000) -> None:
        self.store, self.ttl, self.max_entries = store, ttl, max_entries
        self._seen: dict[str, tuple[float, tuple[str, str] | None]] = {}
        self._lock = threading.Lock()

    def cached(self, key: str) -> tuple[bool, tuple[str, str] | None]:
        """(known here, owner): when not known, call `lookup` (it reads the store)."""
        with self._lock:
            hit = self._seen.get(key)
        if hit is None or hit[0] < time.monotonic():
            return False, None
        return True, hit[1]

    def lookup(self, key: str) -> tuple[str, str] | None:
        found = owner(self.store, key)
        with self._lock:
            if len(self._seen) >= self.max_entries:
                self._seen.clear()
            self._seen[key] = (time.monotonic() + self.ttl, found)
        return found
