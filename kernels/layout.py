"""Where a forward's rows go, worked out on the host once per forward.

Every BEM site of a forward sees the same rows with the same adapter ids, so the fused kernel's
grouping of rows into per-adapter blocks (Punica's SGMV layout) is the same at all of them.
Worked out from device tensors, each site would wait for the GPU several times (`.any()`,
`unique_consecutive` and `repeat_interleave` all read results back before the launch can be
sized). Worked out from the host's copy of the ids and sent with non-blocking copies, a forward
never waits on the device before its output is read.
"""

from __future__ import annotations

import dataclasses

import torch


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host tensor to `device` without waiting: through pinned memory to CUDA (the copy
    is queued on the stream and the host goes on), unchanged for the CPU."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


@dataclasses.dataclass(frozen=True)
class Blocks:
    """The fused kernel's launch table: rows sorted by adapter (`order`), and per block of at
    most BLOCK_M rows its first position in `order`, its row count and its adapter id."""

    order: torch.Tensor
    starts: torch.Tensor
    lens: torch.Tensor
    adapters: torch.Tensor
    count: int


def block_table(ids: torch.Tensor, block_m: int, keep_base: bool) -> Blocks:
    """The launch table for per-row adapter ids `ids` (host int32); base-only rows (-1) get
    blocks only when `keep_base` (FiLM must still reach them)."""
    order = torch.argsort(ids, stable=True).to(torch.int32)
    seg_ids, counts = torch.unique_consecutive(ids[order.long()], return_counts=True)
    seg_start = torch.cumsum(counts, 0) - counts
    if not keep_base:
        active = seg_ids >= 0
        seg_ids, counts, seg_start = seg_ids[active], counts[active], seg_start[active]
    per_seg = (counts + block_m - 1) // block_m
    seg_of_block = torch.repeat_interleave(torch.arange(len(per_seg)), per_seg)
    first_block = torch.cumsum(per_seg, 0) - per_seg
    j = torch.arange(len(seg_of_block)) - first_block[seg_of_block]
    starts = seg_start[seg_of_block] + j * block_m
    lens = torch.clamp(counts[seg_of_block] - j * block_m, max=block_m)
    return Blocks(order, starts.to(torch.int32), lens.to(torch.int32),
                  seg_ids[seg_of_block].to(torch.int32), len(starts))


class RowLayout:
    """One forward's per-row adapter ids, kept on the host, with the launch tables built from
    them once per block size and cached on the device."""

    def __init__(self, host_ids: torch.Tensor, device: torch.device) -> None:
        if host_ids.device.type != "cpu":
            raise ValueError("RowLayout needs the ids on the host")
        self.ids = host_ids.to(torch.int32).reshape(-1)
        self.device = device
        adapter_ids = self.ids[self.ids >= 0]
        self.any_adapter = bool(adapter_ids.numel())
        # Mean rows per adapter: short segments get short row blocks (`kernels.tiles.pick`).
        self.segment_rows = (adapter_ids.numel() / len(torch.unique(adapter_ids))
                             if self.any_adapter else 0.0)
        self._tables: dict[tuple[int, bool], Blocks] = {}

    @classmethod
    def of(cls, adapter_ids: torch.Tensor) -> RowLayout:
        """The layout of device ids: reads them back once (a caller outside a forward)."""
        return cls(adapter_ids.cpu(), adapter_ids.device)

    def blocks(self, block_m: int, keep_base: bool) -> Blocks:
        key = (block_m, keep_base)
        if key not in self._tables:
            t = block_table(self.ids, block_m, keep_base)
            self._tables[key] = Blocks(*(to_device(x, self.device)
                                         for x in (t.order, t.starts, t.lens, t.adapters)),
                                       count=t.count)
        return self._tables[key]
