"""Pick the implementation per call: the fused Triton kernel for CUDA tensors, the torch
reference elsewhere. `BEMQ_KERNELS=triton|reference|auto` forces one (auto by default);
`triton` on CPU tensors runs only under TRITON_INTERPRET=1."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from kernels import reference

_CHOICES = ("auto", "triton", "reference")


def mode() -> str:
    value = os.environ.get("BEMQ_KERNELS", "auto")
    if value not in _CHOICES:
        raise ValueError(f"BEMQ_KERNELS: expected one of {_CHOICES}, got {value!r}")
    return value


def uses_triton(x: torch.Tensor) -> bool:
    chosen = mode()
    if chosen == "reference":
        return False
    if chosen == "triton":
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
