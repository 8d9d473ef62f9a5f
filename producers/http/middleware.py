"""ASGI middleware of the gateway: request-size limits (413 before the body is read when the
length is declared; counted as it arrives otherwise) and request metrics."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producers.http.errors import error_response

REQUESTS = Counter("bem_requests", "HTTP requests by route template and status",
                   ["endpoint", "status"])
DURATION = Histogram("bem_request_duration_seconds", "HTTP request time by route template",
                     ["endpoint"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                                            5, 10, 30))


class BodyLimit:
    def __init__(self, app: ASGIApp, default: int, uploads: int) -> None:
        self.app, self.default, self.uploads = app, default, uploads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = self.uploads if scope["path"] == "/v1/files" else self.default
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, receive, send, limit)
            return
        if declared is not None:
            await self.app(scope, receive, send)
            return
        # No declared length: read it all (up to the limit) before the app sees any of it.
        body = await read_body(receive, limit)
        if body is None:
            await self._too_large(scope, receive, send, limit)
            return
        await self.app(scope, replay(body, receive), send)

    @staticmethod
    async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = error_response(413, f"request body is larger than {limit} bytes",
                                  code="request_too_large")
        await response(scope, receive, send)


async def read_body(receive: Receive, limit: int | None = None) -> bytes | None:
    """A request's whole body; None once it passes `limit` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        body = message.get("body", b"")
        size += len(body)
        if limit is not None and size > limit:
            return None
        chunks.append(body)
        if not message.get("more_body"):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app a body already read, then whatever follows."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


class RequestMetrics:
    """`bem_requests_total{endpoint,status}` and `bem_request_duration_seconds{endpoint}`,
    labelled by route template (never by id), "unmatched" for unknown paths."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: dict[str, Any] = {"code": 500}

        async def recorded(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recorded)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            REQUESTS.labels(endpoint, str(status["code"])).inc()
            DURATION.labels(endpoint).observe(time.perf_counter() - started)
