"""Our BERT encoder gives sentence-transformers' embeddings for all-MiniLM-L6-v2."""

from __future__ import annotations

import pytest
import torch

from ops.models import model_files
from ops.settings import Settings
from workers.runtime import Runtime

TEXTS = [
    "Hello world",
    "A considerably longer sentence, with punctuation; and several clauses, to force padding.",
    "ÜNÏCÖDÉ, accents and emoji 🚀 are normalised by the tokenizer",
    "x",
    "word " * 300,  # truncated to max_seq_length, as sentence-transformers does
]


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    return Runtime(Settings(home=tmp_path_factory.mktemp("var"), device="cpu"))


@pytest.mark.timeout(120)
def test_matches_sentence_transformers(runtime: Runtime) -> None:
    """fp32 embeddings equal SentenceTransformer.encode(normalize_embeddings=True) within 1e-5."""
    from sentence_transformers import SentenceTransformer

    ref_model = SentenceTransformer(str(model_files("minilm").root), device="cpu")
    reference = torch.tensor(ref_model.encode(TEXTS, normalize_embeddings=True))
    ours = runtime.embed(TEXTS)
    assert ours.shape == (len(TEXTS), 384)
    assert torch.allclose(ours, reference, atol=1e-5, rtol=0)


def test_padding_does_not_change_an_embedding(runtime: Runtime) -> None:
    """A text's embedding is the same alone and padded inside a batch of longer texts."""
    alone = runtime.embed(["short"])
    batched = runtime.embed(["short", TEXTS[1], TEXTS[2]])[:1]
    assert torch.allclose(alone, batched, atol=1e-6)
    assert torch.allclose(alone.norm(dim=1), torch.ones(1), atol=1e-6)
