"""Adapter records and the adapter file contract.

An adapter is a safetensors file. Tensors, for every attach site "layers.{n}.{site}":
`{site}.A` (E·r, d_in), `{site}.B` (d_out, E·r), `{site}.router` (E, d_in), and optionally
`{site}.film_gamma`, `{site}.film_beta` (d_out,). Metadata (strings): `format`
("bemq-adapter/1"), `base_model`, `experts`, `rank`, `alpha`, and routing: `chunk`, `tau`,
`causal`, `top_k`; optionally `ranks` ("8,4,4,2"): each expert's served rank, at most `rank`
(dynamic rank: an expert serves its first `ranks[e]` components, the rest are dropped).

`kind="kronecker"` (the LoKr form, `kernels.kron`): ΔW = s · (K₁ ⊗ K₂) at every site, with
tensors `{site}.K1` (a, b) and either `{site}.K2` (d_out/a, d_in/b) or its low-rank factors
`{site}.K2_B` (d_out/a, k) and `{site}.K2_A` (k, d_in/b); metadata `kron_shape` ("a,b"),
`kron_rank` (k, 0 for a full K₂), `alpha` (s = α / k, or α when K₂ is full); `experts` 1 and
`rank` 0 (no routed low-rank experts), no FiLM.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from kernels.limits import MAX_RANK_TOTAL

ADAPTER_FORMAT = "bemq-adapter/1"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class AdapterMeta(BaseModel):
    base_model: str
    kind: Literal["lowrank", "kronecker"] = "lowrank"
    experts: int = Field(ge=1, le=64)
    rank: int = Field(ge=0, le=256)
    alpha: float = Field(gt=0)
    chunk: int = Field(32, ge=1)
    tau: float = Field(0.0, ge=0)
    causal: bool = False
    top_k: int = Field(1, ge=1)
    ranks: list[int] | None = None
    kron_shape: tuple[int, int] | None = None
    kron_rank: int = Field(0, ge=0)

    @field_validator("ranks", "kron_shape", mode="before")
    @classmethod
    def _ints_from_text(cls, value: object) -> object:
        if isinstance(value, str):  # safetensors metadata holds strings: "8,4,4,2"
            try:
                return [int(part) for part in value.split(",")]
            except ValueError:
                raise ValueError(f"must be comma-separated integers, got {value!r}") from None
        return value

    @model_validator(mode="after")
    def _fits_the_kernel(self) -> AdapterMeta:
        if self.kind == "kronecker":
            if self.experts != 1 or self.rank != 0 or self.ranks is not None:
                raise ValueError("a Kronecker adapter has experts 1 and rank 0 (its low-rank "
                                 "factor's rank is kron_rank), and no ranks")
            if self.kron_shape is None or min(self.kron_shape) < 1:
                raise ValueError("a Kronecker adapter needs kron_shape 'a,b' (K1's shape)")
            return self
        if self.rank < 1:
            raise ValueError("rank must be at least 1")
        if self.experts * self.rank > MAX_RANK_TOTAL:
            raise ValueError(f"experts × rank = {self.experts} × {self.rank} = "
                             f"{self.experts * self.rank} is above the kernel's limit of "
                             f"{MAX_RANK_TOTAL}")
        if self.ranks is not None and (len(self.ranks) != self.experts
                                       or not all(1 <= r <= self.rank for r in self.ranks)):
            raise ValueError(f"ranks {self.ranks} must give each of the {self.experts} experts "
                             f"a rank from 1 to {self.rank}")
        return self

    @property
    def scale(self) -> float:
        if self.kind == "kronecker":
            return self.alpha / max(self.kron_rank, 1)
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
