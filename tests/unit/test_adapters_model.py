"""Adapters in the encoder: a zero-B adapter changes nothing; a mixed batch equals each row run
with its own adapter; FiLM and routing settings travel with the file; the LRU cache is bounded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kernels.layer import Routing
from ops.blobs import open_blobs
from ops.settings import Settings
from ops.store import open_store
from tests.support.adapters import install
from workers.adapters import AdapterCache, make_adapter, parse
from workers.runtime import Runtime

TEXTS = ["a short one", "a somewhat longer sentence about adapters and routing",
         "third text here", "x " * 70, "the last row"]


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    return Runtime(Settings(home=tmp_path_factory.mktemp("var"), device="cpu"))


def test_zero_b_adapter_leaves_the_encoder_unchanged(rt: Runtime) -> None:
    """B = 0 (the LoRA initialisation) gives exactly the base model's embeddings."""
    install(rt, zero=make_adapter(rt.files, b_std=0.0))
    base = rt.embed(TEXTS)
    assert torch.equal(rt.embed(TEXTS, ["zero"] * len(TEXTS)), base)


def test_mixed_batch_equals_each_row_alone(rt: Runtime) -> None:
    """One forward over rows of two adapters and the base equals running each row by itself."""
    install(rt, a=make_adapter(rt.files, seed=1, b_std=0.05),
            b=make_adapter(rt.files, seed=2, experts=2, rank=4, b_std=0.05, film=True,
                           routing=Routing(chunk=8, tau=0.1)))
    names: list[str | None] = ["a", None, "b", "a", "b"]
    mixed = rt.embed(TEXTS, names)
    for row, (text, name) in enumerate(zip(TEXTS, names, strict=True)):
        alone = rt.embed([text], [name])
        assert torch.allclose(mixed[row], alone[0], atol=2e-5), (row, name)
    base = rt.embed(TEXTS)
    assert torch.allclose(mixed[1], base[1], atol=2e-5)
    assert (mixed[0] - base[0]).abs().max() > 1e-3  # the adapter does change its rows


def test_expert_usage_counts_every_real_token_at_every_site(rt: Runtime) -> None:
    """Drift's expert counts: per adapter, a row per sequence it served with one top-1 expert
    per real token and site; base rows and padding are not counted."""
    install(rt, a=make_adapter(rt.files, seed=1, experts=4, b_std=0.05),
            b=make_adapter(rt.files, seed=2, experts=2, rank=4, b_std=0.05))
    names: list[str | None] = ["a", None, "b", "a", "b"]
    usage: dict[str, list[torch.Tensor]] = {}
    rt.embed(TEXTS, names, usage=usage)
    sites = len(rt.files.adapter_sites())
    tokens = [len(e.ids) for e in rt.tokenizer.encode_batch(TEXTS)]
    assert set(usage) == {"a", "b"}
    per_sequence = {name: torch.cat(usage[name]) for name in usage}
    assert per_sequence["a"].shape == (2, 4) and per_sequence["b"].shape == (2, 2)
    for name in ("a", "b"):
        real = sorted(n * sites for n, row in zip(tokens, names, strict=True) if row == name)
        assert sorted(per_sequence[name].sum(1).tolist()) == real, name
    assert (per_sequence["a"].sum(0) > 0).sum() >= 2  # the router spreads tokens over experts


def test_adapter_cache_is_bounded_by_bytes(tmp_path: Path) -> None:
    """Past the byte capacity the least recently used adapter is evicted."""
    from ops.adapters import add
    from ops.models import model_files

    model = model_files("minilm")
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    store.migrate()
    blobs = open_blobs(f"file://{tmp_path}/blobs")
    for n in range(3):
        path = tmp_path / f"a{n}.safetensors"
        path.write_bytes(make_adapter(model, seed=n, experts=1, rank=2))
        add(store, blobs, f"a{n}", path, model, "minilm")
    one = parse(make_adapter(model, experts=1, rank=2), torch.device("cpu"), torch.float32)[1]
    cache = AdapterCache(store, blobs, torch.device("cpu"), torch.float32, int(one * 2.5))
    for name in ("a0", "a1", "a0", "a2"):
        cache.get(name)
    assert list(cache._cache) == ["a0", "a2"]
    assert cache.bytes <= int(one * 2.5)
