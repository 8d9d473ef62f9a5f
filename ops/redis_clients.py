"""Every Redis client bemq opens besides Celery's own, from the broker URL: plain or Sentinel.

`redis://` and `rediss://` open as they are. A Sentinel broker is kombu's form, every sentinel
named and `;`-separated, with the master's name in `BEMQ_SENTINEL_MASTER`:

    sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379;sentinel://10.0.0.3:26379/0

Celery (kombu), RedBeat, the online queue, the rate limiter and the metrics collector all take
their primary from the same sentinels, so a failover moves all of them. Three failures seen in
the field are designed around here:

- Only the first sentinel used (kombu#813): each client gets the whole list and asks the next
  sentinel when one does not answer.
- Stuck on a demoted primary that answers READONLY (celery#7946): redis-py's sentinel-managed
  connection turns that reply into a connection error and drops the connection; the next
  command asks the sentinels again.
- A primary that vanishes without a reset (a cut link) would hold a command for ever: every
  client has connect and read timeouts (`SOCKET_TIMEOUT`, longer than any blocking pop here).
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import unquote, urlparse

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as aiosentinel
import redis.sentinel

# Seconds; every blocking pop here waits at most 1 s. A worker's Celery thread waits on a quiet
# primary several times in a row (in the test: the refill it sends, the acknowledgement, then
# two more waits before the overdue BRPOP is dropped), so this is what bounds batch work's
# stall when a primary's host is cut off: 21 s at 5 s, 7 s at 2 s, in
# `test_broker_primary_lost_under_sentinel`.
SOCKET_TIMEOUT = 2.0
# Sentinels themselves are asked with short timeouts, so a dead one costs little.
SENTINEL_KWARGS = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
ASYNC_MAX_CONNECTIONS = 64
ASYNC_WAIT_SECONDS = 10.0  # a caller waits this long for a free pooled connection, then fails


@dataclasses.dataclass(frozen=True)
class SentinelTarget:
    """The sentinels of a `sentinel://` broker URL, and what to ask them for."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str, master: str) -> SentinelTarget:
        """Each `;`-separated part is one sentinel; the database number and the credentials
        (for the Redis servers) come from the first part that names them."""
        if not master:
            raise ValueError("a sentinel:// broker URL needs BEMQ_SENTINEL_MASTER (the name "
                             "the sentinels monitor the primary under)")
        sentinels, db, username, password = [], 0, None, None
        for part in url.split(";"):
            parsed = urlparse(part.strip())
            if parsed.scheme != "sentinel" or not parsed.hostname:
                raise ValueError(f"expected sentinel://HOST[:PORT][/DB] for every sentinel, got "
                                 f"{part.strip()!r}")
            sentinels.append((parsed.hostname, parsed.port or 26379))
            if parsed.path.strip("/") and db == 0:
                db = int(parsed.path.strip("/"))
            if parsed.password and password is None:
                username = unquote(parsed.username) if parsed.username else None
                password = unquote(parsed.password)
        return cls(tuple(sentinels), master, db, username, password)

    def redbeat_options(self) -> dict[str, Any]:
        """`redbeat_redis_options` for RedBeat's own Sentinel branch (no `retry_period`: a
        beat that cannot reach Redis retries in `workers.beat`, as on a plain Redis URL)."""
        return {"sentinels": list(self.sentinels), "service_name": self.master, "db": self.db,
                "password": self.password, "socket_timeout": SOCKET_TIMEOUT}

    def _kwargs(self) -> dict[str, Any]:
        return {"db": self.db, "username": self.username, "password": self.password,
                "socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": SOCKET_TIMEOUT}


def target(url: str, master: str = "") -> SentinelTarget | None:
    """The Sentinel target of a broker URL; None for a plain Redis URL."""
    return SentinelTarget.parse(url, master) if url.startswith("sentinel://") else None


def sync_client(url: str, master: str = "") -> redis.Redis:
    found = target(url, master)
    if found is None:
        return redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT,
                                    socket_connect_timeout=SOCKET_TIMEOUT)
    sentinel = redis.sentinel.Sentinel(list(found.sentinels),
                                       sentinel_kwargs=SENTINEL_KWARGS)
    return sentinel.master_for(found.master, **found._kwargs())


class _BlockingSentinelPool(aiosentinel.SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """A Sentinel pool whose callers wait for a free connection, as the plain one below."""


def async_client(url: str, master: str = "") -> aioredis.Redis:
    """The gateway's asyncio client: a bounded pool whose callers wait for a free connection.
    Under a burst hundreds of requests are in flight, each with a few short round trips;
    redis-py's default pool refuses a call past its cap (`MaxConnectionsError`, which surfaced
    as HTTP 500s under overload), where a blocking pool queues it."""
    found = target(url, master)
    if found is None:
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=ASYNC_MAX_CONNECTIONS, timeout=ASYNC_WAIT_SECONDS,
            socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT)
        return aioredis.Redis(connection_pool=pool)
    sentinel = aiosentinel.Sentinel(list(found.sentinels),
                                    sentinel_kwargs=SENTINEL_KWARGS)
    return sentinel.master_for(found.master, connection_pool_class=_BlockingSentinelPool,
                               max_connections=ASYNC_MAX_CONNECTIONS,
                               timeout=ASYNC_WAIT_SECONDS, **found._kwargs())
