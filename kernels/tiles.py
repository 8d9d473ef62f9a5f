"""Block sizes of the fused kernel, chosen per shape from a table, and the set of every choice
it can make (`launchable`), which `python -m kernels.check --aot` compiles for each GPU target.

Rules, in order:
- BLOCK_R: the adapters' total rank (E·r of the widest adapter in the stack) rounded up to a
  power of two, at least 16 (the smallest `tl.dot` side); above `MAX_RANK_TOTAL` an adapter is
  refused when it is registered, so no launch needs more.
- BLOCK_M: a block holds rows of one adapter, so a segment's last block is partial: 16 rows
  (the smallest `tl.dot` side) while adapters average fewer than 128 rows in the forward, 32
  otherwise (at most 1/4 of a block wasted per segment); fp32 always 16 (below).
- Aligned launches (every size and stride a multiple of 16, every pointer 16-byte aligned: a
  transformer's sites, since `kernels.layer` pads the stack's rank to a multiple of 16) let
  Triton vectorise loads: BLOCK_N 128, BLOCK_K 64, 8 warps. Unaligned launches (odd sizes) load
  element by element, and each element's 64-bit address takes registers: BLOCK_N 64, BLOCK_K 32.
  fp32 tiles are twice as wide and its three-pass TF32 products hold more: BLOCK_M 16,
  BLOCK_N 64, BLOCK_K 32, 8 warps. Each rule is the smallest change that made every launch
  compile without a spill for sm_80 and sm_90 (`python -m kernels.check --aot`).
"""

from __future__ import annotations

import dataclasses
import itertools

import torch

from kernels.limits import MAX_RANK_TOTAL

SHORT_SEGMENT_ROWS = 128
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclasses.dataclass(frozen=True)
class Tiles:
    block_m: int
    block_n: int
    block_k: int
    block_r: int
    num_warps: int = 4
    num_stages: int = 2

    def label(self) -> str:
        return (f"M{self.block_m} N{self.block_n} K{self.block_k} R{self.block_r} "
                f"w{self.num_warps} s{self.num_stages}")


def rank_block(rank_total: int) -> int:
    if rank_total > MAX_RANK_TOTAL:
        raise ValueError(f"total adapter rank {rank_total} (experts × rank) is above the "
                         f"kernel's limit of {MAX_RANK_TOTAL}")
    return max(16, 1 << max(0, rank_total - 1).bit_length())


def pick(segment_rows: float, rank_total: int, dtype: torch.dtype, aligned: bool) -> Tiles:
    """The tiles of one `bem_linear` call (the shrink uses M, K and R; the expand M, N and R);
    `segment_rows`: the mean rows per adapter in the forward (`RowLayout.segment_rows`)."""
    block_m = 16 if segment_rows < SHORT_SEGMENT_ROWS else 32
    block_r = rank_block(rank_total)
    if dtype == torch.float32:
        return Tiles(16, block_n=64, block_k=32, block_r=block_r, num_warps=8)
    if aligned:
        return Tiles(block_m, block_n=128, block_k=64, block_r=block_r, num_warps=8)
    return Tiles(block_m, block_n=64, block_k=32, block_r=block_r)


def launchable() -> list[tuple[torch.dtype, bool, Tiles]]:
    """Every (dtype, aligned, tiles) that `pick` can return."""
    ranks = [16 << i for i in range((MAX_RANK_TOTAL // 16).bit_length())]
    seen: dict[tuple[torch.dtype, bool, Tiles], None] = {}
    for dtype, aligned, rows, rank in itertools.product(
            DTYPES, (True, False), (1, SHORT_SEGMENT_ROWS), ranks):
        seen[(dtype, aligned, pick(rows, rank, dtype, aligned))] = None
    return list(seen)
