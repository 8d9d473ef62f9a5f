"""Adapters in the worker: load a registered adapter from the blob store (checking its
sha256), keep loaded ones in an LRU cache bounded by bytes, and make adapter files (LoRA-style
initialisation, or deliberately broken ones for tests)."""

from __future__ import annotations

import collections
import hashlib

import torch
from safetensors.torch import load, save

from kernels.kron import kron_shapes
from kernels.layer import Routing, SiteAdapter
from ops.blobs import Blobs
from ops.models import ModelFiles
from ops.store import Store
from schemas.adapters import ADAPTER_FORMAT, AdapterMeta

Sites = dict[str, SiteAdapter]


class AdapterUnavailable(LookupError):
    """An item names an adapter that is not registered, or whose bytes fail their checksum."""


def parse(data: bytes, device: torch.device, dtype: torch.dtype) -> tuple[Sites, int]:
    """Adapter bytes → per-site weights on `device`, and their size in bytes there."""
    meta = AdapterMeta.model_validate(_metadata(data))
    tensors = load(data)
    routing = Routing(chunk=meta.chunk, tau=meta.tau, causal=meta.causal, top_k=meta.top_k)
    sites: Sites = {}
    size = 0
    for key in sorted({k.rsplit(".", 1)[0] for k in tensors}):
        parts = {k: tensors[f"{key}.{k}"].to(device=device, dtype=dtype)
                 for k in ("A", "B", "router", "film_gamma", "film_beta", "K1", "K2", "K2_B",
                           "K2_A")
                 if f"{key}.{k}" in tensors}
        size += sum(t.numel() * t.element_size() for t in parts.values())
        if meta.kind == "kronecker":
            factors = ((parts["K1"], parts["K2"]) if "K2" in parts
                       else (parts["K1"], parts["K2_B"], parts["K2_A"]))
            d_out, d_in = kron_shapes(factors)
            sites[key] = SiteAdapter(
                A=parts["K1"].new_zeros((0, d_in)), B=parts["K1"].new_zeros((d_out, 0)),
                router=None, experts=1, rank=0, scale=meta.scale, kron=factors)
            continue
        if meta.ranks is not None:  # dynamic rank: drop each expert's components past its rank
            dropped = ~rank_keep(meta.experts, meta.rank, meta.ranks).to(device)
            parts["A"][dropped] = 0
            parts["B"][:, dropped] = 0
        sites[key] = SiteAdapter(
            A=parts["A"], B=parts["B"], router=parts["router"], experts=meta.experts,
            rank=meta.rank, scale=meta.scale, routing=routing,
            film_gamma=parts.get("film_gamma"), film_beta=parts.get("film_beta"),
        )
    return sites, size


def rank_keep(experts: int, rank: int, ranks: list[int]) -> torch.Tensor:
    """(E·r,) bool: the components expert e keeps at rank ranks[e] (its first ranks[e])."""
    return (torch.arange(rank)[None, :] < torch.tensor(ranks)[:, None]).reshape(experts * rank)


def _metadata(data: bytes) -> dict[str, str]:
    import json

    header_len = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + header_len]).get("__metadata__", {})


class AdapterCache:
    """Loaded adapters by name, least recently used evicted past `capacity_bytes`."""

    def __init__(self, store: Store, blobs: Blobs, device: torch.device, dtype: torch.dtype,
                 capacity_bytes: int) -> None:
        self.store, self.blobs = store, blobs
        self.device, self.dtype = device, dtype
        self.capacity = capacity_bytes
        self._cache: collections.OrderedDict[str, tuple[Sites, int]] = collections.OrderedDict()

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self._cache.values())

    def get(self, name: str) -> Sites:
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name][0]
        record = self.store.get_adapter(name)
        if record is None:
            raise AdapterUnavailable(f"adapter {name!r} is not registered")
        data = self.blobs.get(record.blob_key)
        if hashlib.sha256(data).hexdigest() != record.sha256:
            raise AdapterUnavailable(f"adapter {name!r}: blob does not match its sha256")
        sites, size = parse(data, self.device, self.dtype)
        self._cache[name] = (sites, size)
        while len(self._cache) > 1 and self.bytes > self.capacity:
            self._cache.popitem(last=False)
        return sites


def make_adapter(model: ModelFiles, *, experts: int = 4, rank: int = 8, alpha: float = 16.0,
                 seed: int = 0, b_std: float = 0.02, film: bool = False,
                 routing: Routing | None = None, fill: float | None = None,
                 ranks: list[int] | None = None,
                 kron_shape: tuple[int, int] | None = None, kron_rank: int = 0) -> bytes:
    """A random adapter for `model`: A ~ N(0, 1/d_in), B ~ N(0, b_std²) (b_std=0 gives the
    LoRA initialisation, an exact no-op), routers ~ N(0, 1/d_in). `fill` sets every B entry
    to one value instead (e.g. nan, or a huge number, for failure tests). `ranks`: each
    expert's served rank (dynamic rank), stored in the metadata. `kron_shape` (a, b) makes a
    Kronecker-factored adapter instead (K₁ (a, b) ~ N(0, 1/b), K₂ ~ N(0, b_std²) or, with
    `kron_rank` k, its factors K₂ᴮ ~ N(0, b_std²) and K₂ᴬ ~ N(0, 1/d); `schemas.adapters`)."""
    if kron_shape is not None:
        return _make_kronecker(model, kron_shape, kron_rank, alpha, seed, b_std)
    routing = routing or Routing()
    g = torch.Generator().manual_seed(seed)
    R = experts * rank
    tensors: dict[str, torch.Tensor] = {}
    for site, (d_in, d_out) in model.adapter_sites().items():
        tensors[f"{site}.A"] = torch.randn(R, d_in, generator=g) / d_in**0.5
        tensors[f"{site}.B"] = torch.randn(d_out, R, generator=g) * b_std
        if fill is not None:
            tensors[f"{site}.B"] = torch.full((d_out, R), fill)
        tensors[f"{site}.router"] = torch.randn(experts, d_in, generator=g) / d_in**0.5
        if film:
            tensors[f"{site}.film_gamma"] = 1 + 0.05 * torch.randn(d_out, generator=g)
            tensors[f"{site}.film_beta"] = 0.05 * torch.randn(d_out, generator=g)
    meta = {"format": ADAPTER_FORMAT, "base_model": model.name, "experts": str(experts),
            "rank": str(rank), "alpha": str(alpha), "chunk": str(routing.chunk),
            "tau": str(routing.tau), "causal": str(routing.causal).lower(),
            "top_k": str(routing.top_k)}
    if ranks is not None:
        meta["ranks"] = ",".join(str(r) for r in ranks)
    return save(tensors, metadata=meta)


def _make_kronecker(model: ModelFiles, shape: tuple[int, int], rank: int, alpha: float,
                    seed: int, b_std: float) -> bytes:
    g = torch.Generator().manual_seed(seed)
    a, b = shape
    tensors: dict[str, torch.Tensor] = {}
    for site, (d_in, d_out) in model.adapter_sites().items():
        c, d = d_out // a, d_in // b
        tensors[f"{site}.K1"] = torch.randn(a, b, generator=g) / b**0.5
        if rank:
            tensors[f"{site}.K2_B"] = torch.randn(c, rank, generator=g) * b_std
            tensors[f"{site}.K2_A"] = torch.randn(rank, d, generator=g) / d**0.5
        else:
            tensors[f"{site}.K2"] = torch.randn(c, d, generator=g) * b_std
    meta = {"format": ADAPTER_FORMAT, "base_model": model.name, "kind": "kronecker",
            "experts": "1", "rank": "0", "alpha": str(alpha), "kron_shape": f"{a},{b}",
            "kron_rank": str(rank)}
    return save(tensors, metadata=meta)
