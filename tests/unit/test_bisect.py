"""A model error inside a batch is isolated to the failing item by bisection."""

from __future__ import annotations

import torch

from schemas.microbatch import Item
from workers.runner import embed_items


def test_poison_item_alone_fails() -> None:
    """Only the item whose text makes the model raise is reported; the rest get vectors."""
    calls: list[int] = []

    def embed(rows: list[int], adapters: list[str | None], ranks: list[int | None]
              ) -> torch.Tensor:
        calls.append(len(rows))
        if 37 in rows:
            raise ValueError("cannot embed poison")
        return torch.ones(len(rows), 4)

    items = [Item(line=i, custom_id=f"c{i}", texts=["poison" if i == 37 else f"t{i}"],
                  lengths=[3], model="m") for i in range(100)]
    results = embed_items(embed, [(item, [i]) for i, item in enumerate(items)])
    failed = [(item.custom_id, value) for item, value in results if isinstance(value, str)]
    assert failed == [("c37", "ValueError: cannot embed poison")]
    assert [item.custom_id for item, _ in results] == [i.custom_id for i in items]
    assert len(calls) <= 2 * 7 + 1  # log2(100) levels, two calls each, plus the first
