"""Synthetic sentences of controlled token length, for the demo and the benchmarks.

Lengths are log-normal (most inputs short, a long tail), as in real embedding traffic; words
come from the model's own vocabulary so that one word is about one word piece.
"""

from __future__ import annotations

import json
import random

from ops.models import ModelFiles


def vocabulary(model: ModelFiles) -> list[str]:
    vocab = (model.root / "vocab.txt").read_text(encoding="utf-8").split()
    return [w for w in vocab if w.isascii() and w.isalpha() and len(w) >= 3]


def sentences(model: ModelFiles, count: int, *, median_tokens: float = 20.0,
              sigma: float = 0.75, max_tokens: int = 256, seed: int = 0) -> list[str]:
    """`count` sentences whose token counts (with [CLS], [SEP] and the final period) are
    log-normal around `median_tokens`, capped at `max_tokens`."""
    rng = random.Random(seed)
    words = vocabulary(model)
    out = []
    for _ in range(count):
        tokens = min(max_tokens, max(4.0, rng.lognormvariate(0.0, sigma) * median_tokens))
        n = int(tokens) - 3
        text = " ".join(rng.choice(words) for _ in range(n))
        out.append(text[0].upper() + text[1:] + ".")
    return out


def to_jsonl(texts: list[str], model: str, *, prefix: str = "req") -> bytes:
    lines = (
        json.dumps({"custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/embeddings",
                    "body": {"model": model, "input": text}})
        for i, text in enumerate(texts)
    )
    return ("\n".join(lines) + "\n").encode()
