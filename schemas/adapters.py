"""Adapter records and the adapter file contract.

An adapter is a safetensors file. Tensors, for every attach site "layers.{n}.{site}":
`{site}.A` (E·r, d_in), `{site}.B` (d_out, E·r), `{site}.router` (E, d_in), and optionally
`{site}.film_gamma`, `{site}.film_beta` (d_out,). Metadata (strings): `format`
("bemq-adapter/1"), `base_model`, `experts`, `rank`, `alpha`, and routing: `chunk`, `tau`,
`causal`, `top_k`.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

ADAPTER_FORMAT = "bemq-adapter/1"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class AdapterMeta(BaseModel):
    base_model: str
    experts: int = Field(ge=1, le=64)
    rank: int = Field(ge=1, le=256)
    alpha: float = Field(gt=0)
    chunk: int = Field(32, ge=1)
    tau: float = Field(0.0, ge=0)
    causal: bool = False
    top_k: int = Field(1, ge=1)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class AdapterRecord(BaseModel):
    name: str
    model: str
    blob_key: str
    sha256: str
    bytes: int
    experts: int
    rank: int
    created_at: int
