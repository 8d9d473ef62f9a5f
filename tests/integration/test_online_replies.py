"""Answers to online requests on Redis: a worker answers a batch with one push to each gateway's
reply list, and the gateway's reply task takes the whole push in two round trips, whatever the
batch's size, each waiting call getting its own answer."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

import ops.online
from ops.online import OnlineRequest, RedisOnlineGateway, RedisOnlineQueue
from tests.support.services import REDIS_URL

pytestmark = pytest.mark.timeout(60)


def request(n: int) -> OnlineRequest:
    return OnlineRequest(id=f"r{n}", tenant="t", model="minilm", texts=[f"text {n}"],
                         adapter=None, lengths=[4], enqueued_at=time.time())


def answer(n: int) -> dict[str, Any]:
    return {"rows": 1, "dim": 1, "tokens": 4, "vectors": f"vector of r{n}"}


def test_a_batch_of_answers_comes_back_in_two_round_trips(
        redis_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Five calls answered by one batch's push: the reply task's BLPOP takes the first answer
    and one LPOP the other four. Answers from an older worker, which do not say how many follow
    them, still reach their calls, one BLPOP each."""
    answered: collections.Counter[str] = collections.Counter()  # round trips that returned
    make_client = ops.online.async_client

    def counted(name: str, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            got = await call(*args, **kwargs)
            answered[name] += got is not None
            return got
        return wrapper

    def counting_client(url: str, master: str = "") -> Any:
        client = make_client(url, master)
        for name in ("blpop", "lpop"):
            setattr(client, name, counted(name, getattr(client, name)))
        return client

    monkeypatch.setattr(ops.online, "async_client", counting_client)
    worker = RedisOnlineQueue(REDIS_URL, redis_prefix)

    async def queued(gateway: RedisOnlineGateway, numbers: range) -> list[asyncio.Future[Any]]:
        calls = [asyncio.ensure_future(gateway.call(request(n), timeout=20, max_waiting=100))
                 for n in numbers]
        while worker.redis.llen(worker.queue) < len(numbers):
            assert not any(c.done() for c in calls), [c.exception() for c in calls if c.done()]
            await asyncio.sleep(0.01)
        return calls

    async def scenario() -> None:
        gateway = RedisOnlineGateway(REDIS_URL, redis_prefix)
        calls = await queued(gateway, range(5))
        batch = worker.pop_batch(max_tokens=1000, max_rows=16, max_delay=0.01, block=1.0,
                                 stale_after=60)
        assert sorted(r.id for r in batch) == [f"r{n}" for n in range(5)]
        worker.put_results([(r, answer(int(r.id[1:]))) for r in batch])
        assert await asyncio.gather(*calls) == [answer(n) for n in range(5)]
        assert answered == {"blpop": 1, "lpop": 1}

        older = await queued(gateway, range(5, 7))
        for r in worker.pop_batch(max_tokens=1000, max_rows=16, max_delay=0.01, block=1.0,
                                  stale_after=60):
            assert r.reply_to is not None
            worker.redis.rpush(r.reply_to, orjson.dumps({"id": r.id, **answer(int(r.id[1:]))}))
        assert await asyncio.gather(*older) == [answer(5), answer(6)]
        assert answered == {"blpop": 3, "lpop": 1}

    asyncio.run(asyncio.wait_for(scenario(), 30))
