"""Length-bucketed packing: sort items by length, then fill each micro-batch up to a padded-token
budget (rows × longest row, as TEI/TGI's `max_batch_tokens`) and a row cap.

Items are sorted by length, so each micro-batch holds a contiguous length range. A bucket edge
falls where the next item would push the batch's own padding efficiency (real ÷ padded tokens)
below `min_efficiency`: dense length regions fill whole batches, the sparse long tail gets
narrower ones. FIFO order (`pack_fifo`) is kept only as the baseline the benchmark compares
against.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.microbatch import Item

MIN_EFFICIENCY = 0.92


def pack(items: Sequence[Item], max_batch_tokens: int, max_batch_size: int,
         min_efficiency: float = MIN_EFFICIENCY) -> list[list[Item]]:
    ordered = sorted(items, key=lambda it: (it.max_length, it.line))
    return _fill(ordered, max_batch_tokens, max_batch_size, min_efficiency)


def pack_fifo(items: Sequence[Item], batch_size: int) -> list[list[Item]]:
    """Arrival-order batches of a fixed row count: the baseline without bucketing."""
    batches: list[list[Item]] = []
    for item in items:
        if not batches or sum(len(i.texts) for i in batches[-1]) + len(item.texts) > batch_size:
            batches.append([])
        batches[-1].append(item)
    return batches


def _fill(ordered: Sequence[Item], max_batch_tokens: int, max_batch_size: int,
          min_efficiency: float) -> list[list[Item]]:
    batches: list[list[Item]] = []
    current: list[Item] = []
    rows = real = longest = 0
    for item in ordered:
        new_rows = rows + len(item.texts)
        new_real = real + sum(item.lengths)
        new_longest = max(longest, item.max_length)
        padded = new_rows * new_longest
        if current and (padded > max_batch_tokens or new_rows > max_batch_size
                        or new_real < min_efficiency * padded):
            batches.append(current)
            current = []
            new_rows, new_real, new_longest = len(item.texts), sum(item.lengths), item.max_length
        current.append(item)
        rows, real, longest = new_rows, new_real, new_longest
    if current:
        batches.append(current)
    return batches


def padding_efficiency(batches: Sequence[Sequence[Item]]) -> float:
    """Real tokens ÷ padded tokens over all batches (1.0 = no padding)."""
    real = sum(sum(i.lengths) for b in batches for i in b)
    padded = sum(sum(len(i.texts) for i in b) * max(i.max_length for i in b) for b in batches)
    return real / padded if padded else 1.0
