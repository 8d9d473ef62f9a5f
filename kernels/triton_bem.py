"""Fused Triton kernels for the BEM operator; same names and signatures as `kernels.reference`.

`bem_linear`: the base GEMM runs in cuBLAS (`F.linear`); one fused kernel then adds the adapter
update onto that output in place. Rows are grouped by adapter id as Punica's SGMV does: rows are
sorted by id, each segment is cut into blocks of BLOCK_M rows, and each program handles one
block: shrink h = x A[a]ᵀ (kept in registers), gate h ⊙ c · s, then expand h B[a]ᵀ over its
share of the output columns, adding onto y, with the FiLM epilogue fused into the same store.
Blocks of base-only rows (id -1) are skipped entirely unless FiLM must still be applied.

Tiles load in the input dtype and multiply in fp32 registers (IEEE for fp32 inputs, TF32 for
fp16/bf16): the adapter update is a few percent of the base GEMM's FLOPs, so precision costs
less here than tensor-core rate would gain, and memory traffic is the same.

Runs on CUDA tensors, or on CPU under TRITON_INTERPRET=1 (tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.layout import RowLayout


@triton.jit
def _bem_fused_kernel(
    x_ptr, y_ptr, a_ptr, b_ptr, gates_ptr, gamma_ptr, beta_ptr, seq_ptr,
    rows_ptr, blk_start_ptr, blk_len_ptr, blk_adapter_ptr,
    d_in, d_out, rank_total, scale, cols_per_split,
    stride_x, stride_y, stride_an, stride_ar, stride_bn, stride_bo, stride_g, stride_f,
    HAS_FILM: tl.constexpr, HAS_BETA: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    start = tl.load(blk_start_ptr + pid_m)
    count = tl.load(blk_len_ptr + pid_m)
    adapter = tl.load(blk_adapter_ptr + pid_m)
    has_adapter = adapter >= 0
    a_idx = tl.maximum(adapter, 0).to(tl.int64)

    offs_m = tl.arange(0, BLOCK_M)
    m_mask = offs_m < count
    rows = tl.load(rows_ptr + start + offs_m, mask=m_mask, other=0).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R)
    # Base-only blocks (FiLM only) read no adapter data: their rank and x masks are empty.
    r_mask = offs_r < tl.where(has_adapter, rank_total, 0)
    x_mask = offs_m < tl.where(has_adapter, count, 0)

    # Shrink: h = x A[a]ᵀ, accumulated in fp32 over d_in.
    h = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, d_in, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < d_in
        xt = tl.load(x_ptr + rows[:, None] * stride_x + offs_k[None, :],
                     mask=x_mask[:, None] & k_mask[None, :], other=0.0)
        at = tl.load(a_ptr + a_idx * stride_an + offs_r[:, None] * stride_ar + offs_k[None, :],
                     mask=r_mask[:, None] & k_mask[None, :], other=0.0)
        h += tl.dot(xt.to(tl.float32), tl.trans(at.to(tl.float32)), input_precision=PRECISION)

    # Gate: h ⊙ c · s.
    g = tl.load(gates_ptr + rows[:, None] * stride_g + offs_r[None, :],
                mask=m_mask[:, None] & r_mask[None, :], other=0.0)
    h = h * g.to(tl.float32) * scale
    if HAS_FILM:
        seq = tl.load(seq_ptr + rows, mask=m_mask, other=0).to(tl.int64)

    # Expand onto this program's share of the output columns, then the FiLM epilogue.
    n_lo = pid_n * cols_per_split
    n_hi = tl.minimum(n_lo + cols_per_split, d_out)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < n_hi
        tile_mask = m_mask[:, None] & n_mask[None, :]
        y_ptrs = y_ptr + rows[:, None] * stride_y + offs_n[None, :]
        acc = tl.load(y_ptrs, mask=tile_mask, other=0.0).to(tl.float32)
        bt = tl.load(b_ptr + a_idx * stride_bn + offs_n[None, :] * stride_bo + offs_r[:, None],
                     mask=r_mask[:, None] & n_mask[None, :], other=0.0)
        acc += tl.dot(h, bt.to(tl.float32), input_precision=PRECISION)
        if HAS_FILM:
            gam = tl.load(gamma_ptr + seq[:, None] * stride_f + offs_n[None, :], mask=tile_mask,
                          other=1.0)
            acc = acc * gam.to(tl.float32)
            if HAS_BETA:
                bet = tl.load(beta_ptr + seq[:, None] * stride_f + offs_n[None, :],
                              mask=tile_mask, other=0.0)
                acc = acc + bet.to(tl.float32)
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=tile_mask)


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
    """Fused form of `kernels.reference.bem_linear` (same semantics and shapes). `layout`: the
    rows' layout worked out on the host (`kernels.layout`); without it the ids are read back
    here, which waits for the device."""
    if film_gamma is not None and seq_ids is None:
        raise ValueError("FiLM needs seq_ids to pick each row's γ and β")
    x = x.contiguous()
    y = F.linear(x, weight, bias).contiguous()
    T, d_in = x.shape
    d_out = y.shape[1]
    rank_total = A.shape[1]
    has_film = film_gamma is not None
    if T == 0:
        return y
    layout = layout if layout is not None else RowLayout.of(adapter_ids)
    if not has_film and not layout.any_adapter:
        return y
    A, B, gates = A.contiguous(), B.contiguous(), gates.contiguous()
    block_m = 16 if T <= 256 else 32
    table = layout.blocks(block_m, keep_base=has_film)
    block_n = 64
    block_r = max(16, triton.next_power_of_2(rank_total))
    n_blocks = table.count
    if n_blocks == 0:
        return y
    target_programs = 264  # two waves on a 132-SM H100; harmless elsewhere
    splits = max(1, min(triton.cdiv(d_out, block_n), triton.cdiv(target_programs, n_blocks)))
    cols_per_split = triton.cdiv(triton.cdiv(d_out, splits), block_n) * block_n
    splits = triton.cdiv(d_out, cols_per_split)
    gamma = film_gamma.contiguous() if has_film else y
    beta = film_beta.contiguous() if film_beta is not None else y
    seq = seq_ids.to(torch.int32).contiguous() if has_film else table.order
    _bem_fused_kernel[(n_blocks, splits)](
        x, y, A, B, gates, gamma, beta, seq,
        table.order, table.starts, table.lens, table.adapters,
        d_in, d_out, rank_total, float(scale), cols_per_split,
        x.stride(0), y.stride(0), A.stride(0), A.stride(1), B.stride(0), B.stride(1),
        gates.stride(0), gamma.stride(0),
        HAS_FILM=has_film, HAS_BETA=film_beta is not None,
        PRECISION="tf32" if x.dtype in (torch.float16, torch.bfloat16) else "ieee",
        BLOCK_M=block_m, BLOCK_K=64, BLOCK_R=block_r, BLOCK_N=block_n,
    )
    return y

