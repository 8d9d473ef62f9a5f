"""Kronecker-factored adapters: the batched path equals the reference that forms ΔW = K₁ ⊗ K₂
(full or low-rank K₂), never builds a tensor of ΔW's size, and mixes with low-rank adapters and
base rows in one forward; the registry checks the factors' shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from kernels import reference
from kernels.kron import kron_apply
from kernels.tolerances import TOLERANCES
from ops.adapters import InvalidAdapter, validate_file
from ops.settings import Settings
from tests.support.adapters import install
from workers.adapters import make_adapter
from workers.runtime import Runtime

TEXTS = ["a short one", "a somewhat longer sentence about adapters and routing",
         "third text here", "the last row, a little longer than the third"]


def factors(a: int, b: int, c: int, d: int, k: int, dtype: torch.dtype,
            seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    K1 = torch.randn(a, b, generator=g) / b**0.5
    if k:
        out = (K1, torch.randn(c, k, generator=g) / k**0.5,
               torch.randn(k, d, generator=g) / d**0.5)
    else:
        out = (K1, torch.randn(c, d, generator=g) / d**0.5)
    return tuple(t.to(dtype) for t in out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("a", "b", "k"), [(16, 32, 0), (16, 32, 4), (1, 1, 0), (384, 1536, 0),
                                           (2, 3, 2)])
def test_the_batched_path_matches_the_reference(dtype: torch.dtype, a: int, b: int,
                                                 k: int) -> None:
    d_out, d_in = 384, 1536
    f = factors(a, b, d_out // a, d_in // b, k, dtype)
    x = torch.randn(7, d_in, generator=torch.Generator().manual_seed(1)).to(dtype)
    fast, ref = kron_apply(x, f, 0.5), reference.kron_delta(x, f, 0.5)
    assert fast.shape == ref.shape == (7, d_out) and fast.dtype == dtype
    assert TOLERANCES[dtype].within(fast, ref), TOLERANCES[dtype].worst(fast, ref)


class LargestResult(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.largest = max(self.largest, out.numel())
        return out


def test_delta_w_is_never_formed() -> None:
    """At 4096 × 4096 no intermediate comes near ΔW's 16.7 M entries (4 rows: 16 k each;
    the factors' fp32 copies are at most 64 × 64)."""
    f = factors(64, 64, 64, 64, 8, torch.float32)
    x = torch.randn(4, 4096)
    with LargestResult() as spy:
        kron_apply(x, f, 1.0)
    assert spy.largest <= 4 * 4096
    with LargestResult() as spy:
        reference.kron_delta(x, f, 1.0)
    assert spy.largest == 4096 * 4096  # the check can fail: the reference does form it


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    return Runtime(Settings(home=tmp_path_factory.mktemp("var"), device="cpu"))


def test_kronecker_and_low_rank_adapters_mix_in_one_forward(rt: Runtime) -> None:
    install(rt, low=make_adapter(rt.files, seed=1, b_std=0.05),
            kron=make_adapter(rt.files, seed=2, b_std=0.05, kron_shape=(16, 32)),
            lokr=make_adapter(rt.files, seed=3, b_std=0.05, kron_shape=(8, 16), kron_rank=4))
    names: list[str | None] = ["kron", "low", None, "lokr"]
    mixed = rt.embed(TEXTS, names)
    for row, (text, name) in enumerate(zip(TEXTS, names, strict=True)):
        assert torch.allclose(mixed[row], rt.embed([text], [name])[0], atol=2e-5), name
    base = rt.embed(TEXTS)
    for row in (0, 3):
        assert (mixed[row] - base[row]).abs().max() > 1e-3  # the Kronecker update counts


def test_the_registry_checks_kronecker_files(rt: Runtime, tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    good.write_bytes(make_adapter(rt.files, kron_shape=(16, 32), kron_rank=4))
    meta = validate_file(good, rt.files, "minilm")
    assert (meta.kind, meta.kron_shape, meta.kron_rank, meta.scale) == \
        ("kronecker", (16, 32), 4, 16.0 / 4)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(make_adapter(rt.files, kron_shape=(5, 32)))
    with pytest.raises(InvalidAdapter, match="kron_shape 5,32 does not divide"):
        validate_file(bad, rt.files, "minilm")
