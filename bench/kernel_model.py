"""A cost model (a model, not a measurement) of the BEM sites and the whole MiniLM encoder
forward, for the micro-batches the packer really forms from the demo corpus.

Each kernel is costed by the roofline: time = max(FLOPs ÷ peak FLOP/s, bytes ÷ memory
bandwidth), with H100 SXM figures (bf16 dense 989 TFLOP/s, 3.35 TB/s), bf16 activations and
weights, every kernel reading its inputs from and writing its outputs to HBM (as eager PyTorch
runs them), no launch latency. FLOPs are those the kernels execute: the adapter kernels work on
whole blocks of BLOCK_M rows and BLOCK_R rank components (`kernels.tiles`), so a partial block
counts in full. The minimum is the same work without padding or repetition.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from kernels import tiles

PEAK_FLOPS = 989e12
PEAK_BYTES = 3.35e12
BYTES = 2  # bf16
HIDDEN, INTERMEDIATE, LAYERS, HEADS = 384, 1536, 6, 12
SITES = {"attn_out": (HIDDEN, HIDDEN), "ffn_down": (INTERMEDIATE, HIDDEN)}
EXPERTS, RANK = 4, 8  # the demo adapter


@dataclasses.dataclass
class Cost:
    flops: float = 0.0
    bytes: float = 0.0
    seconds: float = 0.0

    def add(self, flops: float, moved: float) -> Cost:
        self.flops += flops
        self.bytes += moved
        self.seconds += max(flops / PEAK_FLOPS, moved / PEAK_BYTES)
        return self


def gemm(c: Cost, rows: int, d_in: int, d_out: int) -> Cost:
    return c.add(2 * rows * d_in * d_out, BYTES * (rows * d_in + d_in * d_out + rows * d_out))


def elementwise(c: Cost, elements: int, reads: int = 1) -> Cost:
    return c.add(elements * 4, BYTES * elements * (reads + 1))


def encoder_forward(S: int, L: int) -> Cost:
    """The base encoder on one padded micro-batch of S sequences × L tokens."""
    T = S * L
    c = Cost()
    elementwise(c, T * HIDDEN, reads=3)  # embeddings + layer norm
    for _ in range(LAYERS):
        gemm(c, T, HIDDEN, 3 * HIDDEN)
        c.add(4 * S * L * L * HIDDEN, BYTES * 4 * T * HIDDEN)  # fused attention
        gemm(c, T, HIDDEN, HIDDEN)
        elementwise(c, T * HIDDEN, reads=2)  # residual + layer norm
        gemm(c, T, HIDDEN, INTERMEDIATE)
        elementwise(c, T * INTERMEDIATE)  # GELU
        gemm(c, T, INTERMEDIATE, HIDDEN)
        elementwise(c, T * HIDDEN, reads=2)
    return c


def segments(slots: list[int], lengths: list[int]) -> dict[int, int]:
    """Real (non-padding) rows per adapter slot; -1 (base) left out."""
    rows: dict[int, int] = {}
    for slot, n in zip(slots, lengths, strict=True):
        if slot >= 0:
            rows[slot] = rows.get(slot, 0) + n
    return rows


def adapter_site(T: int, per_slot: dict[int, int], d_in: int, d_out: int) -> tuple[Cost, Cost]:
    """(executed, minimum) cost of the adapter update at one site: the shrink and expand kernels
    as they run, and the least work and traffic any implementation on top of the base GEMM
    needs (each adapter row's x·Aᵀ and h·Bᵀ once, each used adapter's weights read once)."""
    R = EXPERTS * RANK
    t = tiles.pick(sum(per_slot.values()) / len(per_slot), R, torch.bfloat16, aligned=True)
    block_rows = sum(math.ceil(n / t.block_m) * t.block_m for n in per_slot.values())
    real = sum(per_slot.values())
    weights = len(per_slot) * R * (d_in + d_out) * BYTES
    run = Cost()
    run.add(2 * block_rows * t.block_r * d_in,  # shrink: x rows, A, gates in; h (fp32) out
            real * d_in * BYTES + len(per_slot) * R * d_in * BYTES + real * R * BYTES
            + real * R * 4)
    run.add(2 * block_rows * t.block_r * d_out,  # expand: h, B in; y rows read and written
            real * R * 4 + len(per_slot) * R * d_out * BYTES + 2 * real * d_out * BYTES)
    least = Cost().add(2 * real * R * (d_in + d_out), weights + real * R * BYTES)
    return run, least


def micro_batch(lengths: list[int], adapters: int) -> dict[str, float]:
    """Modelled figures of one micro-batch whose sequences go round-robin to `adapters`."""
    S, L = len(lengths), max(lengths)
    T = S * L
    slots = [i % adapters if adapters else -1 for i in range(S)]
    per_slot = segments(slots, lengths)
    base = encoder_forward(S, L)
    extra = Cost()
    one_pass = Cost()  # the extra of a kernel that reads x once and writes y once
    worst_flops = 1.0
    for d_in, d_out in SITES.values():
        base_site = gemm(Cost(), T, d_in, d_out)
        if not per_slot:
            continue
        run, least = adapter_site(T, per_slot, d_in, d_out)
        for _ in range(LAYERS):
            extra.add(run.flops, run.bytes)
            one_pass.add(least.flops, least.bytes)
        worst_flops = max(worst_flops, (base_site.flops + run.flops)
                          / (base_site.flops + least.flops))
    return {
        "sequences": S, "padded_tokens": T, "real_tokens": sum(lengths), "adapters": adapters,
        "forward_gflop": base.flops / 1e9, "forward_mb": base.bytes / 1e6,
        "adapter_gflop": extra.flops / 1e9, "adapter_mb": extra.bytes / 1e6,
        "flops_ratio": worst_flops,
        "modelled_forward_ratio": (base.seconds + extra.seconds) / base.seconds,
        "modelled_one_pass_ratio": (base.seconds + one_pass.seconds) / base.seconds,
        "base_us": base.seconds * 1e6, "adapter_us": extra.seconds * 1e6,
        "one_pass_us": one_pass.seconds * 1e6,
    }
