"""A micro-batch's drift sample: independent draws of output vectors per serving adapter, a
per-sequence expert-usage row per adapter, and every length; all tied to the job."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from schemas.microbatch import Item
from workers.outcomes import USAGE_SEQUENCES_PER_BATCH, features

pytestmark = pytest.mark.timeout(60)


def items(n: int) -> list[Item]:
    return [Item(line=i, custom_id=f"c{i}", texts=["a b"], lengths=[4], model="m")
            for i in range(n)]


def test_vectors_are_kept_one_by_one_at_the_rate_per_adapter() -> None:
    served = [("v1", np.ones((1, 3), np.float32))] * 3000 + [("", np.zeros((1, 3)))] * 1000
    out = features("m", "batch_1", items(4000), served, {}, embedding_rate=0.1)
    by_kind = {(f.kind, f.adapter): f for f in out}
    assert by_kind[("lengths", "")].data == [4] * 4000
    kept = {a: len(by_kind[("embeddings", a)].data) for a in ("v1", "")}
    assert 240 < kept["v1"] < 360 and 60 < kept[""] < 140  # binomial(n, 0.1), ±4 sd
    assert by_kind[("embeddings", "v1")].weight == kept["v1"]  # a row weighs its vectors
    assert all(f.job_id == "batch_1" for f in out)
    assert not [f for f in features("m", "b", items(10), served[:10], {}, 0.0)
                if f.kind == "embeddings"]


def test_expert_usage_keeps_whole_sequences() -> None:
    usage = {"v1": [torch.tensor([[3, 1], [0, 4]]), torch.tensor([[2, 2]] * 100)]}
    row = next(f for f in features("m", "b", items(1), [], usage, 0.0) if f.kind == "experts")
    assert len(row.data) == USAGE_SEQUENCES_PER_BATCH and row.adapter == "v1"
    assert all(sum(seq) == 4 and len(seq) == 2 for seq in row.data)
    assert row.weight == pytest.approx(102 / USAGE_SEQUENCES_PER_BATCH)
