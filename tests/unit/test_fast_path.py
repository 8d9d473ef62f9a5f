"""`EmbeddingsFastPath` answers a well-formed embeddings call itself and hands everything else to
the app, with the body intact; errors raised on the fast path go through the app's handlers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.responses import JSONResponse

from producers.http.errors import APIError, api_error
from producers.http.fast_path import EmbeddingsFastPath

CALL = json.dumps({"model": "minilm", "input": "hello"}).encode()


def run(body: bytes, headers: list[tuple[bytes, bytes]], *, path: str = "/v1/embeddings",
        fail: Exception | None = None) -> tuple[list[bytes], list[dict[str, Any]]]:
    """(bodies the app was given, messages sent to the client)."""
    seen: list[bytes] = []

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        seen.append((await receive())["body"])
        await JSONResponse({"from": "app"})(scope, receive, send)

    async def authenticate(key: str, method: str, endpoint: str) -> str:
        assert (method, endpoint) == ("POST", "/v1/embeddings")
        return f"caller:{key}"

    async def embed(who: str, body: Any) -> bytes:
        if fail is not None:
            raise fail
        return json.dumps({"who": who, "input": body.input}).encode()

    middleware = EmbeddingsFastPath(app, path="/v1/embeddings", route="the-route",
                                    authenticate=authenticate, embed=embed,
                                    handlers={APIError: api_error})
    chunks = [body[:5], body[5:]]  # a body that arrives in two messages
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers,
             "query_string": b""}
    asyncio.run(middleware(scope, receive, send))
    return seen, sent


def body_of(sent: list[dict[str, Any]]) -> dict[str, Any]:
    return json.loads(b"".join(m.get("body", b"") for m in sent
                               if m["type"] == "http.response.body"))


def test_a_well_formed_call_never_reaches_the_app() -> None:
    seen, sent = run(CALL, [(b"authorization", b"Bearer k1")])
    assert seen == []
    assert sent[0]["status"] == 200
    assert body_of(sent) == {"who": "caller:k1", "input": "hello"}


def test_anything_else_goes_to_the_app_with_its_body() -> None:
    for body, headers in ((CALL, []), (CALL, [(b"authorization", b"Basic k1")]),
                          (b'{"model": "minilm"}', [(b"authorization", b"Bearer k1")])):
        seen, sent = run(body, headers)
        assert seen == [body] and body_of(sent) == {"from": "app"}
    seen, _ = run(CALL, [(b"authorization", b"Bearer k1")], path="/v1/other")
    assert seen == [CALL[:5]]  # another path: untouched, not even read


def test_errors_on_the_fast_path_use_the_apps_handlers() -> None:
    seen, sent = run(CALL, [(b"authorization", b"Bearer k1")],
                     fail=APIError(429, "slow down", code="rate_limit_exceeded",
                                   kind="rate_limit_error", headers={"Retry-After": "2"}))
    assert seen == [] and sent[0]["status"] == 429
    assert (b"retry-after", b"2") in sent[0]["headers"]
    assert body_of(sent)["error"]["code"] == "rate_limit_exceeded"
