"""Token-bucket rate limits per API key and endpoint: in Redis (one Lua script, atomic across
gateway processes), or in the store for the embedded deployment."""

from __future__ import annotations

import abc
import asyncio
import time

import redis.asyncio as aioredis

from ops.redis_clients import async_client, sync_client
from ops.settings import Settings
from ops.store import Store

_TAKE = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return tostring(wait)
"""


class Limiter(abc.ABC):
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst

    @abc.abstractmethod
    def take(self, bucket: str) -> float:
        """0 when a request may go ahead, else seconds until it may."""

    async def take_async(self, bucket: str) -> float:
        """`take` from the gateway's event loop (in a thread unless overridden)."""
        return await asyncio.to_thread(self.take, bucket)


class RedisLimiter(Limiter):
    def __init__(self, url: str, prefix: str, rate: float, burst: int, master: str = ""
                 ) -> None:
        super().__init__(rate, burst)
        self.url, self.master = url, master
        self.redis = sync_client(url, master)
        self.script = self.redis.register_script(_TAKE)
        self.prefix = prefix + "ratelimit:"
        self._async: tuple[asyncio.AbstractEventLoop, aioredis.Redis, object] | None = None

    def take(self, bucket: str) -> float:
        return float(self.script(keys=[self.prefix + bucket],
                                 args=[self.rate, self.burst, time.time()]))

    async def take_async(self, bucket: str) -> float:
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:  # clients belong to one loop
            client = async_client(self.url, self.master)
            self._async = (loop, client, client.register_script(_TAKE))
        script = self._async[2]
        return float(await script(keys=[self.prefix + bucket],  # type: ignore[operator]
                                  args=[self.rate, self.burst, time.time()]))


class StoreLimiter(Limiter):
    def __init__(self, store: Store, rate: float, burst: int) -> None:
        super().__init__(rate, burst)
        self.store = store

    def take(self, bucket: str) -> float:
        return self.store.take_token(bucket, self.rate, self.burst)


def open_limiter(cfg: Settings, store: Store) -> Limiter:
    if cfg.embedded_broker:
        return StoreLimiter(store, cfg.rate_limit_per_second, cfg.rate_limit_burst)
    return RedisLimiter(cfg.broker_url, cfg.redis_prefix, cfg.rate_limit_per_second,
                        cfg.rate_limit_burst, cfg.sentinel_master)
