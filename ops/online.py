"""The online request queue between the HTTP gateway and GPU workers, with dynamic batching.

The gateway pushes one request per `POST /v1/embeddings` and waits for its result; a worker pops
requests into a batch that closes when the next request would overflow the padded-token budget
or the row cap, or when the oldest request has waited `max_queue_delay_ms` (as Triton's dynamic
batcher). Redis lists carry both directions in production; the store does in the embedded
deployment.
"""

from __future__ import annotations

import abc
import json
import time
from typing import Any

import redis
from pydantic import BaseModel

from ops.settings import Settings
from ops.store import Store
from schemas.microbatch import Item

KEY_QUEUE = "online:queue"
KEY_RESULT = "online:result:"
RESULT_TTL = 120


class OnlineRequest(BaseModel):
    id: str
    tenant: str
    model: str  # as requested, e.g. "minilm:support-v1"
    texts: list[str]
    adapter: str | None  # None: the base model
    lengths: list[int]
    enqueued_at: float

    def as_item(self) -> Item:
        """The request as the worker embeds it (one item, the request id as its custom_id)."""
        return Item(line=0, custom_id=self.id, texts=self.texts, lengths=self.lengths,
                    model=self.model, adapter=self.adapter)


class OnlineQueue(abc.ABC):
    @abc.abstractmethod
    def push(self, request: OnlineRequest) -> None: ...

    @abc.abstractmethod
    def wait_result(self, request_id: str, timeout: float) -> dict[str, Any] | None:
        """The worker's result, or None after `timeout` seconds (the caller has given up; a
        worker drops the request unserved once it is older than `stale_after`)."""

    @abc.abstractmethod
    def put_result(self, request_id: str, result: dict[str, Any]) -> None: ...

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
    BLOCKING, POLL = 0.2, 0.0005

    def __init__(self, url: str, prefix: str) -> None:
        self.redis = redis.Redis.from_url(url, socket_timeout=None)
        self.queue = prefix + KEY_QUEUE
        self.results = prefix + KEY_RESULT

    def push(self, request: OnlineRequest) -> None:
        self.redis.rpush(self.queue, request.model_dump_json())

    def wait_result(self, request_id: str, timeout: float) -> dict[str, Any] | None:
        got = self.redis.blpop([self.results + request_id], timeout=max(timeout, 0.01))
        return json.loads(got[1]) if got else None

    def put_result(self, request_id: str, result: dict[str, Any]) -> None:
        key = self.results + request_id
        with self.redis.pipeline() as pipe:
            pipe.rpush(key, json.dumps(result, separators=(",", ":")))
            pipe.expire(key, RESULT_TTL)
            pipe.execute()

    def _take(self, timeout: float) -> OnlineRequest | None:
        """BLPOP for long waits (an arrival wakes it at once); LPOP polls for the batching
        delay's few milliseconds, because Redis checks blocking timeouts only every 1/hz
        (100 ms by default), so a 4 ms BLPOP would wait up to 100 ms."""
        deadline = time.monotonic() + timeout
        raw = self.redis.lpop(self.queue)
        if raw is None and timeout >= self.BLOCKING:
            got = self.redis.blpop([self.queue], timeout=timeout)
            return OnlineRequest.model_validate_json(got[1]) if got else None
        while raw is None and time.monotonic() < deadline:
            time.sleep(self.POLL)
            raw = self.redis.lpop(self.queue)
        return OnlineRequest.model_validate_json(raw) if raw is not None else None

    def _give_back(self, request: OnlineRequest) -> None:
        self.redis.lpush(self.queue, request.model_dump_json())


class StoreOnlineQueue(OnlineQueue):
    """For the embedded deployment: a table, polled every millisecond while requests flow and
    backing off to every 20 ms when idle."""

    POLL_MIN, POLL_MAX = 0.001, 0.02

    def __init__(self, store: Store) -> None:
        self.store = store
        self._held: list[OnlineRequest] = []

    def push(self, request: OnlineRequest) -> None:
        self.store.push_online(request.id, request.model_dump_json(), request.enqueued_at)

    def wait_result(self, request_id: str, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        poll = self.POLL_MIN
        while True:
            raw = self.store.pop_online_result(request_id)
            if raw is not None:
                return json.loads(raw)
            if time.monotonic() > deadline:
                self.store.drop_online(request_id)
                return None
            time.sleep(poll)
            poll = min(poll * 2, self.POLL_MAX)

    def put_result(self, request_id: str, result: dict[str, Any]) -> None:
        self.store.put_online_result(request_id, json.dumps(result, separators=(",", ":")))

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
    return RedisOnlineQueue(cfg.broker_url, cfg.redis_prefix)
