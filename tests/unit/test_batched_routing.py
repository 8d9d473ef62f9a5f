"""Routing is batched over the adapters of a forward: adapters that share experts, rank and
routing settings are routed together, each sequence by its own router, so a forward makes as many
torch operations with 8 adapters as with one (on a GPU each operation is a launch, and routing
one adapter at a time, a forward with 8 adapters took 31 times the base forward's time on an
H200)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kernels import layer
from kernels.layer import Routing
from ops.settings import Settings
from schemas import tokens
from tests.support.adapters import install
from workers.adapters import make_adapter
from workers.runtime import Runtime

TEXTS = [f"sentence {i}: " + "about adapters and their routing " * (1 + i % 5) for i in range(16)]


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    rt = Runtime(Settings(home=tmp_path_factory.mktemp("var"), device="cpu"))
    alike = {f"a{i}": make_adapter(rt.files, seed=i, b_std=0.05) for i in range(8)}
    install(rt, **alike, other=make_adapter(rt.files, seed=99, experts=2, rank=4, b_std=0.05,
                                            routing=Routing(tau=0.1)))
    return rt


class OpCounter(TorchDispatchMode):
    """Counts the torch operations dispatched while it is on and not paused."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.count += not self.paused
        return func(*args, **(kwargs or {}))


@contextmanager
def adapter_update_uncounted(counter: OpCounter) -> Iterator[None]:
    """Leave `bem_linear` itself out: on a GPU it is one kernel pair whatever the adapters, and
    its CPU reference loops over them by design."""
    real = layer.dispatch.bem_linear

    def paused(*args, **kwargs):  # type: ignore[no-untyped-def]
        counter.paused = True
        try:
            return real(*args, **kwargs)
        finally:
            counter.paused = False

    layer.dispatch.bem_linear = paused  # type: ignore[assignment]
    try:
        yield
    finally:
        layer.dispatch.bem_linear = real  # type: ignore[assignment]


def operations(rt: Runtime, names: list[str | None]) -> int:
    lengths, ids = rt.tokenize(TEXTS)
    ids_t, mask = tokens.padded(lengths, ids)
    bem = rt._plan(names, None, mask, None)
    counter = OpCounter()
    with torch.inference_mode(), adapter_update_uncounted(counter), counter:
        rt.model(ids_t, mask, bem, normalize=False)
    return counter.count


def test_operations_per_forward_do_not_grow_with_the_adapters(rt: Runtime) -> None:
    one = operations(rt, ["a0"] * len(TEXTS))
    eight = operations(rt, [f"a{i % 8}" for i in range(len(TEXTS))])
    assert eight == one
    # Another routing setting is another group: more operations, still not one set per adapter.
    mixed = operations(rt, [f"a{i % 8}" if i % 3 else "other" for i in range(len(TEXTS))])
    assert one < mixed < 2 * one


def test_many_adapters_in_one_forward_equal_each_row_alone(rt: Runtime) -> None:
    names: list[str | None] = [None if i % 7 == 3 else ("other" if i % 5 == 0 else f"a{i % 8}")
                               for i in range(len(TEXTS))]
    mixed = rt.embed(TEXTS, names)
    for row, (text, name) in enumerate(zip(TEXTS, names, strict=True)):
        alone = rt.embed([text], [name])
        assert torch.allclose(mixed[row], alone[0], atol=2e-5), (row, name)
