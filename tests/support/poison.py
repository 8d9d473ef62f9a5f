"""Models plugged in by import path (BEMQ_MODEL_CLASS) that misbehave on purpose inside a real
worker: one raises on a word, one kills its process on a word, one is slow."""

from __future__ import annotations

import os
import time

import torch

from kernels.layer import BEMContext
from workers.encoder import BertEncoder

POISON_WORD = "poison"


class PoisonEncoder(BertEncoder):
    poison_id: int = -1

    @classmethod
    def from_pretrained(cls, root):  # type: ignore[no-untyped-def,override]
        model = super().from_pretrained(root)
        vocab = (root / "vocab.txt").read_text(encoding="utf-8").split("\n")
        model.poison_id = vocab.index(POISON_WORD)
        return model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                bem: BEMContext | None = None, **kw: object) -> torch.Tensor:
        if (input_ids == self.poison_id).any():
            raise RuntimeError("model cannot embed the poison word")
        return super().forward(input_ids, attention_mask, bem, **kw)  # type: ignore[arg-type]


class CrashEncoder(BertEncoder):
    """Kills its own process (as a segfaulting kernel would) on the word "crash": the worker
    dies mid-batch on every delivery of that micro-batch."""

    crash_id: int = -1

    @classmethod
    def from_pretrained(cls, root):  # type: ignore[no-untyped-def,override]
        model = super().from_pretrained(root)
        model.crash_id = (root / "vocab.txt").read_text(encoding="utf-8").split("\n").index("crash")
        return model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                bem: BEMContext | None = None, **kw: object) -> torch.Tensor:
        if (input_ids == self.crash_id).any():
            os._exit(70)
        return super().forward(input_ids, attention_mask, bem, **kw)  # type: ignore[arg-type]


class SlowEncoder(BertEncoder):
    """Takes `SECONDS` per forward, as a long micro-batch on a busy GPU would: longer than
    three heartbeats in the recovery tests, while the process itself stays alive."""

    SECONDS = 3.0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                bem: BEMContext | None = None, **kw: object) -> torch.Tensor:
        time.sleep(self.SECONDS)
        return super().forward(input_ids, attention_mask, bem, **kw)  # type: ignore[arg-type]
