"""The adapter registry: validate an adapter file against the served model, store it in the
blob store under an immutable version name, and record it in the store.

Names are versions (`support-v1`, `support-v2`): adding an existing name with different bytes is
refused, so a name always means the same weights on every worker.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from safetensors import safe_open

from ops.blobs import Blobs
from ops.models import ModelFiles
from ops.store import Store
from schemas.adapters import ADAPTER_FORMAT, NAME_PATTERN, AdapterMeta, AdapterRecord

SITE_TENSORS = {"A", "B", "router"}
OPTIONAL_TENSORS = {"film_gamma", "film_beta"}


class InvalidAdapter(ValueError):
    """The adapter file does not fit the served model, or the name is taken."""


PREFIX = "adapters/"


def blob_key(name: str) -> str:
    return f"{PREFIX}{name}.safetensors"


def validate_file(path: Path, model: ModelFiles, served: str) -> AdapterMeta:
    """Check the header only (metadata, names, shapes); weights are not read."""
    try:
        handle = safe_open(str(path), framework="numpy")
    except Exception as exc:
        raise InvalidAdapter(f"{path}: not a safetensors file ({exc})") from None
    with handle as f:
        raw = f.metadata() or {}
        if raw.get("format") != ADAPTER_FORMAT:
            raise InvalidAdapter(f"{path}: metadata format must be {ADAPTER_FORMAT!r}")
        try:
            meta = AdapterMeta.model_validate(raw)
        except ValueError as exc:
            raise InvalidAdapter(f"{path}: bad metadata: {exc}") from None
        shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    if meta.base_model != served:
        raise InvalidAdapter(f"{path}: made for {meta.base_model!r}, this deployment serves "
                             f"{served!r}")
    expected = (kronecker_tensors(meta, model, path) if meta.kind == "kronecker"
                else lowrank_tensors(meta, model, shapes))
    for name, shape in expected.items():
        if name not in shapes:
            raise InvalidAdapter(f"{path}: missing tensor {name}")
        if shapes[name] != shape:
            raise InvalidAdapter(f"{path}: tensor {name} has shape {shapes[name]}, "
                                 f"expected {shape}")
    extra = sorted(set(shapes) - set(expected))
    if extra:
        raise InvalidAdapter(f"{path}: unexpected tensors {extra[:5]}")
    return meta


def lowrank_tensors(meta: AdapterMeta, model: ModelFiles,
                    shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    R = meta.experts * meta.rank
    expected: dict[str, tuple[int, ...]] = {}
    for site, (d_in, d_out) in model.adapter_sites().items():
        expected |= {f"{site}.A": (R, d_in), f"{site}.B": (d_out, R),
                     f"{site}.router": (meta.experts, d_in)}
        for opt in OPTIONAL_TENSORS:
            if f"{site}.{opt}" in shapes:
                expected[f"{site}.{opt}"] = (d_out,)
    return expected


def kronecker_tensors(meta: AdapterMeta, model: ModelFiles,
                      path: Path) -> dict[str, tuple[int, ...]]:
    """K₁ (a, b) and K₂ (d_out/a, d_in/b), or its factors, at every site (`schemas.adapters`)."""
    assert meta.kron_shape is not None
    a, b = meta.kron_shape
    k = meta.kron_rank
    expected: dict[str, tuple[int, ...]] = {}
    for site, (d_in, d_out) in model.adapter_sites().items():
        if d_out % a or d_in % b:
            raise InvalidAdapter(f"{path}: kron_shape {a},{b} does not divide {site}'s "
                                 f"{d_out} × {d_in}")
        c, d = d_out // a, d_in // b
        expected[f"{site}.K1"] = (a, b)
        expected |= ({f"{site}.K2_B": (c, k), f"{site}.K2_A": (k, d)} if k
                     else {f"{site}.K2": (c, d)})
    return expected


def add(store: Store, blobs: Blobs, name: str, path: Path, model: ModelFiles,
        served: str) -> AdapterRecord:
    if not NAME_PATTERN.match(name):
        raise InvalidAdapter(f"adapter name {name!r}: use letters, digits, '.', '_' or '-' "
                             "(at most 64)")
    meta = validate_file(path, model, served)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    existing = store.get_adapter(name)
    if existing is not None:
        if existing.sha256 == digest:
            return existing
        raise InvalidAdapter(f"adapter {name!r} exists with other weights; "
                             "names are versions: add it under a new name")
    blobs.put(blob_key(name), data)
    record = AdapterRecord(name=name, model=served, blob_key=blob_key(name), sha256=digest,
                           bytes=len(data), experts=meta.experts, rank=meta.rank,
                           created_at=int(time.time()))
    store.add_adapter(record)
    return record
