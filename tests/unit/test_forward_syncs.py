"""A forward with adapters never waits on the device: no tensor is read back to the host between
the inputs' copy and the output's (on a GPU, each read would stall the launch queue at each of
the 12 BEM sites). On the CPU the reads are caught as torch calls; on a GPU,
`torch.cuda.set_sync_debug_mode("error")` catches them itself."""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch.overrides import TorchFunctionMode

from kernels import dispatch
from ops.settings import Settings
from tests.support.adapters import install
from workers.adapters import make_adapter
from workers.runtime import Runtime

TEXTS = ["a short one", "a somewhat longer sentence about adapters and routing",
         "third text here", "the last row"]

# Calls whose result on a device tensor is only known once the device has caught up.
READS_BACK = {
    torch.Tensor.__bool__, torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__int__,
    torch.Tensor.__float__, torch.Tensor.nonzero, torch.nonzero, torch.unique,
    torch.Tensor.unique, torch.unique_consecutive, torch.Tensor.unique_consecutive,
    torch.repeat_interleave, torch.Tensor.repeat_interleave, torch.masked_select,
    torch.Tensor.masked_select, torch.Tensor.numpy, torch.Tensor.cpu,
}


# Code that runs on host tensors only: Triton's interpreter (it stands in for the GPU here and
# copies tensors by design), and the row layout's construction and launch tables (its
# constructor refuses device tensors). `RowLayout.of`, which reads device ids back, is not.
HOST_ONLY_FUNCTIONS = {("kernels/layout.py", "__init__"), ("kernels/layout.py", "block_table")}


def host_only(frame: traceback.FrameSummary) -> bool:
    return "/triton/" in frame.filename or any(
        frame.filename.endswith(path) and frame.name == name
        for path, name in HOST_ONLY_FUNCTIONS)


class ReadBackSpy(TorchFunctionMode):
    """Records every read-back call made outside host-only code."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in READS_BACK:
            stack = traceback.extract_stack()[:-1]
            if not any(host_only(f) for f in stack):
                caller = next(f for f in reversed(stack) if "/torch/" not in f.filename)
                self.seen.append(f"{func.__name__} at {caller.filename}:{caller.lineno}")
        return func(*args, **(kwargs or {}))


@contextmanager
def triton_kernels() -> Iterator[None]:
    dispatch.set_mode("triton")
    try:
        yield
    finally:
        dispatch.set_mode("auto")


def with_adapters(rt: Runtime) -> Runtime:
    """Adapter "a", and "b" with FiLM and another shape; rows of both and the base mix below."""
    install(rt, a=make_adapter(rt.files, seed=1, b_std=0.05),
            b=make_adapter(rt.files, seed=2, experts=2, rank=4, b_std=0.05, film=True))
    return rt


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    return with_adapters(Runtime(Settings(home=tmp_path_factory.mktemp("var"), device="cpu")))


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="on a GPU host the CUDA case below checks this; Triton takes CPU "
                           "tensors only through the interpreter, which is off there")
@pytest.mark.timeout(300)
def test_an_adapter_forward_reads_nothing_back(rt: Runtime) -> None:
    """Mixed adapters, FiLM and base rows through the fused kernel: the model's forward makes no
    read-back call, and gives what the reference kernels give."""
    names: list[str | None] = ["a", None, "b", "a"]
    lengths, ids = rt.tokenize(TEXTS)
    reference = rt.embed_tokens(lengths, ids, names)
    model_forward = rt.model.forward
    spy = ReadBackSpy()

    def watched(*args, **kwargs):  # type: ignore[no-untyped-def]
        with spy:
            return model_forward(*args, **kwargs)

    rt.model.forward = watched  # type: ignore[method-assign]
    try:
        with triton_kernels():
            fused = rt.embed_tokens(lengths, ids, names)
    finally:
        del rt.model.forward
    assert spy.seen == []
    assert torch.allclose(fused, reference, atol=1e-4)


def test_the_spy_sees_a_read_back() -> None:
    """The check above can fail: a `.any()` read as a bool is seen."""
    spy = ReadBackSpy()
    with spy:
        bool((torch.arange(3) >= 0).any())
    assert len(spy.seen) == 1 and spy.seen[0].startswith("__bool__")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.timeout(300)
def test_an_adapter_forward_never_synchronizes_on_cuda(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rt = with_adapters(Runtime(Settings(home=tmp_path, device="cuda")))
    lengths, ids = rt.tokenize(TEXTS)
    names: list[str | None] = ["a", None, "b", "a"]
    rt.embed_tokens(lengths, ids, names)  # compile the kernels and install the stack first
    model_forward = rt.model.forward

    def watched(*args, **kwargs):  # type: ignore[no-untyped-def]
        torch.cuda.set_sync_debug_mode("error")
        try:
            return model_forward(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    rt.model.forward = watched  # type: ignore[method-assign]
    try:
        rt.embed_tokens(lengths, ids, names)
    finally:
        del rt.model.forward
