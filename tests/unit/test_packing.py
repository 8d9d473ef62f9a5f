"""Packing: every item once, budgets respected, and padding kept small on skewed lengths."""

from __future__ import annotations

import pytest

from ops.models import model_files
from producers.corpus import sentences, to_jsonl
from producers.packing import pack, pack_fifo, padding_efficiency
from producers.validate import validate_jsonl
from schemas.microbatch import Item


def items_of(lengths: list[list[int]]) -> list[Item]:
    return [Item(line=i + 1, custom_id=f"c{i}", texts=["x"] * len(ls), lengths=ls, model="m")
            for i, ls in enumerate(lengths)]


@pytest.fixture(scope="module")
def corpus_items() -> list[Item]:
    model = model_files("minilm")
    data = to_jsonl(sentences(model, 4000, seed=3), "minilm")
    result = validate_jsonl(data, model=model, served="minilm", max_lines=10_000, max_bytes=10**8)
    assert result.errors == []
    return result.items


@pytest.mark.parametrize(("budget", "cap"), [(512, 8), (8192, 256), (2048, 1000)])
def test_budgets_hold_and_every_item_is_packed_once(corpus_items: list[Item], budget: int,
                                                    cap: int) -> None:
    """No batch exceeds the padded-token budget (unless one item alone does) or the row cap."""
    batches = pack(corpus_items, budget, cap)
    assert sorted(i.custom_id for b in batches for i in b) == sorted(
        i.custom_id for i in corpus_items)
    for batch in batches:
        rows = sum(len(i.texts) for i in batch)
        assert rows <= cap
        assert rows * max(i.max_length for i in batch) <= budget or len(batch) == 1


def test_bucketed_padding_beats_fifo(corpus_items: list[Item]) -> None:
    """On log-normal lengths, bucketing reaches ≥ 0.90 efficiency where FIFO stays far below."""
    bucketed = padding_efficiency(pack(corpus_items, 8192, 256))
    fifo = padding_efficiency(pack_fifo(corpus_items, 64))
    assert bucketed >= 0.90
    assert fifo < 0.5


def test_multi_input_items_count_every_row() -> None:
    """An item with three inputs takes three rows of the budget."""
    batches = pack(items_of([[10, 10, 10], [10], [10]]), max_batch_tokens=40, max_batch_size=10)
    assert [len(b) for b in batches] == [2, 1]


def test_padding_efficiency_definition() -> None:
    """Efficiency = real tokens ÷ (rows × longest row) summed over batches."""
    assert padding_efficiency([items_of([[2], [4]])]) == pytest.approx(6 / 8)
