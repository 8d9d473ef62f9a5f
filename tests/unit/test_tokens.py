"""The stored form of a micro-batch's token ids: what goes in comes out, rows pad without a
Python loop into exactly what a row-by-row fill gives, and a damaged value is refused."""

from __future__ import annotations

import random

import pytest
import torch

from schemas import tokens


def rows(seed: int, n: int, top: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(top) for _ in range(rng.randint(1, 40))] for _ in range(n)]


@pytest.mark.parametrize("top", [30522, 1 << 20])  # two- and four-byte ids
def test_round_trip_and_padding(top: int) -> None:
    data = rows(1, 57, top)
    lengths, ids = tokens.unpack_lengths_and_ids(tokens.pack_ids(data))
    assert lengths.tolist() == [len(r) for r in data]
    padded, mask = tokens.padded(lengths, ids)
    width = max(len(r) for r in data)
    expect = torch.zeros((len(data), width), dtype=torch.long)
    for i, r in enumerate(data):
        expect[i, :len(r)] = torch.tensor(r)
    assert torch.equal(padded, expect)
    expect_mask = torch.zeros_like(expect)
    for i, r in enumerate(data):
        expect_mask[i, :len(r)] = 1
    assert torch.equal(mask, expect_mask)


def test_select_rows_picks_and_orders() -> None:
    data = rows(2, 10, 500)
    lengths, ids = tokens.unpack_lengths_and_ids(tokens.pack_ids(data))
    for picked in ([3], [9, 0, 4], list(range(10)), list(range(2, 6))):
        sub_lengths, sub_ids = tokens.select_rows(lengths, ids, picked)
        assert sub_lengths.tolist() == [len(data[r]) for r in picked]
        assert sub_ids.tolist() == [i for r in picked for i in data[r]]


def test_damaged_values_are_refused() -> None:
    good = tokens.pack_ids(rows(3, 5, 100))
    with pytest.raises(tokens.BadTokens, match="shorter than its header"):
        tokens.unpack_lengths_and_ids(good[:4])
    with pytest.raises(tokens.BadTokens, match="not a token value"):
        tokens.unpack_lengths_and_ids(b"XX" + good[2:])
    with pytest.raises(tokens.BadTokens, match="ids for lengths summing"):
        tokens.unpack_lengths_and_ids(good[:-2])
