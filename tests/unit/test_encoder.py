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


REAL_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Retrieval-augmented generation grounds a language model's answers in documents it can cite.",
    "Our GPU cluster was down for maintenance between 02:00 and 04:00 UTC on Sunday.",
    "How do I reset my password if I no longer have access to the recovery email?",
    "Low-rank adapters add a small trainable update to each frozen projection matrix.",
    "The committee postponed its vote until the budget figures had been independently audited.",
    "Bake the bread at 220 degrees for twenty minutes, then lower the oven to 190.",
    "Die Katze schläft auf dem Sofa, während draußen der Regen fällt.",
    "Invoice #4471 is overdue by 30 days; please remit payment to avoid a late fee.",
    "She measured the river's flow every morning for three years and never missed a day.",
    "Error: connection refused while connecting to upstream server at 10.0.0.7:5432",
    "In 1969, two astronauts walked on the Moon while a third orbited above them.",
    "A mixture of experts routes each token to a few specialised sub-networks.",
    "Please summarise the attached quarterly report in three bullet points.",
    "The museum's new wing houses a collection of Byzantine mosaics and medieval manuscripts.",
    " ".join(["Long inputs exercise the attention over many positions and the padding mask."] * 12),
]


@pytest.mark.timeout(180)
def test_bfloat16_stays_within_cosine_0999_of_float32(runtime: Runtime,
                                                      tmp_path_factory: pytest.TempPathFactory
                                                      ) -> None:
    """BEMQ_DTYPE=bfloat16 (the default on CUDA; it runs on the CPU too): every real-text
    embedding, base rows and adapter rows alike, within cosine 0.999 of fp32's."""
    from tests.support.adapters import install
    from workers.adapters import make_adapter

    bf16 = Runtime(Settings(home=tmp_path_factory.mktemp("bf16"), device="cpu",
                            dtype="bfloat16"))
    assert bf16.dtype == torch.bfloat16 and bf16.model.word.weight.dtype == torch.bfloat16
    data = make_adapter(runtime.files, seed=3, experts=2, rank=4, b_std=0.05, film=True)
    for rt in (runtime, bf16):
        install(rt, a=data)
    texts = REAL_TEXT + TEXTS
    for adapters in (None, ["a" if i % 2 else None for i in range(len(texts))]):
        ref = runtime.embed(texts, adapters)
        ours = bf16.embed(texts, adapters)
        assert ours.dtype == torch.float32
        cosine = (ours * ref).sum(1)
        assert float(cosine.min()) >= 0.999, (adapters is not None, cosine.tolist())


def test_dtype_auto_is_float32_on_the_cpu(runtime: Runtime) -> None:
    assert runtime.dtype == torch.float32
