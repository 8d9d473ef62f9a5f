"""Pick the implementation per call: the fused Triton kernel for CUDA tensors, the torch
reference elsewhere. `set_mode("triton" | "reference")` forces one (the worker passes the
`BEMQ_KERNELS` setting); `triton` on CPU tensors runs only under TRITON_INTERPRET=1."""

from __future__ import annotations

from collections.abc import Callable

import torch

from kernels import reference

MODES = ("auto", "triton", "reference")
_mode = "auto"


def set_mode(mode: str) -> None:
    global _mode
    if mode not in MODES:
        raise ValueError(f"kernel mode must be one of {MODES}, got {mode!r}")
    _mode = mode


def uses_triton(x: torch.Tensor) -> bool:
    if _mode == "reference":
        return False
    if _mode == "triton":
        return True
    return x.is_cuda


def bem_linear_impl(x: torch.Tensor) -> Callable[..., torch.Tensor]:
    if uses_triton(x):
        from kernels import triton_bem

        return triton_bem.bem_linear
    return reference.bem_linear


def bem_linear(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    """`kernels.reference.bem_linear` semantics, on the fastest implementation for `x`."""
    return bem_linear_impl(x)(x, *args, **kwargs)


route_chunks = reference.route_chunks
film = reference.film
expand_gates = reference.expand_gates
