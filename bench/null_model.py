"""A zero-cost stand-in for the encoder, loaded with `BEMQ_MODEL_CLASS=bench.null_model:NullModel`.

It answers every forward with random unit vectors of the real model's width at no cost, so a
benchmark run with it measures everything *around* the model: claiming, decoding, writing
shards, completing, serving HTTP. It takes the encoder's interface as it is (the adapter
context) so every path of the worker runs unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kernels.layer import BEMContext

POOL_ROWS = 4099  # prime: consecutive forwards rarely repeat a row pattern


class NullModel(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        # One parameter so that callers reading the model's dtype and device find one.
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)
        # Random unit vectors drawn once: a forward hands out the next rows of this pool, since
        # drawing fresh ones (a normal sample per float) would cost more than the path around
        # the model that the stand-in is there to expose.
        self.pool = F.normalize(torch.randn(POOL_ROWS, hidden), p=2, dim=1)
        self.next_row = 0

    @property
    def dim(self) -> int:
        return self.hidden

    @classmethod
    def from_pretrained(cls, root: Path) -> NullModel:
        return cls(int(json.loads((Path(root) / "config.json").read_text())["hidden_size"]))

    def set_adapters(self, adapters: list[dict]) -> None:
        """Adapters change nothing here; the worker still installs them as for the encoder."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                bem: BEMContext | None = None, *, normalize: bool = True) -> torch.Tensor:
        n = input_ids.shape[0]
        rows = (self.next_row + torch.arange(n)) % POOL_ROWS
        self.next_row = (self.next_row + n) % POOL_ROWS
        return self.pool[rows].to(device=input_ids.device, dtype=self.anchor.dtype)
