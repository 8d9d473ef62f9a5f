"""Chunk-sticky routing: hysteresis, causal mode, padding, top-k."""

from __future__ import annotations

import torch

from kernels.reference import expand_gates, route_chunks


def chunk_logits(means: list[list[float]], chunk: int) -> torch.Tensor:
    """One sequence whose chunks have exactly these mean logits."""
    return torch.tensor(means).repeat_interleave(chunk, dim=0)[None]


def experts_of(gates: torch.Tensor, chunk: int) -> list[int]:
    return gates[0, ::chunk].argmax(-1).tolist()


def test_hysteresis_keeps_the_expert_unless_the_lead_exceeds_tau() -> None:
    """A new best leading by ≤ τ does not switch; leading by more does."""
    means = [[1.0, 0.0], [1.0, 1.2], [0.0, 2.0], [1.05, 1.0]]
    logits = chunk_logits(means, 4)
    mask = torch.ones(logits.shape[:2])
    assert experts_of(route_chunks(logits, mask, chunk=4, tau=0.0), 4) == [0, 1, 1, 0]
    assert experts_of(route_chunks(logits, mask, chunk=4, tau=0.5), 4) == [0, 0, 1, 1]


def test_gates_are_constant_within_a_chunk_and_one_hot() -> None:
    """Top-1 gates are one-hot and identical for every token of a chunk."""
    logits = torch.randn(3, 50, 4, generator=torch.Generator().manual_seed(1))
    gates = route_chunks(logits, torch.ones(3, 50), chunk=8)
    assert torch.equal(gates.sum(-1), torch.ones(3, 50))
    for start in range(0, 50, 8):
        block = gates[:, start:start + 8]
        assert torch.equal(block, block[:, :1].expand_as(block))


def test_causal_mode_decides_from_the_previous_chunk() -> None:
    """Causal: chunk 0 is uniform, chunk k follows chunk k-1's argmax."""
    logits = chunk_logits([[0.0, 3.0], [3.0, 0.0], [0.0, 3.0]], 4)
    gates = route_chunks(logits, torch.ones(1, 12), chunk=4, causal=True)
    assert torch.allclose(gates[0, 0], torch.tensor([0.5, 0.5]))
    assert experts_of(gates[:, 4:], 4) == [1, 0]


def test_padding_is_not_routed_and_does_not_sway_the_mean() -> None:
    """Padding tokens get zero gates; huge logits on padding change nothing else."""
    logits = chunk_logits([[1.0, 0.0], [1.0, 0.0]], 4)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]])
    poisoned = logits.clone()
    poisoned[0, 6:, 1] = 1e6
    gates = route_chunks(poisoned, mask, chunk=4)
    assert torch.equal(gates[0, 6:], torch.zeros(2, 2))
    assert torch.equal(gates, route_chunks(logits, mask, chunk=4))
    assert experts_of(gates, 4) == [0, 0]


def test_top_k_softmax_over_the_best_experts() -> None:
    """top_k=2 gives a softmax over the two best chunk means and zero elsewhere."""
    logits = chunk_logits([[2.0, 1.0, -5.0]], 4)
    gates = route_chunks(logits, torch.ones(1, 4), chunk=4, top_k=2)[0, 0]
    expected = torch.softmax(torch.tensor([2.0, 1.0]), 0)
    assert torch.allclose(gates, torch.tensor([expected[0], expected[1], 0.0]))


def test_expand_gates_repeats_per_rank_and_applies_the_mask() -> None:
    """Expert gates repeat r times; the dynamic-rank mask zeroes components."""
    gates = torch.tensor([[0.0, 1.0]])
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert expand_gates(gates, 2).tolist() == [[0.0, 0.0, 1.0, 1.0]]
    assert expand_gates(gates, 2, mask).tolist() == [[0.0, 0.0, 1.0, 0.0]]
