"""A bound on the embeddings calls in flight in one gateway process, adapted to their latency.

When the gateway itself is the bottleneck (a fast model, a burst), calls queue inside the process
for its CPU, where the online queue's bound does not see them: past capacity every call outlasts
its deadline (measured with the zero-cost model at 2× capacity: 95 % timed out, p50 8.6 s). So a
call that finds `limit` calls in flight is refused at once with 429 `overloaded`, before its body
is read, for a small part of what serving it costs.

The limit follows the latency of answered calls, as TCP Vegas and Netflix's concurrency-limits
(its gradient limit) do: it grows by one per window of answers whose mean stays within
`TOLERANCE` × the unloaded mean (the fastest window of the last minute), and shrinks in
proportion when the mean goes past that under overload (below). Under overload an answered call
then takes about `TOLERANCE` times an unloaded one, whether the time goes to the gateway's CPU
or to the workers' queue, and the rest are refused.

It starts at its ceiling and shrinks only under overload, which is more calls arriving than are
answered: they either fill the limit, or are shed further in (the online queue's 429 `deadline`
and `queue_full`, 503 `timeout`: when the workers are the bottleneck, the calls past their queue
leave the gateway at once and never fill the limit). Callers that wait for each answer (a pool
of C clients) queue at most C calls; their answers are slower than one caller's (batches fill,
the CPU is shared), but refusing some of them would only make them ask again (32 wrk
connections, which do not back off, and the zero-cost model: a limit shrunk below 32 answered
about 250 calls/s and refused 24,400/s; one that starts at its ceiling answered 1,519-1,626/s,
none refused).
"""

from __future__ import annotations

import math
import time

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ops import metrics

TOLERANCE = 2.0  # a mean answer slower than this × the unloaded one means calls are queueing
WINDOW_CALLS, WINDOW_SECONDS = 10, 0.05  # a window of answers holds at least these
SHED = "bemq.shed"  # the scope key under which the app names a call it shed for load
SHED_CODES = frozenset({"deadline", "queue_full", "timeout"})  # the errors that shed load
BASELINE_SECONDS = 30.0  # the unloaded time is the fastest window of the last 30–60 s


class AdaptiveLimit:
    """How many calls may be in flight; `acquire` before a call, `release` after it with its
    round trip in seconds when it was answered (None for an error, which says nothing of the
    latency) and whether it was shed for load further in.

    Answers are judged a window at a time (`WINDOW_CALLS` answers and `WINDOW_SECONDS` at
    least), by their mean: single answers vary too much. Not thread-safe: one per event loop."""

    def __init__(self, ceiling: int, floor: int = 4, initial: int | None = None) -> None:
        self.ceiling, self.floor = ceiling, min(floor, ceiling)
        start = ceiling if initial is None else initial
        self.limit = float(min(max(start, self.floor), ceiling))
        self.in_flight = 0
        self._busiest = 0  # most calls in flight during this window
        self._shed = False  # a call shed for load further in during this window
        self._sum, self._count, self._began = 0.0, 0, -math.inf
        self._fastest = [math.inf, math.inf]  # the fastest window mean: now, and before
        self._baseline_ends = -math.inf
        metrics.ONLINE_IN_FLIGHT_LIMIT.set(int(self.limit))

    def acquire(self) -> bool:
        if self.in_flight >= int(self.limit):
            return False
        self.in_flight += 1
        self._busiest = max(self._busiest, self.in_flight)
        return True

    def release(self, now: float, rtt: float | None, shed: bool = False) -> None:
        self.in_flight -= 1
        self._shed = self._shed or shed
        if rtt is None:
            return
        if self._count == 0:
            self._began = now
        self._sum += rtt
        self._count += 1
        if self._count >= WINDOW_CALLS and now - self._began >= WINDOW_SECONDS:
            self._judge(now, self._sum / self._count)
            self._sum, self._count, self._busiest = 0.0, 0, self.in_flight
            self._shed = False

    def _judge(self, now: float, mean: float) -> None:
        if now >= self._baseline_ends:
            self._fastest = [math.inf, self._fastest[0]]
            self._baseline_ends = now + BASELINE_SECONDS
        self._fastest[0] = min(self._fastest[0], mean)
        gradient = TOLERANCE * min(self._fastest) / mean
        if gradient >= 1.0:
            if self._busiest >= self.limit / 2:  # only a limit in use has to grow
                self.limit = min(float(self.ceiling), self.limit + 1)
        elif self._shed or self._busiest >= int(self.limit):  # overload: shrink in proportion,
            self.limit = max(float(self.floor), self.limit * max(gradient, 0.5))  # half at most
        metrics.ONLINE_IN_FLIGHT_LIMIT.set(int(self.limit))


class InFlightLimit:
    """ASGI middleware: `POST path` under an `AdaptiveLimit`; other requests pass untouched."""

    def __init__(self, app: ASGIApp, *, path: str, route: object, ceiling: int) -> None:
        self.app, self.path, self.route = app, path, route
        self.limit = AdaptiveLimit(ceiling)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        if not self.limit.acquire():
            scope["route"] = self.route  # what the request metrics label by
            metrics.ONLINE_ADMISSION.labels("overloaded").inc()
            await self._refuse(send)
            return
        began = time.monotonic()
        status = 500

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            now = time.monotonic()
            self.limit.release(now, now - began if status == 200 else None,
                               shed=SHED in scope)

    async def _refuse(self, send: Send) -> None:
        body = orjson.dumps({"error": {
            "message": f"this gateway has {int(self.limit.limit)} embeddings calls in flight, "
                       "as many as it answers without queueing; retry shortly",
            "type": "server_error", "param": None, "code": "overloaded"}})
        await send({"type": "http.response.start", "status": 429, "headers": [
            (b"content-type", b"application/json"), (b"retry-after", b"1"),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
