"""Kronecker-factored adapters (the LoKr form): ΔW = s · (K₁ ⊗ K₂), K₂ optionally low-rank
(K₂ = K₂ᴮ K₂ᴬ). The batched path never forms ΔW (d_out × d_in): with x's row viewed as a
b × d matrix X, (K₁ ⊗ K₂) vec(X) = vec(K₁ X K₂ᵀ), two small matmuls per row batched over rows.
At a 1536 → 384 site with K₁ 16 × 32 that is 2·(16·32·48 + 16·48·24) ≈ 86 kFLOP a row against
1.18 MFLOP of the base GEMM, and the factors are a few kB instead of ΔW's 1.2 MB.

Plain torch (batched matmuls on the GPU's tensor cores): at these sizes the update is a small
fraction of the site's work, so a fused kernel would not pay for itself.
"""

from __future__ import annotations

import torch

Factors = tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def kron_shapes(factors: Factors) -> tuple[int, int]:
    """(d_out, d_in) of ΔW for (K₁, K₂) or (K₁, K₂ᴮ, K₂ᴬ)."""
    (a, b), (c, d) = factors[0].shape, _k2_shape(factors)
    return a * c, b * d


def _k2_shape(factors: Factors) -> tuple[int, int]:
    if len(factors) == 2:
        return tuple(factors[1].shape)  # type: ignore[return-value]
    return factors[1].shape[0], factors[2].shape[1]


def kron_apply(x: torch.Tensor, factors: Factors, scale: float) -> torch.Tensor:
    """s · x (K₁ ⊗ K₂)ᵀ for rows x (n, d_in) → (n, d_out), without ΔW. Multiplies in fp32
    (as the low-rank path does: the intermediates are small), returns x's dtype."""
    f = [t.float() for t in factors]
    (a, b), (c, d) = f[0].shape, _k2_shape(factors)
    X = x.float().reshape(-1, b, d)
    # (n, b, c); a factored K₂ goes through its rank-k factor first: (n, b, k), then (n, b, c).
    T = X @ f[1].T if len(f) == 2 else (X @ f[2].T) @ f[1].T
    return ((f[0] @ T).reshape(-1, a * c) * scale).to(x.dtype)
