"""Adapter registration refuses files that do not fit the served model, with a clear reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load, save

from ops.adapters import InvalidAdapter, add, validate_file
from ops.blobs import open_blobs
from ops.models import model_files
from ops.store import open_store
from workers.adapters import make_adapter

MODEL = model_files("minilm")


def write(tmp_path: Path, data: bytes, name: str = "a.safetensors") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def edited(data: bytes, drop: str | None = None, reshape: str | None = None,
           meta: dict[str, str] | None = None) -> bytes:
    import json

    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    tensors = load(data)
    if drop:
        tensors.pop(drop)
    if reshape:
        tensors[reshape] = torch.zeros(3, 3)
    return save(tensors, metadata={**header, **(meta or {})})


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"drop": "layers.2.ffn_down.router"}, "missing tensor layers.2.ffn_down.router"),
        ({"reshape": "layers.0.attn_out.A"}, "layers.0.attn_out.A has shape (3, 3)"),
        ({"meta": {"base_model": "other"}}, "made for 'other'"),
        ({"meta": {"format": "lora"}}, "metadata format must be"),
        ({"meta": {"rank": "0"}}, "bad metadata"),
    ],
)
def test_bad_files_are_refused_with_the_reason(tmp_path: Path, change: dict,
                                               needle: str) -> None:
    """Missing tensors, wrong shapes, wrong base model or metadata each name the problem."""
    path = write(tmp_path, edited(make_adapter(MODEL, experts=2, rank=2), **change))
    with pytest.raises(InvalidAdapter, match=needle.replace("(", r"\(").replace(")", r"\)")):
        validate_file(path, MODEL, "minilm")


def test_names_are_immutable_versions(tmp_path: Path) -> None:
    """Re-adding the same bytes is a no-op; other bytes under a taken name are refused."""
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    store.migrate()
    blobs = open_blobs(f"file://{tmp_path}/blobs")
    first = write(tmp_path, make_adapter(MODEL, seed=1, experts=1, rank=2), "one.safetensors")
    other = write(tmp_path, make_adapter(MODEL, seed=2, experts=1, rank=2), "two.safetensors")
    record = add(store, blobs, "support-v1", first, MODEL, "minilm")
    assert add(store, blobs, "support-v1", first, MODEL, "minilm") == record
    with pytest.raises(InvalidAdapter, match="names are versions"):
        add(store, blobs, "support-v1", other, MODEL, "minilm")
    with pytest.raises(InvalidAdapter, match="adapter name"):
        add(store, blobs, "bad name!", first, MODEL, "minilm")
    with pytest.raises(InvalidAdapter, match="not a safetensors file"):
        add(store, blobs, "junk", write(tmp_path, b"junk", "junk.bin"), MODEL, "minilm")
    assert [a.name for a in store.list_adapters()] == ["support-v1"]
