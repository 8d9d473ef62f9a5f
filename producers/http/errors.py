"""OpenAI-shaped error bodies, and the mapping from bemq's exceptions to HTTP statuses. Bad input
is always a 4xx naming the field or line; 5xx means bemq itself could not answer."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind, self.headers = kind, headers


def error_response(status: int, message: str, *, param: str | None = None,
                   code: str | None = None, kind: str = "invalid_request_error",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=message, type=kind, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


async def api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc.status, exc.message, param=exc.param, code=exc.code,
                          kind=exc.kind, headers=exc.headers)


async def validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
    param = _param(first.get("loc", ())) or None
    message = f"{param}: {first.get('msg', 'invalid')}" if param else first.get("msg", "invalid")
    return error_response(400, message, param=param, code="invalid_value")


def _param(loc: tuple[Any, ...]) -> str:
    """("body", "input", "list[constrained-str]", 3) → "input[3]": field names and indexes
    only, without the location and pydantic's union-member tags."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("body", "query", "path", "form", "header") and part.isidentifier():
            out += f".{part}" if out else part
    return out


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the error statuses a route can answer."""
    meaning = {400: "Invalid request", 401: "Missing, unknown or revoked API key",
               404: "No such object for this tenant", 413: "Request body too large",
               429: "Rate limit exceeded; see Retry-After", 503: "No worker answered in time"}
    return {s: {"model": ErrorResponse, "description": meaning[s]} for s in statuses}
