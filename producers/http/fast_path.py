"""`POST /v1/embeddings` without the web framework's per-request machinery.

An online embedding is the one call made thousands of times a second, and with the model out of
the way the framework's routing, dependency solving and wrappers were most of its cost (py-spy on
the gateway under load). This ASGI middleware answers a well-formed call itself with the same
two functions the FastAPI route uses (`authenticate`, `embed`) and the app's own exception
handlers. Anything else (no bearer key, a body that fails validation, another path) goes on to
the app unchanged, so every error is still defined once, by the route.

While it waits for the answer it listens for the client's disconnect: a caller that has gone
gets its request withdrawn from the queue (`OnlineGateway.call`), so no worker computes it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from producers.http.errors import APIError
from producers.http.in_flight import SHED, SHED_CODES
from producers.http.middleware import read_body, replay
from producers.http.models import EmbeddingsIn

Authenticate = Callable[[str, str, str], Awaitable[Any]]
Embed = Callable[[Any, EmbeddingsIn], Awaitable[bytes]]


class EmbeddingsFastPath:
    def __init__(self, app: ASGIApp, *, path: str, route: object, authenticate: Authenticate,
                 embed: Embed, handlers: Mapping[Any, Callable[..., Any]]) -> None:
        self.app, self.path, self.route = app, path, route
        self.authenticate, self.embed, self.handlers = authenticate, embed, handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)  # its size is bounded by `BodyLimit` outside
        assert body is not None
        token = _bearer(scope)
        try:
            parsed = EmbeddingsIn.model_validate_json(body) if token else None
        except ValidationError:
            parsed = None
        if parsed is None:  # the route answers it, with its own error
            await self.app(scope, replay(body, receive), send)
            return
        scope["route"] = self.route  # what the request metrics label by
        try:
            who = await self.authenticate(token, "POST", self.path)
            payload = await _unless_disconnected(self.embed(who, parsed), receive)
            if payload is None:
                return  # the client has gone: no one to answer
        except Exception as exc:
            handler = next((self.handlers[t] for t in type(exc).__mro__ if t in self.handlers),
                           None)
            if handler is None:
                raise
            if isinstance(exc, APIError) and exc.code in SHED_CODES:
                scope[SHED] = exc.code  # for the in-flight limit outside
            response = await handler(Request(scope), exc)
            await response(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


async def _unless_disconnected(work: Awaitable[bytes], receive: Receive) -> bytes | None:
    """`work`'s result, or None (and `work` cancelled) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()


async def _disconnect(receive: Receive) -> None:
    """Returns when the client disconnects (the request's body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _bearer(scope: Scope) -> str:
    """The key of an `Authorization: Bearer KEY` header, "" without one."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            return key.strip() if scheme.lower() == "bearer" else ""
    return ""
