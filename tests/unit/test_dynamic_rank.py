"""Dynamic rank: a request's rank budget r serves its adapter truncated to each expert's first
r components; an adapter file may give each expert a rank of its own; budgets mix in one
forward; a budget without an adapter, or above the adapter's rank, is refused by name."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load, save

from kernels import dispatch
from ops.models import model_files
from ops.settings import Settings
from producers.validate import validate_jsonl
from schemas.adapters import AdapterMeta
from tests.support.adapters import install
from workers.adapters import make_adapter, rank_keep
from workers.runtime import Runtime

TEXTS = ["a short one", "a somewhat longer sentence about adapters and routing",
         "third text here", "the last row, a little longer than the third"]


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    return Runtime(Settings(home=tmp_path_factory.mktemp("var"), device="cpu"))


def truncated(data: bytes, ranks: list[int], experts: int = 4, rank: int = 8) -> bytes:
    """The adapter file with each expert's components past ranks[e] zeroed, written out by
    hand (no `ranks` metadata): what a budget must be equal to."""
    keep = rank_keep(experts, rank, ranks)
    tensors = load(data)
    for name, t in tensors.items():
        if name.endswith(".A"):
            t[~keep] = 0
        elif name.endswith(".B"):
            t[:, ~keep] = 0
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    return save(tensors, metadata=header["__metadata__"])


def test_a_budget_gives_the_adapter_truncated_to_it(rt: Runtime) -> None:
    full = make_adapter(rt.files, seed=3, b_std=0.05)
    install(rt, a=full, a3=truncated(full, [3] * 4))
    n = len(TEXTS)
    budget = rt.embed(TEXTS, ["a"] * n, ranks=[3] * n)
    assert torch.allclose(budget, rt.embed(TEXTS, ["a3"] * n), atol=1e-5)
    assert (budget - rt.embed(TEXTS, ["a"] * n)).abs().max() > 1e-3  # the budget changes it
    at_rank = rt.embed(TEXTS, ["a"] * n, ranks=[8] * n)
    assert torch.equal(at_rank, rt.embed(TEXTS, ["a"] * n))


def test_an_adapter_file_gives_each_expert_its_rank(rt: Runtime) -> None:
    ranks = [8, 4, 2, 1]
    install(rt, own=make_adapter(rt.files, seed=4, b_std=0.05, ranks=ranks),
            cut=truncated(make_adapter(rt.files, seed=4, b_std=0.05), ranks))
    n = len(TEXTS)
    assert torch.allclose(rt.embed(TEXTS, ["own"] * n), rt.embed(TEXTS, ["cut"] * n),
                          atol=1e-5)
    # A budget caps each expert at min(budget, its own rank).
    assert torch.allclose(rt.embed(TEXTS, ["own"] * n, ranks=[2] * n),
                          rt.embed(TEXTS, ["cut"] * n, ranks=[2] * n), atol=1e-5)


@pytest.mark.parametrize("kernels", ["reference", "triton"])
def test_mixed_budgets_in_one_forward_equal_each_row_alone(rt: Runtime, kernels: str) -> None:
    install(rt, a=make_adapter(rt.files, seed=5, b_std=0.05),
            b=make_adapter(rt.files, seed=6, experts=2, rank=4, b_std=0.05))
    names: list[str | None] = ["a", "a", "b", None]
    budgets: list[int | None] = [None, 2, 3, None]
    dispatch.set_mode(kernels)
    try:
        mixed = rt.embed(TEXTS, names, ranks=budgets)
        for row, (text, name, budget) in enumerate(zip(TEXTS, names, budgets, strict=True)):
            alone = rt.embed([text], [name], ranks=[budget])
            assert torch.allclose(mixed[row], alone[0], atol=2e-5), (row, name, budget)
    finally:
        dispatch.set_mode("auto")
    assert not torch.allclose(mixed[0], mixed[1], atol=1e-3)


def test_bad_per_expert_ranks_are_refused() -> None:
    base = {"base_model": "minilm", "experts": "4", "rank": "8", "alpha": "16"}
    assert AdapterMeta.model_validate({**base, "ranks": "8,4,2,1"}).ranks == [8, 4, 2, 1]
    for ranks in ("8,4,2", "9,4,2,1", "0,4,2,1", "eight"):
        with pytest.raises(ValueError, match="ranks"):
            AdapterMeta.model_validate({**base, "ranks": ranks})


def test_a_budget_is_checked_against_the_adapter_when_submitted() -> None:
    lines = [{"custom_id": cid, "method": "POST", "url": "/v1/embeddings",
              "body": {"model": model, "input": "hello", "rank": rank}}
             for cid, model, rank in (("ok", "minilm:a", 4), ("over", "minilm:a", 9),
                                      ("base", "minilm", 2))]
    result = validate_jsonl("\n".join(json.dumps(x) for x in lines).encode(),
                            model=model_files("minilm"), served="minilm", max_lines=10,
                            max_bytes=10**6, known_adapters={"a": 8})
    assert [(i.custom_id, i.rank) for i in result.items] == [("ok", 4)]
    errors = {e.line: (e.param, e.message) for e in result.errors}
    assert errors[2][0] == "body.rank" and "9 is above adapter 'a''s rank 8" in errors[2][1]
    assert errors[3][0] == "body.rank" and "needs an adapter" in errors[3][1]
