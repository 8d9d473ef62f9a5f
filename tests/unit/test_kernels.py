"""The fused Triton kernel agrees with the torch reference (tolerance table by dtype) on odd
shapes, skewed segments, base-only rows and mixed adapters; the fp32 reference itself matches
a per-row loop written from the formula."""

from __future__ import annotations

import itertools

import pytest
import torch

from kernels import reference, triton_bem
from kernels.cases import Case, make_inputs
from kernels.tolerances import TOLERANCES

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def assert_matches(case: Case, dtype: torch.dtype, seed: int = 0) -> None:
    inputs = make_inputs(case, dtype, DEVICE, seed=seed)
    with torch.inference_mode():
        ref = reference.bem_linear(**inputs)
        fast = triton_bem.bem_linear(**inputs)
    tol = TOLERANCES[dtype]
    assert fast.dtype == ref.dtype == dtype and fast.shape == ref.shape
    assert tol.within(fast, ref), f"{case.label()} {dtype}: worst {tol.worst(fast, ref):.2f}"


GRID = list(itertools.product(DTYPES, (384, 1536), (1, 4, 8, 16), (1, 3, 7, 133)))


@pytest.mark.parametrize(("dtype", "d_in", "rank", "tokens"), GRID)
def test_matches_reference_on_odd_shapes(dtype: torch.dtype, d_in: int, rank: int,
                                         tokens: int) -> None:
    """Batch 1/3/7/133 × hidden 384/1536 × rank 1/4/8/16, E from 1 to 8, FiLM on half."""
    experts = {1: 8, 4: 3, 8: 2, 16: 1}[rank]
    case = Case(tokens, d_in, 384, experts, rank, adapters=3, film=(tokens + rank) % 2 == 1)
    assert_matches(case, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [
    Case(133, 384, 384, 4, 8, adapters=5, skew=True),  # one segment dominates
    Case(133, 384, 384, 4, 8, adapters=5, base_share=0.0),  # five adapters, no base rows
    Case(64, 384, 384, 2, 4, adapters=5, base_share=1.0),  # every row base-only
    Case(64, 384, 384, 2, 4, adapters=5, base_share=1.0, film=True),  # base-only + FiLM
    Case(37, 1536, 384, 8, 2, adapters=1, film=True),
], ids=lambda c: c.label())
def test_matches_reference_on_segment_layouts(dtype: torch.dtype, case: Case) -> None:
    """Skewed segments, a 5-adapter mix, all-base batches (with and without FiLM)."""
    assert_matches(case, dtype)


def test_zero_gate_rows_get_the_base_output() -> None:
    """Rows whose gates are all zero (padding tokens) get exactly the base output."""
    inputs = make_inputs(Case(16, 64, 64, 2, 4, adapters=2, base_share=0.0), torch.float32,
                         DEVICE)
    inputs["gates"] = torch.zeros_like(inputs["gates"])  # type: ignore[arg-type]
    base = torch.nn.functional.linear(inputs["x"], inputs["weight"], inputs["bias"])  # type: ignore[arg-type]
    assert torch.equal(triton_bem.bem_linear(**inputs), base)


def test_reference_is_the_formula_row_by_row() -> None:
    """y_t = x_t Wᵀ + b + s ((x_t A[a_t]ᵀ) ⊙ c_t) B[a_t]ᵀ, then γ[seq_t] y_t + β[seq_t]."""
    inputs = make_inputs(Case(9, 12, 10, 2, 3, adapters=3, film=True), torch.float64)
    x, W, b, A, B = (inputs[k] for k in ("x", "weight", "bias", "A", "B"))
    ids, c, s = inputs["adapter_ids"], inputs["gates"], inputs["scale"]
    gam, bet, seq = inputs["film_gamma"], inputs["film_beta"], inputs["seq_ids"]
    rows = []
    for t in range(x.shape[0]):  # type: ignore[union-attr]
        y = x[t] @ W.T + b  # type: ignore[index,union-attr]
        if ids[t] >= 0:  # type: ignore[index]
            a = ids[t]  # type: ignore[index]
            y = y + s * ((x[t] @ A[a].T) * c[t]) @ B[a].T  # type: ignore[index,operator]
        rows.append(gam[seq[t]] * y + bet[seq[t]])  # type: ignore[index]
    # The reference accumulates in fp32 by specification, hence fp32-level agreement.
    assert torch.allclose(reference.bem_linear(**inputs), torch.stack(rows), atol=1e-5)


def test_dispatch_mode_is_forced_by_the_setting() -> None:
    """`reference` never uses Triton, `triton` always does, `auto` follows the device."""
    from kernels import dispatch

    x = torch.zeros(1, 1)
    try:
        dispatch.set_mode("reference")
        assert dispatch.bem_linear_impl(x) is reference.bem_linear
        dispatch.set_mode("triton")
        assert dispatch.bem_linear_impl(x) is triton_bem.bem_linear
        dispatch.set_mode("auto")
        assert dispatch.uses_triton(x) is x.is_cuda
        with pytest.raises(ValueError, match="kernel mode"):
            dispatch.set_mode("cuda")
    finally:
        dispatch.set_mode("auto")
