"""A model plugged in by import path (BEMQ_MODEL_CLASS) that raises on one word, so tests can
put a poison item inside a real batch on a real worker."""

from __future__ import annotations

import os

import torch

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
                adapter_slots: torch.Tensor | None = None, **kw: object) -> torch.Tensor:
        if (input_ids == self.poison_id).any():
            raise RuntimeError("model cannot embed the poison word")
        return super().forward(input_ids, attention_mask, adapter_slots, **kw)  # type: ignore[arg-type]


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
                adapter_slots: torch.Tensor | None = None, **kw: object) -> torch.Tensor:
        if (input_ids == self.crash_id).any():
            os._exit(70)
        return super().forward(input_ids, attention_mask, adapter_slots, **kw)  # type: ignore[arg-type]
