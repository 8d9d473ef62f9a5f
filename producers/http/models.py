"""Request and response bodies of the gateway, as OpenAI's."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.batch import MAX_INPUT_TEXTS, BatchObject, ExpiresAfter, OpenAIFile, check_input


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=128)
    endpoint: Literal["/v1/embeddings"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = Field(None, max_length=16)
    output_expires_after: ExpiresAfter | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIFile]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


# A text with something besides whitespace (JSON Schema patterns are unanchored searches).
Text = Annotated[str, Field(pattern=r"\S")]


class EmbeddingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUT_TEXTS)] = Field(
        description="a text or up to 2048 texts, each within the model's max_seq_length")
    model: str = Field(min_length=1, max_length=200)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=256)
    rank: int | None = Field(
        None, ge=1, description="bemq: serve the adapter at this rank budget (each expert keeps "
        "its first `rank` components); at most the adapter's rank; adapters only")

    _input_rule = field_validator("input", mode="before")(check_input)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    checks: dict[str, str]
