"""A micro-batch's output lines, put together around rows formatted in one call, are exactly the
bytes orjson gives for each line's response dict (which is what clients parse)."""

from __future__ import annotations

import numpy as np
import orjson
import torch
import torch.nn.functional as F

from schemas.microbatch import Item
from workers.runner import output_lines


def reference(rid: str, item: Item, vectors: np.ndarray) -> bytes:
    tokens = sum(item.lengths)
    data = [{"object": "embedding", "index": i, "embedding": v}
            for i, v in enumerate(vectors)]
    return orjson.dumps({
        "id": rid, "custom_id": item.custom_id,
        "response": {"status_code": 200, "request_id": rid, "body": {
            "object": "list", "data": data, "model": item.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}},
        "error": None}, option=orjson.OPT_SERIALIZE_NUMPY)


def test_lines_match_orjson_of_the_response_dict() -> None:
    torch.manual_seed(0)
    ids = ['plain', 'quote " and \\ back', '],[ brackets', 'ünïcode ✓', '\x01 control']
    served = []
    for n, custom_id in enumerate(ids):
        rows = 1 + n % 3  # items with one text and with several
        item = Item(line=n, custom_id=custom_id, texts=["t"] * rows, lengths=[5 + n] * rows,
                    model="minilm:support-v1")
        served.append((f"batch_req_{n}", item, F.normalize(torch.randn(rows, 384), dim=1).numpy()))
    assert output_lines(served) == [reference(*s) for s in served]
    assert output_lines([]) == []
    for line in output_lines(served):
        assert len(orjson.loads(line)["response"]["body"]["data"][0]["embedding"]) == 384
