"""The batch job contract, shaped as the OpenAI Batch API so existing clients and habits carry over.

Input lines are OpenAI batch lines (`custom_id`, `method`, `url`, `body`); the job object mirrors
the OpenAI Batch object; output and error lines mirror OpenAI's batch output lines.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, with_config
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict  # pydantic takes typing's only from Python 3.12

from schemas.constants import ENDPOINT_EMBEDDINGS


class JobStatus(enum.StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {JobStatus.FAILED, JobStatus.COMPLETED, JobStatus.EXPIRED, JobStatus.CANCELLED}
)

# The timestamp column each status stamps when it is entered (OpenAI's `*_at` fields).
STATUS_TIMESTAMP = {
    JobStatus.IN_PROGRESS: "in_progress_at",
    JobStatus.FINALIZING: "finalizing_at",
    JobStatus.COMPLETED: "completed_at",
    JobStatus.FAILED: "failed_at",
    JobStatus.EXPIRED: "expired_at",
    JobStatus.CANCELLING: "cancelling_at",
    JobStatus.CANCELLED: "cancelled_at",
}


MAX_INPUT_TEXTS = 2048  # texts in one request's `input`, as OpenAI's embeddings API
INPUT_RULE = f"must be a non-empty text or a list of 1 to {MAX_INPUT_TEXTS:,} non-empty texts"


def check_input(value: Any) -> Any:
    """`input` of an embeddings request, checked before its type: a union's own errors name
    each member it failed ("Input should be a valid string" for an empty list), not the rule
    the value broke; this names the rule and what broke it."""
    if isinstance(value, str):
        if not value.strip():
            raise PydanticCustomError("invalid_input", f"{INPUT_RULE}; got an empty text")
        return value
    if not isinstance(value, list):
        raise PydanticCustomError("invalid_input",
                                  f"{INPUT_RULE}; got {type(value).__name__}")
    if not 1 <= len(value) <= MAX_INPUT_TEXTS:
        raise PydanticCustomError("invalid_input",
                                  f"{INPUT_RULE}; got a list of {len(value):,}")
    for i, text in enumerate(value):
        if not isinstance(text, str) or not text.strip():
            what = "an empty text" if isinstance(text, str) else type(text).__name__
            raise PydanticCustomError("invalid_input", f"{INPUT_RULE}; item {i} is {what}")
    return value


@with_config(ConfigDict(extra="allow"))
class EmbeddingBody(TypedDict):
    """`body` of an embeddings request line; `truncate` (default false) and `rank` are ours: cut
    over-long inputs instead of failing them; serve the adapter at a rank budget (each expert
    keeps its first `rank` components; at most the adapter's rank).

    Lines are validated into plain dicts (TypedDicts), not models: pydantic builds them about
    four times faster (50,000 lines: 0.10 s against 0.40 s as models), with the same errors."""

    model: Annotated[str, Field(min_length=1)]
    input: Annotated[str | list[str], BeforeValidator(check_input)]
    truncate: NotRequired[bool]
    rank: NotRequired[Annotated[int | None, Field(ge=1)]]
    encoding_format: NotRequired[Literal["float"]]


def body_texts(body: EmbeddingBody) -> list[str]:
    """A body's input as a list of texts."""
    value = body["input"]
    return [value] if isinstance(value, str) else list(value)


@with_config(ConfigDict(extra="forbid"))
class InputLine(TypedDict):
    custom_id: Annotated[str, Field(min_length=1, max_length=512)]
    method: Literal["POST"]
    url: Literal["/v1/embeddings"]
    body: EmbeddingBody


INPUT_LINE: TypeAdapter[InputLine] = TypeAdapter(InputLine)


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError] = Field(default_factory=list)


class BatchObject(BaseModel):
    """OpenAI's Batch object: what the HTTP gateway returns."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str = ENDPOINT_EMBEDDINGS
    errors: BatchErrors | None = None
    input_file_id: str | None = None
    completion_window: str = "24h"
    status: JobStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None
    model: str | None = None


class Job(BatchObject):
    """A batch job: the OpenAI Batch object plus what bemq keeps for itself.
    `output_expires_after`: seconds its output and error files live once written (None: kept
    until deleted)."""

    tenant: str = "default"
    output_expires_after: int | None = None
    priority: int = 0  # among its tenant's jobs (`job_priority`)
    micro_batches: int = 0
    dead_micro_batches: int = 0

    def public(self) -> BatchObject:
        return BatchObject.model_validate(self.model_dump(include=set(BatchObject.model_fields)))


PRIORITY_LIMIT = 100


def job_priority(metadata: dict[str, str] | None) -> int:
    """A job's priority among its tenant's own jobs (higher goes first; default 0), read from
    `metadata.priority` so that it travels through OpenAI's batch API unchanged. It never moves
    a job ahead of another tenant's work: shares between tenants come from their weights."""
    raw = (metadata or {}).get("priority")
    if raw is None:
        return 0
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or abs(value) > PRIORITY_LIMIT:
        raise ValueError(f"metadata.priority: expected an integer from -{PRIORITY_LIMIT} to "
                         f"{PRIORITY_LIMIT}, got {raw!r}")
    return value


class ResponseBody(BaseModel):
    status_code: int
    request_id: str
    body: dict[str, Any]


class LineError(BaseModel):
    code: str
    message: str


class OutputLine(BaseModel):
    """One line of the output or error file: exactly one of `response` and `error` is set,
    as in OpenAI batch output files."""

    id: str
    custom_id: str
    response: ResponseBody | None = None
    error: LineError | None = None


class ExpiresAfter(BaseModel):
    """OpenAI's `expires_after` (files) and `output_expires_after` (batches): an expiry
    `seconds` after the anchor, between one hour and 30 days as OpenAI allows."""

    model_config = ConfigDict(extra="forbid")
    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=2_592_000)


class OpenAIFile(BaseModel):
    """OpenAI's File object: what the HTTP gateway returns."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    expires_at: int | None = None


class FileObject(OpenAIFile):
    tenant: str = "default"

    def public(self) -> OpenAIFile:
        return OpenAIFile.model_validate(self.model_dump(include=set(OpenAIFile.model_fields)))
