"""API keys for the HTTP gateway: shown once at creation, stored only as a sha256."""

from __future__ import annotations

import hashlib
import secrets

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
