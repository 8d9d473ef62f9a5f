"""The gateway's asyncio Redis clients: a bounded pool whose callers wait for a free connection.

Every online request makes a few Redis round trips (its rate-limit token, its push). Under a
burst hundreds are in flight at once; redis-py's default pool then refuses the call past its
connection cap (`MaxConnectionsError`), which surfaced as HTTP 500s under overload. A blocking
pool queues them instead, and a few dozen connections carry the load, since each round trip
is short.
"""

from __future__ import annotations

import redis.asyncio as aioredis

MAX_CONNECTIONS = 64
WAIT_SECONDS = 10.0  # past this with no free connection, the call fails (ConnectionError)


def async_client(url: str) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=MAX_CONNECTIONS,
                                                    timeout=WAIT_SECONDS)
    return aioredis.Redis(connection_pool=pool)
