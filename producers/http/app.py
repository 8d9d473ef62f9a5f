"""The HTTP gateway: OpenAI's Files, Batches and Embeddings APIs over the same `Client` the CLI
uses, with API keys (one tenant each), per-key rate limits and body size limits.

`bemq serve` runs it under uvicorn; `create_app(settings)` builds it for tests.
"""


import asyncio
import base64
import gc
import math
import time
import uuid
from typing import Annotated, Any, Literal

import orjson
import redis
from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from ops import apikeys, metrics
from ops.admission import Capacity, WorkersGone, answer_unless_gone, queue_bound
from ops.blobs import BlobsUnavailable
from ops.cached import Cached
from ops.canary.routing import route
from ops.models import UnknownModel
from ops.online import OnlineRequest, QueueFull, answer_vectors, open_gateway
from ops.ratelimit import open_limiter
from ops.settings import Settings, load_settings
from ops.store import StoreUnavailable
from producers.client import Client, InvalidBatch, NotFound
from producers.http import models as m
from producers.http.errors import (
    APIError,
    api_error,
    documented,
    error_response,
    validation_error,
)
from producers.http.fast_path import EmbeddingsFastPath
from producers.http.in_flight import InFlightLimit
from producers.http.middleware import BodyLimit, RequestMetrics
from producers.validate import rank_problem, resolve_adapter, token_ids
from schemas.batch import BatchObject, ExpiresAfter, OpenAIFile
from schemas.microbatch import Item


def _expires_after(anchor: str | None, seconds: int | None) -> int | None:
    """The multipart form's `expires_after[anchor]` and `expires_after[seconds]`, checked as
    OpenAI checks them; None when neither is given."""
    if anchor is None and seconds is None:
        return None
    try:
        return ExpiresAfter(anchor=anchor, seconds=seconds).seconds  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        param = f"expires_after[{err['loc'][0]}]"
        raise APIError(400, f"{param}: {err['msg']}", param=param,
                       code="invalid_value") from None


class Caller:
    def __init__(self, key_id: str, tenant: str) -> None:
        self.key_id, self.tenant = key_id, tenant


def create_app(cfg: Settings | None = None) -> ASGIApp:
    cfg = cfg or load_settings()
    base = Client(cfg)
    limiter = open_limiter(cfg, base.store)
    online = open_gateway(cfg, base.store)
    keys = apikeys.KeyCache(base.store, cfg.api_key_cache_seconds)
    routes = Cached(base.store.routes)
    capacity = Cached(lambda: Capacity.of(base.store.live_workers(cfg.dead_after)))
    dim = int(base.model.config["hidden_size"])
    bearer = HTTPBearer(auto_error=False, description="an API key from `bemq keys create`")

    app = FastAPI(title="bemq", version="1.0",
                  description="OpenAI-compatible Files, Batches and Embeddings APIs.")
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Routing errors (unknown path, wrong method) in OpenAI's error shape; a 405 lists
        every method the path supports."""
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            allowed = sorted({meth for r in app.routes if isinstance(r, APIRoute)
                              and r.path_regex.match(request.url.path) for meth in r.methods})
            headers["Allow"] = ", ".join(allowed)
        return error_response(exc.status_code, str(exc.detail), headers=headers,
                              code="not_found" if exc.status_code == 404 else None)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return error_response(404, str(exc), code="not_found")

    @app.exception_handler(StoreUnavailable)
    @app.exception_handler(BlobsUnavailable)
    @app.exception_handler(redis.RedisError)  # the broker's Redis, e.g. during a failover
    async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
        return error_response(503, f"{type(exc).__name__}: {exc}", kind="server_error",
                              code="unavailable", headers={"Retry-After": "5"})

    async def authenticate(key: str, method: str, endpoint: str) -> Caller:
        """The caller owning `key`, once its rate limit for this route allows the request."""
        if not key:
            raise APIError(401, "missing API key: send Authorization: Bearer KEY",
                           code="invalid_api_key")
        known, found = keys.cached(key)
        if not known:
            found = await asyncio.to_thread(keys.lookup, key)
        if found is None:
            raise APIError(401, "invalid or revoked API key", code="invalid_api_key")
        wait = await limiter.take_async(f"{found[0]}:{method}:{endpoint}")
        if wait > 0:
            raise APIError(429, f"rate limit of {cfg.rate_limit_per_second:g}/s for this key "
                           f"on {method} {endpoint}; retry in {wait:.2f}s",
                           kind="rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})
        return Caller(*found)

    async def caller(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None,
                                                        Depends(bearer)]) -> Caller:
        route = request.scope.get("route")
        endpoint = getattr(route, "path", request.url.path)
        return await authenticate(creds.credentials if creds else "", request.method, endpoint)

    Auth = Annotated[Caller, Depends(caller)]

    def client(who: Caller) -> Client:
        return Client(cfg, tenant=who.tenant, shared=base)

    # -- files -------------------------------------------------------------------------------
    @app.post("/v1/files", response_model=OpenAIFile, tags=["files"],
              responses=documented(400, 401, 413, 429))
    def upload_file(who: Auth, file: Annotated[UploadFile, File()],
                    purpose: Annotated[Literal["batch"], Form()],
                    anchor: Annotated[str | None, Form(alias="expires_after[anchor]")] = None,
                    seconds: Annotated[int | None, Form(alias="expires_after[seconds]")] = None,
                    ) -> OpenAIFile:
        expiry = _expires_after(anchor, seconds)
        data = file.file.read(cfg.max_file_bytes + 1)
        if len(data) > cfg.max_file_bytes:
            raise APIError(413, f"file: larger than {cfg.max_file_bytes} bytes", param="file",
                           code="file_too_large")
        name = (file.filename or "upload.jsonl")[:255]
        obj = client(who).upload_file(data, name, purpose, expires_after=expiry)
        return obj.public()

    @app.get("/v1/files", response_model=m.FileList, tags=["files"],
             responses=documented(400, 401, 429))
    def list_files(who: Auth, purpose: Annotated[str | None, Query(max_length=64)] = None,
                   limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
                   after: Annotated[str | None, Query(max_length=128)] = None,
                   order: Annotated[Literal["asc", "desc"], Query()] = "desc") -> m.FileList:
        found = client(who).files(purpose=purpose, after=after, limit=limit + 1, order=order)
        page = [f.public() for f in found[:limit]]
        return m.FileList(data=page, first_id=page[0].id if page else None,
                          last_id=page[-1].id if page else None, has_more=len(found) > limit)

    @app.get("/v1/files/{file_id}", response_model=OpenAIFile, tags=["files"],
             responses=documented(401, 404, 429))
    def get_file(who: Auth, file_id: str) -> OpenAIFile:
        obj = client(who).file(file_id)
        return obj.public()

    @app.get("/v1/files/{file_id}/content", tags=["files"], response_class=Response,
             responses={200: {"content": {"application/octet-stream": {}},
                              "description": "the file's bytes"},
                        **documented(401, 404, 429)})
    def file_content(who: Auth, file_id: str) -> Response:
        return Response(client(who).file_content(file_id),
                        media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}", response_model=m.FileDeleted, tags=["files"],
                responses=documented(401, 404, 429))
    def delete_file(who: Auth, file_id: str) -> m.FileDeleted:
        client(who).delete_file(file_id)
        return m.FileDeleted(id=file_id)

    # -- batches -----------------------------------------------------------------------------
    @app.post("/v1/batches", response_model=BatchObject, tags=["batches"],
              responses=documented(400, 401, 404, 429))
    def create_batch(who: Auth, body: m.BatchIn) -> BatchObject:
        try:
            expiry = body.output_expires_after
            job = client(who).create_batch(body.input_file_id, endpoint=body.endpoint,
                                           completion_window=body.completion_window,
                                           metadata=body.metadata,
                                           output_expires_after=expiry and expiry.seconds)
        except NotFound as exc:
            raise APIError(404, f"input_file_id: {exc}", param="input_file_id",
                           code="not_found") from None
        except InvalidBatch as exc:
            raise APIError(400, str(exc).replace("\n", " "), param="input_file_id",
                           code="invalid_batch_file") from None
        except ValueError as exc:  # metadata.priority out of range or not a number
            raise APIError(400, str(exc), param=str(exc).partition(":")[0],
                           code="invalid_value") from None
        return job.public()

    @app.get("/v1/batches/{batch_id}", response_model=BatchObject, tags=["batches"],
             responses=documented(401, 404, 429))
    def get_batch(who: Auth, batch_id: str) -> BatchObject:
        return client(who).status(batch_id).public()

    @app.get("/v1/batches", response_model=m.BatchList, tags=["batches"],
             responses=documented(400, 401, 429))
    def list_batches(who: Auth, after: Annotated[str | None, Query(max_length=128)] = None,
                     limit: Annotated[int, Query(ge=1, le=100)] = 20) -> m.BatchList:
        jobs = client(who).list(limit=limit + 1, after=after)
        page = [j.public() for j in jobs[:limit]]
        return m.BatchList(data=page, first_id=page[0].id if page else None,
                           last_id=page[-1].id if page else None, has_more=len(jobs) > limit)

    @app.post("/v1/batches/{batch_id}/cancel", response_model=BatchObject, tags=["batches"],
              responses=documented(401, 404, 429))
    def cancel_batch(who: Auth, batch_id: str) -> BatchObject:
        return client(who).cancel(batch_id).public()

    # -- embeddings (online) -----------------------------------------------------------------
    async def embed(who: Caller, body: m.EmbeddingsIn) -> bytes:
        """The response body of an embeddings call. Async end to end: no thread waits for the
        worker's answer, and the answer's float32 vectors go out through orjson without a
        second pass through pydantic."""
        texts = [body.input] if isinstance(body.input, str) else body.input
        where = (lambda i: "input") if isinstance(body.input, str) else (lambda i: f"input[{i}]")
        try:
            adapter = resolve_adapter(body.model, cfg.model_name, None)
            record = None
            if adapter is not None:
                record = await asyncio.to_thread(base.store.get_adapter, adapter)
                if record is None:
                    raise UnknownModel(f"unknown adapter {adapter!r}")
        except UnknownModel as exc:
            raise APIError(404, f"model: {exc}", param="model", code="model_not_found") from None
        problem = rank_problem(body.rank, adapter, record and {record.name: record.rank})
        if problem is not None:
            raise APIError(400, f"rank: {problem}", param="rank", code="invalid_value")
        if body.dimensions is not None and body.dimensions != dim:
            raise APIError(400, f"dimensions: this model gives {dim}", param="dimensions",
                           code="invalid_value")
        ids = token_ids(base.model, texts)
        for i, row in enumerate(ids):
            if len(row) > base.model.max_seq_length:
                raise APIError(400, f"{where(i)}: {len(row)} tokens; the model's limit is "
                               f"{base.model.max_seq_length}", param=where(i),
                               code="context_length_exceeded")
        request_id = uuid.uuid4().hex
        lengths = [len(r) for r in ids]
        arm: dict[str, Any] = {"adapter": adapter}
        if adapter is not None:  # under a canary? sticky by the caller's `user` when given
            current = await routes.get()
            item = Item(line=0, custom_id=f"user:{body.user}" if body.user else request_id,
                        texts=texts, lengths=lengths, model=body.model, adapter=adapter)
            routed = route([item], who.tenant, current, shadow_fraction=0.0)[0]
            arm = {"adapter": routed.adapter, "arm": routed.arm,
                   "canary_id": routed.canary_id, "canary_step": routed.canary_step}
        request = OnlineRequest(id=request_id, tenant=who.tenant, model=body.model,
                                texts=texts, lengths=lengths, ids=ids, rank=body.rank,
                                enqueued_at=time.time(), **arm)
        cap = await capacity.get()
        if not cap.alive:  # refuse at once rather than time out
            metrics.ONLINE_ADMISSION.labels("no_worker").inc()
            raise APIError(503, "no worker serving online requests is alive (no heartbeat "
                           f"within {cfg.dead_after:g}s)", kind="server_error",
                           code="no_worker", headers={"Retry-After": "5"})
        deadline = cfg.online_timeout_seconds
        bound, reason = queue_bound(cap, cfg.online_max_queue, deadline)
        try:
            result = await answer_unless_gone(online.call(request, deadline, bound),
                                              capacity.get)
        except QueueFull:
            metrics.ONLINE_ADMISSION.labels(reason).inc()
            if reason == "deadline":
                raise APIError(429, f"{bound} online requests are waiting already; at the "
                               f"measured {cap.rps:.0f} requests/s a new one would wait past "
                               f"its {deadline:g}s deadline; retry shortly",
                               kind="server_error", code="deadline",
                               headers={"Retry-After": "1"}) from None
            raise APIError(429, f"{cfg.online_max_queue} online requests are waiting already "
                           "(BEMQ_ONLINE_MAX_QUEUE); retry shortly", kind="server_error",
                           code="queue_full", headers={"Retry-After": "1"}) from None
        except WorkersGone:
            metrics.ONLINE_ADMISSION.labels("no_worker").inc()
            raise APIError(503, "every worker serving online requests stopped while this "
                           "request waited", kind="server_error", code="no_worker",
                           headers={"Retry-After": "5"}) from None
        metrics.ONLINE_ADMISSION.labels("admitted").inc()
        if result is None:
            raise APIError(503, f"no worker answered within {cfg.online_timeout_seconds:g}s",
                           kind="server_error", code="timeout", headers={"Retry-After": "5"})
        if "error" in result:
            raise APIError(500, result["error"]["message"], kind="server_error",
                           code=result["error"]["code"])
        vectors = answer_vectors(result)
        if body.encoding_format == "base64":
            data: list[dict[str, Any]] = [
                {"object": "embedding", "index": i, "embedding": base64.b64encode(v).decode()}
                for i, v in enumerate(vectors)]
        else:
            data = [{"object": "embedding", "index": i, "embedding": v}
                    for i, v in enumerate(vectors)]
        usage = {"prompt_tokens": result["tokens"], "total_tokens": result["tokens"]}
        return orjson.dumps({"object": "list", "data": data, "model": body.model,
                             "usage": usage}, option=orjson.OPT_SERIALIZE_NUMPY)

    @app.post("/v1/embeddings", response_model=m.EmbeddingsOut, tags=["embeddings"],
              responses=documented(400, 401, 404, 413, 429, 503))
    async def embeddings(who: Auth, body: m.EmbeddingsIn) -> Response:
        """Well-formed calls are answered by `EmbeddingsFastPath` in front of the app with the
        same `embed`; this route answers the rest (and documents the API)."""
        return Response(await embed(who, body), media_type="application/json")

    # -- operations --------------------------------------------------------------------------
    @app.get("/health", response_model=m.Health, tags=["operations"])
    def health() -> m.Health:
        return m.Health(status="ok")

    @app.get("/ready", response_model=m.Ready, tags=["operations"],
             responses={503: {"model": m.Ready, "description": "a dependency is down"},
                        **documented(401, 429)})
    def ready(_: Auth) -> JSONResponse:
        checks = _checks(cfg, base)
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(m.Ready(status="ready" if ok else "not ready",
                                    checks=checks).model_dump(), status_code=200 if ok else 503)

    @app.get("/metrics", tags=["operations"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus"},
                        **documented(401, 429)})
    def metrics_endpoint(_: Auth) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # The gateway's own layers wrap the app instead of joining its middleware stack, so that an
    # embeddings call refused or answered on the fast path skips the framework's layers.
    documented_route = next(r for r in app.routes
                            if getattr(r, "path", None) == "/v1/embeddings")
    fast = EmbeddingsFastPath(app, path="/v1/embeddings", route=documented_route,
                              authenticate=authenticate, embed=embed,
                              handlers=app.exception_handlers)
    limited = BodyLimit(fast, default=cfg.http_max_body_bytes,
                        uploads=cfg.max_file_bytes + 1024 * 1024)
    # What was built so far lives as long as the process: out of the collector's way, so that
    # a full collection under load walks only the objects of calls in flight.
    gc.freeze()
    return RequestMetrics(InFlightLimit(limited, path="/v1/embeddings", route=documented_route,
                                        ceiling=cfg.http_max_in_flight))



def _checks(cfg: Settings, base: Client) -> dict[str, str]:
    from producers.broker import ping_broker

    checks = {}
    for name, probe in (("store", base.store.ping), ("blobs", base.blobs.ping),
                        ("broker", lambda: ping_broker(cfg))):
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"{type(exc).__name__}: {exc}"[:200]
    try:
        live = base.store.live_workers(cfg.dead_after)
        serving = [w for w in live if "gpu" in w["queues"] or "online" in w["queues"]]
        checks["workers"] = "ok" if serving else "no GPU worker alive"
    except Exception as exc:
        checks["workers"] = f"{type(exc).__name__}: {exc}"[:200]
    return checks
