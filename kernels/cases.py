"""Random operator inputs for the numerics check, tests and benchmark, from a fixed seed."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class Case:
    tokens: int
    d_in: int
    d_out: int
    experts: int
    rank: int
    adapters: int
    film: bool = False
    base_share: float = 0.2  # fraction of rows with id -1
    skew: bool = False  # one adapter takes most rows

    def label(self) -> str:
        return (f"T={self.tokens} {self.d_in}->{self.d_out} E={self.experts} r={self.rank} "
                f"n={self.adapters}{' film' if self.film else ''}{' skew' if self.skew else ''}")


def make_inputs(case: Case, dtype: torch.dtype, device: str = "cpu",
                seed: int = 0) -> dict[str, object]:
    """Keyword arguments for `bem_linear`, scaled so outputs stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    R = case.experts * case.rank

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(dtype=dtype, device=device)

    if case.skew:
        probs = torch.tensor([0.85] + [0.15 / max(1, case.adapters - 1)] * (case.adapters - 1))
        ids = torch.multinomial(probs, case.tokens, replacement=True, generator=g)
    else:
        ids = torch.randint(0, case.adapters, (case.tokens,), generator=g)
    ids[torch.rand(case.tokens, generator=g) < case.base_share] = -1
    expert = torch.randint(0, case.experts, (case.tokens,), generator=g)
    gates = torch.nn.functional.one_hot(expert, case.experts).float()
    gates = gates.repeat_interleave(case.rank, dim=-1).to(dtype=dtype, device=device)
    out: dict[str, object] = {
        "x": rnd(case.tokens, case.d_in),
        "weight": rnd(case.d_out, case.d_in, scale=case.d_in ** -0.5),
        "bias": rnd(case.d_out, scale=0.1),
        "A": rnd(case.adapters, R, case.d_in, scale=case.d_in ** -0.5),
        "B": rnd(case.adapters, case.d_out, R, scale=R ** -0.5),
        "adapter_ids": ids.to(device),
        "gates": gates,
        "scale": 2.0 / case.rank,
    }
    if case.film:
        sequences = max(1, case.tokens // 5)
        out["film_gamma"] = (1 + rnd(sequences, case.d_out, scale=0.1))
        out["film_beta"] = rnd(sequences, case.d_out, scale=0.1)
        out["seq_ids"] = torch.randint(0, sequences, (case.tokens,), generator=g).to(device)
    return out
