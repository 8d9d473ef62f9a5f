"""Triton kernels for the BEM operator; same name and signature as `kernels.reference`.

`bem_linear`: the base GEMM runs in cuBLAS (`F.linear`); two kernels then add the adapter
update, as Punica's SGMV and vLLM's lora_shrink / lora_expand do. Rows are grouped by adapter
id (`kernels.layout`): each program takes a block of at most BLOCK_M rows of one adapter.
1. Shrink: h = (x A[a]ᵀ ⊙ c) · s, once per row (one program per row block, the whole rank),
   written to a small fp32 buffer (T × R).
2. Expand: y += h B[a]ᵀ, one program per row block and BLOCK_N output columns, with the FiLM
   epilogue (γ ⊙ y + β) fused into the same store; with FiLM, blocks of base-only rows (id -1)
   are visited too and only FiLM is applied to them.
No row's shrink is computed twice (an earlier kernel redid it for every share of the output
columns), and the expand's programs are independent, so they fill the GPU.

Why not one kernel that also does the base product (x read once, y written once: fewer bytes):
measured on an H100 at MiniLM's sites, a Triton GEMM over gathered rows took 2.2–3.8× cuBLAS's
time at the best of 96 tile settings, where cuBLAS plus the earlier adapter kernel took
2.4–2.6× (README, kernel section). The cost model in `bench/kernels.py --model` shows what such
a kernel would save if it matched cuBLAS.

Tiles load in the input dtype and multiply as fp32 on tensor cores: TF32 for fp16/bf16 inputs
(the adapter update is a few percent of the base GEMM's FLOPs), three TF32 passes (`tf32x3`,
within fp32's rounding) for fp32 inputs, whose IEEE `dot` would hold its operands in registers
and spill. Block sizes come from `kernels.tiles`. Runs on CUDA tensors, or on CPU under
TRITON_INTERPRET=1 (tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels import tiles
from kernels.layout import RowLayout


@triton.jit
def _bem_shrink_kernel(
    x_ptr, a_ptr, gates_ptr, h_ptr,
    rows_ptr, blk_start_ptr, blk_len_ptr, blk_adapter_ptr,
    d_in, rank_total, scale,
    stride_x, stride_an, stride_ar, stride_g, stride_h,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    pid_m = tl.program_id(0)
    start = tl.load(blk_start_ptr + pid_m)
    count = tl.load(blk_len_ptr + pid_m)
    adapter = tl.load(blk_adapter_ptr + pid_m).to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M)
    m_mask = offs_m < count
    rows = tl.load(rows_ptr + start + offs_m, mask=m_mask, other=0).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R)
    r_mask = offs_r < rank_total
    offs_k0 = tl.arange(0, BLOCK_K)

    h = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, d_in, BLOCK_K):
        offs_k = k0 + offs_k0
        k_mask = offs_k < d_in
        xt = tl.load(x_ptr + rows[:, None] * stride_x + offs_k[None, :],
                     mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        at = tl.load(a_ptr + adapter * stride_an + offs_r[:, None] * stride_ar + offs_k[None, :],
                     mask=r_mask[:, None] & k_mask[None, :], other=0.0)
        h = tl.dot(xt.to(tl.float32), tl.trans(at.to(tl.float32)), h, input_precision=PRECISION)
    tile = m_mask[:, None] & r_mask[None, :]
    g = tl.load(gates_ptr + rows[:, None] * stride_g + offs_r[None, :], mask=tile, other=0.0)
    tl.store(h_ptr + rows[:, None] * stride_h + offs_r[None, :], h * g.to(tl.float32) * scale,
             mask=tile)


@triton.jit
def _bem_expand_kernel(
    h_ptr, b_ptr, y_ptr, gamma_ptr, beta_ptr, seq_ptr,
    rows_ptr, blk_start_ptr, blk_len_ptr, blk_adapter_ptr,
    d_out, rank_total,
    stride_h, stride_bn, stride_bo, stride_y, stride_f,
    HAS_FILM: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    start = tl.load(blk_start_ptr + pid_m)
    count = tl.load(blk_len_ptr + pid_m)
    adapter = tl.load(blk_adapter_ptr + pid_m)
    offs_m = tl.arange(0, BLOCK_M)
    m_mask = offs_m < count
    rows = tl.load(rows_ptr + start + offs_m, mask=m_mask, other=0).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < d_out
    tile = m_mask[:, None] & n_mask[None, :]
    y_ptrs = y_ptr + rows[:, None] * stride_y + offs_n[None, :]
    acc = tl.load(y_ptrs, mask=tile, other=0.0).to(tl.float32)
    if adapter >= 0:
        offs_r = tl.arange(0, BLOCK_R)
        r_mask = offs_r < rank_total
        h = tl.load(h_ptr + rows[:, None] * stride_h + offs_r[None, :],
                    mask=m_mask[:, None] & r_mask[None, :], other=0.0)
        bt = tl.load(b_ptr + adapter.to(tl.int64) * stride_bn + offs_n[None, :] * stride_bo
                     + offs_r[:, None], mask=r_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(h, bt.to(tl.float32), acc, input_precision=PRECISION)
    if HAS_FILM:
        seq = tl.load(seq_ptr + rows, mask=m_mask, other=0).to(tl.int64)
        f_offs = seq[:, None] * stride_f + offs_n[None, :]
        gam = tl.load(gamma_ptr + f_offs, mask=tile, other=1.0)
        bet = tl.load(beta_ptr + f_offs, mask=tile, other=0.0)
        acc = acc * gam.to(tl.float32) + bet.to(tl.float32)
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=tile)


def precision(dtype: torch.dtype) -> str:
    """`tl.dot` input precision of the adapter path for inputs of `dtype`."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def all_aligned(tensors: tuple[torch.Tensor, ...]) -> bool:
    """Whether Triton will specialise the launch as aligned (`kernels.tiles`): every pointer
    16-byte aligned, every size and row stride a multiple of 16 elements."""
    return all(t.data_ptr() % 16 == 0 and all(n % 16 == 0 for n in t.shape[-1:] + t.stride()[:-1])
               for t in tensors)


def bem_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    A: torch.Tensor,
    B: torch.Tensor,
    adapter_ids: torch.Tensor,
    gates: torch.Tensor,
    scale: float,
    film_gamma: torch.Tensor | None = None,
    film_beta: torch.Tensor | None = None,
    seq_ids: torch.Tensor | None = None,
    layout: RowLayout | None = None,
) -> torch.Tensor:
    """Kernel form of `kernels.reference.bem_linear` (same semantics and shapes). `layout`: the
    rows' layout worked out on the host (`kernels.layout`); without it the ids are read back
    here, which waits for the device."""
    if film_gamma is not None and seq_ids is None:
        raise ValueError("FiLM needs seq_ids to pick each row's γ and β")
    x = x.contiguous()
    y = F.linear(x, weight, bias).contiguous()
    T, d_in = x.shape
    d_out = y.shape[1]
    has_film = film_gamma is not None
    if T == 0:
        return y
    layout = layout if layout is not None else RowLayout.of(adapter_ids)
    if not has_film and not layout.any_adapter:
        return y
    A, B, gates = A.contiguous(), B.contiguous(), gates.contiguous()
    R = A.shape[1]
    # A missing FiLM shift is zeros: the kernels' variants (and what `kernels.check --aot`
    # compiles) are then FiLM on or off.
    gamma = film_gamma.contiguous() if has_film else y
    beta = (film_beta.contiguous() if film_beta is not None else torch.zeros_like(gamma)) \
        if has_film else y
    h = torch.empty((T, R), dtype=torch.float32, device=x.device)
    aligned = all_aligned((x, y, A, B, gates, h, gamma, beta))
    t = tiles.pick(layout.segment_rows, R, x.dtype, aligned)
    adapter_rows = layout.blocks(t.block_m, keep_base=False)
    if adapter_rows.count:
        _bem_shrink_kernel[(adapter_rows.count,)](
            x, A, gates, h,
            adapter_rows.order, adapter_rows.starts, adapter_rows.lens, adapter_rows.adapters,
            d_in, R, float(scale),
            x.stride(0), A.stride(0), A.stride(1), gates.stride(0), h.stride(0),
            PRECISION=precision(x.dtype), BLOCK_M=t.block_m, BLOCK_K=t.block_k,
            BLOCK_R=t.block_r, num_warps=t.num_warps, num_stages=t.num_stages,
        )
    table = layout.blocks(t.block_m, keep_base=True) if has_film else adapter_rows
    if table.count == 0:
        return y
    seq = seq_ids.to(torch.int32).contiguous() if has_film else table.order
    _bem_expand_kernel[(table.count, triton.cdiv(d_out, t.block_n))](
        h, B, y, gamma, beta, seq,
        table.order, table.starts, table.lens, table.adapters,
        d_out, R,
        h.stride(0), B.stride(0), B.stride(1), y.stride(0), gamma.stride(0),
        HAS_FILM=has_film, PRECISION=precision(x.dtype),
        BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_R=t.block_r,
        num_warps=t.num_warps, num_stages=t.num_stages,
    )
    return y
