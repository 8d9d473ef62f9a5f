"""Real services for tests: the machine's Redis and PostgreSQL (private key prefixes and fresh
databases, cleaned up after), and a `moto_server` S3 endpoint started on a free port.

With BEMQ_REQUIRE_SERVICES=1 (CI) a missing service fails the test; otherwise it skips.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REDIS_URL = os.environ.get("BEMQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("BEMQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def require(service: str, reason: str) -> None:
    message = f"{service} unavailable: {reason}"
    if os.environ.get("BEMQ_REQUIRE_SERVICES") == "1":
        pytest.fail(message + " (BEMQ_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0, address: str = "127.0.0.1") -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(1.0)
            if sock.connect_ex((address, port)) == 0:
                return True
        time.sleep(0.05)
    return False


def redis_client():  # type: ignore[no-untyped-def]
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        require("Redis", f"{REDIS_URL}: {exc}")
    return client


def drop_prefix(client, prefix: str) -> None:  # type: ignore[no-untyped-def]
    for key in client.scan_iter(match=prefix + "*", count=500):
        client.delete(key)


def create_database(*, migrated: bool = True) -> str:
    """A fresh PostgreSQL database, at the newest schema version unless `migrated` is False
    (production processes do not migrate by themselves: an operator runs `bemq migrate`);
    returns its URL."""
    import psycopg

    name = "bemq_t_" + uuid.uuid4().hex[:12]
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        require("PostgreSQL", f"{POSTGRES_URL}: {exc}")
    base, _, _ = POSTGRES_URL.rpartition("/")
    url = f"{base}/{name}"
    if migrated:
        migrate(url)
    return url


def migrate(url: str) -> None:
    """What `bemq migrate` does to the store at `url`."""
    from ops.store import open_store

    store = open_store(url, pool_size=1, retry_seconds=10)
    try:
        store.migrate()
    finally:
        store.close()


def drop_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class MotoServer:
    """`moto_server` as a real HTTP S3 endpoint on a free loopback port."""

    def __init__(self) -> None:
        exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) \
            or shutil.which("moto_server")
        if exe is None:
            require("S3 endpoint", "moto_server not installed (pip install 'moto[server]')")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if not wait_port(self.port):
            self.stop()
            require("S3 endpoint", "moto_server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
