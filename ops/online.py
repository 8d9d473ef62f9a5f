"""The online request queue between the HTTP gateway and GPU workers, with dynamic batching.

The gateway pushes one request per `POST /v1/embeddings` and awaits its result; a worker pops
requests into a batch that closes when the next request would overflow the padded-token budget
or the row cap, or when the oldest request has waited `max_queue_delay_ms` (as Triton's dynamic
batcher). Redis lists carry both directions in production: requests on one list, answers on one
reply list per gateway process, which a single task of that process hands to the waiting
requests (no thread and no connection held per waiting request). The store carries both in the
embedded deployment.

A request carries the token ids the gateway measured, so the worker does not tokenize again; an
answer carries its vectors as float32 bytes (base64), which the gateway writes out as JSON
numbers or passes on as base64 without a float ever becoming a Python object.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import redis
import redis.asyncio as aioredis
from pydantic import BaseModel

from ops import metrics
from ops.redis_clients import async_client, sync_client
from ops.settings import Settings
from ops.store import Store
from schemas.canary import Arm
from schemas.microbatch import Item

KEY_QUEUE = "online:queue"
KEY_REPLY = "online:reply:"
RESULT_TTL = 120
# Push a request unless ARGV[2] already wait: the check and the push are one step, so gateways
# racing for the last place cannot overfill the queue.
PUSH_IF_ROOM = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
return 1
"""


class QueueFull(Exception):
    """The online queue holds BEMQ_ONLINE_MAX_QUEUE requests already: refuse, do not wait."""

log = logging.getLogger(__name__)


class OnlineRequest(BaseModel):
    id: str
    tenant: str
    model: str  # as requested, e.g. "minilm:support-v1"
    texts: list[str]
    adapter: str | None  # None: the base model
    lengths: list[int]
    enqueued_at: float
    ids: list[list[int]] | None = None  # each text's token ids, as the gateway measured them
    reply_to: str | None = None  # the list its answer goes to (Redis)
    # Under a canary rollout (routed by the gateway as batch items are at submit).
    arm: Arm | None = None
    canary_id: str | None = None
    canary_step: int | None = None
    rank: int | None = None  # the request's rank budget

    def as_item(self) -> Item:
        """The request as the worker embeds it (one item, the request id as its custom_id)."""
        return Item(line=0, custom_id=self.id, texts=self.texts, lengths=self.lengths,
                    model=self.model, adapter=self.adapter, rank=self.rank, arm=self.arm,
                    canary_id=self.canary_id, canary_step=self.canary_step)


def answer(vectors: np.ndarray, tokens: int) -> dict[str, Any]:
    """A served request's answer: its unit vectors (rows, dim) as float32 bytes."""
    data = np.ascontiguousarray(vectors, dtype="<f4")
    return {"rows": data.shape[0], "dim": data.shape[1], "tokens": tokens,
            "vectors": base64.b64encode(data.tobytes()).decode()}


def answer_vectors(result: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(result["vectors"]), dtype="<f4").reshape(
        result["rows"], result["dim"])


class OnlineQueue(abc.ABC):
    """The worker's side: take batches of requests, answer them."""

    @abc.abstractmethod
    def push(self, request: OnlineRequest, max_waiting: int) -> bool:
        """Queue a request unless `max_waiting` already wait (False then)."""

    @abc.abstractmethod
    def put_results(self, answered: Sequence[tuple[OnlineRequest, dict[str, Any]]]) -> None:
        """Answer a batch's requests (in one round trip where the carrier allows)."""

    @abc.abstractmethod
    def _take(self, timeout: float) -> OnlineRequest | None:
        """The oldest waiting request, waiting up to `timeout` seconds for one."""

    @abc.abstractmethod
    def _give_back(self, request: OnlineRequest) -> None:
        """Return a request to the head of the queue (it did not fit the batch)."""

    def pop_batch(self, *, max_tokens: int, max_rows: int, max_delay: float, block: float,
                  stale_after: float) -> list[OnlineRequest]:
        """A batch of requests: waits up to `block` seconds for the first, then adds requests
        until the budget is full or the oldest has waited `max_delay`. Requests older than
        `stale_after` (their caller has given up) are dropped."""
        first = None
        deadline = time.monotonic() + block
        while first is None:
            first = self._take(max(deadline - time.monotonic(), 0.0))
            if first is None:
                return []
            if time.time() - first.enqueued_at > stale_after:
                metrics.ONLINE_DROPPED.labels("deadline").inc()
                first = None
        batch = [first]
        rows, width = len(first.texts), max(first.lengths)
        while rows < max_rows:
            # Whatever is queued joins at once; more is awaited only while the oldest request
            # has waited less than `max_delay`.
            remaining = max(first.enqueued_at + max_delay - time.time(), 0.0)
            nxt = self._take(remaining)
            if nxt is None:
                break
            new_rows, new_width = rows + len(nxt.texts), max(width, *nxt.lengths)
            if new_rows > max_rows or new_rows * new_width > max_tokens:
                self._give_back(nxt)
                break
            batch.append(nxt)
            rows, width = new_rows, new_width
        return batch


class RedisOnlineQueue(OnlineQueue):
    """Requests are taken up to `TAKE` at a time (LPOP with a count), so a batch of many small
    requests costs a few round trips, not one each."""

    BLOCKING, POLL, TAKE = 0.2, 0.0005, 64

    def __init__(self, url: str, prefix: str, master: str = "") -> None:
        self.redis = sync_client(url, master)
        self.queue = prefix + KEY_QUEUE
        self._held: list[bytes] = []  # taken from Redis, not yet handed out (newest last)

    def push(self, request: OnlineRequest, max_waiting: int) -> bool:
        return bool(self.redis.eval(PUSH_IF_ROOM, 1, self.queue, request.model_dump_json(),
                                    max_waiting))

    def put_results(self, answered: Sequence[tuple[OnlineRequest, dict[str, Any]]]) -> None:
        """One RPUSH (and one EXPIRE) per gateway process the batch's requests came from."""
        replies: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for request, result in answered:
            if request.reply_to is None:
                log.warning("online request %s has no reply list; dropped", request.id)
                continue
            replies.setdefault(request.reply_to, []).append((request.id, result))
        with self.redis.pipeline(transaction=False) as pipe:
            for reply_to, results in replies.items():
                # Each answer says how many more this push put behind it, so the gateway's
                # reply task takes them all with one more round trip instead of one each.
                pipe.rpush(reply_to, *(orjson.dumps({**result, "id": request_id,
                                                     "left": len(results) - 1 - i})
                                       for i, (request_id, result) in enumerate(results)))
                pipe.expire(reply_to, RESULT_TTL)
            pipe.execute()

    def _take(self, timeout: float) -> OnlineRequest | None:
        """LPOP (with a count) first; BLPOP for long waits (an arrival wakes it at once); LPOP
        polls for the batching delay's few milliseconds, because Redis checks blocking timeouts
        only every 1/hz (100 ms by default), so a 4 ms BLPOP would wait up to 100 ms."""
        deadline = time.monotonic() + timeout
        if not self._held and timeout >= self.BLOCKING and not self._fill():
            got = self.redis.blpop([self.queue], timeout=timeout)
            return OnlineRequest.model_validate_json(got[1]) if got else None
        while not self._held and not self._fill() and time.monotonic() < deadline:
            time.sleep(self.POLL)
        return OnlineRequest.model_validate_json(self._held.pop()) if self._held else None

    def _fill(self) -> bool:
        """Take up to `TAKE` waiting requests into `_held`; whether any came."""
        self._held = list(reversed(self.redis.lpop(self.queue, self.TAKE) or []))
        return bool(self._held)

    def _give_back(self, request: OnlineRequest) -> None:
        self._held.append(request.model_dump_json().encode())


class StoreOnlineQueue(OnlineQueue):
    """For the embedded deployment: a table, polled every millisecond while requests flow and
    backing off to every 20 ms when idle."""

    POLL_MIN, POLL_MAX = 0.001, 0.02

    def __init__(self, store: Store) -> None:
        self.store = store
        self._held: list[OnlineRequest] = []

    def push(self, request: OnlineRequest, max_waiting: int) -> bool:
        return self.store.push_online(request.id, request.model_dump_json(),
                                      request.enqueued_at, max_waiting)

    def put_results(self, answered: Sequence[tuple[OnlineRequest, dict[str, Any]]]) -> None:
        for request, result in answered:
            self.store.put_online_result(request.id, json.dumps(result, separators=(",", ":")))

    def _take(self, timeout: float) -> OnlineRequest | None:
        if self._held:
            return self._held.pop()
        deadline = time.monotonic() + timeout
        poll = self.POLL_MIN
        while True:
            payload = self.store.take_online()
            if payload is not None:
                return OnlineRequest.model_validate_json(payload)
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(poll, max(deadline - time.monotonic(), 0)))
            poll = min(poll * 2, self.POLL_MAX)

    def _give_back(self, request: OnlineRequest) -> None:
        self._held.append(request)  # taken in the store already; served by the next batch


def open_queue(cfg: Settings, store: Store) -> OnlineQueue:
    if cfg.embedded_broker:
        return StoreOnlineQueue(store)
    return RedisOnlineQueue(cfg.broker_url, cfg.redis_prefix, cfg.sentinel_master)


class OnlineGateway(abc.ABC):
    """The gateway's side: send a request, await its answer."""

    @abc.abstractmethod
    async def call(self, request: OnlineRequest, timeout: float, max_waiting: int
                   ) -> dict[str, Any] | None:
        """The worker's answer, or None after `timeout` seconds (the caller has given up; a
        worker drops the request unserved once it is older than `stale_after`). `QueueFull`
        at once when `max_waiting` requests already wait. Cancelled (the client disconnected,
        or no worker is left), it takes the request back out of the queue if no worker has
        taken it yet, so it is never computed."""


class RedisOnlineGateway(OnlineGateway):
    """One reply list per gateway process, read by one task (`bemq-online-replies`) that
    resolves each waiting request's future: waiting costs no thread and no connection."""

    def __init__(self, url: str, prefix: str, master: str = "") -> None:
        self.url, self.master = url, master
        self.queue = prefix + KEY_QUEUE
        self.reply_to = f"{prefix}{KEY_REPLY}{uuid.uuid4().hex}"
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._redis: aioredis.Redis | None = None
        self._push: Any = None  # PUSH_IF_ROOM, run by its SHA once Redis has it
        self._listener: asyncio.Task[None] | None = None

    def _started(self) -> aioredis.Redis:
        """Clients and the reply task belong to the running loop (made on first use in it)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._redis is None:
            self._loop, self._pending = loop, {}
            self._redis = async_client(self.url, self.master)
            self._push = self._redis.register_script(PUSH_IF_ROOM)
            self._listener = loop.create_task(self._replies(async_client(self.url, self.master)),
                                              name="bemq-online-replies")
        return self._redis

    async def _replies(self, conn: aioredis.Redis) -> None:
        try:
            while True:
                try:
                    got = await conn.blpop([self.reply_to], timeout=1)
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    log.warning("online replies: %r; retrying", exc)
                    await asyncio.sleep(0.5)
                    continue
                if got is None:
                    continue
                # A worker's push puts a batch's answers back to back, each saying how many
                # follow it (older workers do not say): the rest come in one more round trip.
                # Should that fail, they stay listed, and the next BLPOP starts on them.
                if left := self._resolve(got[1]):
                    for value in await conn.lpop(self.reply_to, left) or []:
                        self._resolve(value)
        finally:
            with contextlib.suppress(Exception):
                await conn.aclose()

    def _resolve(self, value: bytes) -> int:
        """Hand one answer to its waiting request; how many more its push put behind it."""
        result = orjson.loads(value)
        left = result.pop("left", 0)
        future = self._pending.pop(result.pop("id"), None)
        if future is not None and not future.done():
            future.set_result(result)
        return int(left)

    async def call(self, request: OnlineRequest, timeout: float, max_waiting: int
                   ) -> dict[str, Any] | None:
        self._started()
        assert self._loop is not None
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._pending[request.id] = future
        request.reply_to = self.reply_to
        payload = request.model_dump_json()
        try:
            if not await self._push(keys=[self.queue], args=[payload, max_waiting]):
                raise QueueFull
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        except asyncio.CancelledError:
            assert self._redis is not None
            if await asyncio.shield(self._redis.lrem(self.queue, 1, payload)):
                metrics.ONLINE_DROPPED.labels("disconnected").inc()
            raise
        finally:
            self._pending.pop(request.id, None)


class StoreOnlineGateway(OnlineGateway):
    """The embedded deployment: the store's queue, polled from the event loop (each read a
    short call in a thread; the waiting itself holds no thread, so many waiting requests never
    take the pool that every other blocking call of the gateway needs)."""

    POLL_MIN, POLL_MAX = 0.001, 0.02

    def __init__(self, store: Store) -> None:
        self.store = store
        self.queue = StoreOnlineQueue(store)

    async def call(self, request: OnlineRequest, timeout: float, max_waiting: int
                   ) -> dict[str, Any] | None:
        if not await asyncio.to_thread(self.queue.push, request, max_waiting):
            raise QueueFull
        deadline = time.monotonic() + timeout
        poll = self.POLL_MIN
        try:
            while True:
                raw = await asyncio.to_thread(self.store.pop_online_result, request.id)
                if raw is not None:
                    return json.loads(raw)
                if time.monotonic() > deadline:
                    await asyncio.to_thread(self.store.drop_online, request.id)
                    return None
                await asyncio.sleep(poll)
                poll = min(poll * 2, self.POLL_MAX)
        except asyncio.CancelledError:
            if await asyncio.shield(asyncio.to_thread(self.store.drop_online, request.id)):
                metrics.ONLINE_DROPPED.labels("disconnected").inc()
            raise


def open_gateway(cfg: Settings, store: Store) -> OnlineGateway:
    if cfg.embedded_broker:
        return StoreOnlineGateway(store)
    return RedisOnlineGateway(cfg.broker_url, cfg.redis_prefix, cfg.sentinel_master)
