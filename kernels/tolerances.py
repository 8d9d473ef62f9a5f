"""How far a fast kernel may stray from the fp32 reference, by dtype: |fast - ref| ≤ atol +
rtol · |ref|. fp16 and bf16 outputs are rounded twice (base GEMM, then the update), so their
bounds follow their unit roundoff (2⁻¹¹ and 2⁻⁸) with headroom."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float

    def within(self, fast: torch.Tensor, ref: torch.Tensor) -> bool:
        return bool(torch.allclose(fast.float(), ref.float(), atol=self.atol, rtol=self.rtol))

    def worst(self, fast: torch.Tensor, ref: torch.Tensor) -> float:
        """Largest |fast - ref| / (atol + rtol · |ref|): ≤ 1 means within tolerance."""
        bound = self.atol + self.rtol * ref.float().abs()
        return float(((fast.float() - ref.float()).abs() / bound).max()) if ref.numel() else 0.0


TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float32: Tolerance(atol=1e-4, rtol=1e-4),
    torch.float16: Tolerance(atol=5e-3, rtol=5e-3),
    torch.bfloat16: Tolerance(atol=3e-2, rtol=3e-2),
}
