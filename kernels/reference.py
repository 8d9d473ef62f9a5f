"""The BEM operator's specification in plain torch. Every fast kernel has the same name and
signature and must agree with these functions within `kernels.tolerances.TOLERANCES`.

Shapes use T = tokens (rows of the flattened batch), S = sequences, n = adapters in the stack,
E = experts, r = rank per expert, R = E·r, d_in / d_out = the linear site's sizes.
All arithmetic is fp32; results come back in the input's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.layout import RowLayout


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
    """y = x Wᵀ + b + s · ((x A[id]ᵀ) ⊙ c) B[id]ᵀ, then y ← γ[seq] ⊙ y + β[seq] if FiLM is given.

    x (T, d_in); weight (d_out, d_in); bias (d_out,) or None; A (n, R, d_in); B (n, d_out, R);
    adapter_ids (T,) int in [-1, n), -1 = base only; gates (T, R); scale s = α / r;
    film_gamma, film_beta (S, d_out); seq_ids (T,) int in [0, S), needed with FiLM;
    layout: the rows' host-side layout (`kernels.layout`), which fast kernels use to launch
    without reading the ids back; the reference has no use for it.
    """
    y = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    ids = adapter_ids.long()
    for a in torch.unique(ids[ids >= 0]).tolist():  # one segment of rows per adapter
        rows = (ids == a).nonzero().squeeze(1)
        h = (x[rows].float() @ A[a].float().T) * gates[rows].float()
        y[rows] += scale * (h @ B[a].float().T)
    if film_gamma is not None:
        y = film(y, film_gamma, film_beta, seq_ids)
    return y.to(x.dtype)


def kron_delta(x: torch.Tensor, factors: tuple[torch.Tensor, ...], scale: float) -> torch.Tensor:
    """s · x ΔWᵀ with ΔW = K₁ ⊗ K₂ formed explicitly (K₂ = K₂ᴮ K₂ᴬ when factored), in fp32,
    back in x's dtype. x (n, d_in); K₁ (a, b); K₂ (c, d) or K₂ᴮ (c, k), K₂ᴬ (k, d); d_out = a·c,
    d_in = b·d. The specification `kernels.kron.kron_apply` must match."""
    f = [t.float() for t in factors]
    K2 = f[1] if len(f) == 2 else f[1] @ f[2]
    return (scale * (x.float() @ torch.kron(f[0], K2).T)).to(x.dtype)


def film(y: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None,
         seq_ids: torch.Tensor | None) -> torch.Tensor:
    """y ← γ[seq] ⊙ y + β[seq].  y (T, d_out); gamma, beta (S, d_out); seq_ids (T,)."""
    if seq_ids is None:
        raise ValueError("FiLM needs seq_ids to pick each row's γ and β")
    s = seq_ids.long()
    out = y.float() * gamma[s].float()
    if beta is not None:
        out = out + beta[s].float()
    return out.to(y.dtype)


def route_chunks(
    logits: torch.Tensor,
    mask: torch.Tensor,
    chunk: int = 32,
    tau: float = 0.0,
    causal: bool = False,
    top_k: int = 1,
) -> torch.Tensor:
    """Chunk-sticky expert gates g (S, L, E) from per-token router logits.

    logits (S, L, E); mask (S, L), 1 for real tokens, 0 for padding. Each chunk of `chunk`
    tokens takes the mean of its real tokens' logits. Top-1: the chunk's expert is the argmax,
    except that the previous chunk's expert is kept unless the new best leads it by more than
    `tau` (hysteresis); gates are one-hot. Top-k (k > 1): softmax over the chunk's k best mean
    logits, zero elsewhere (no hysteresis). Causal: chunk k is decided from chunk k-1's mean;
    chunk 0 has no evidence and gets uniform gates 1/E. Padding tokens get zero gates and do not
    enter any mean; a chunk without real tokens keeps the previous decision.
    """
    S, L, E = logits.shape
    keep = mask.bool()
    n_chunks = (L + chunk - 1) // chunk
    pad = n_chunks * chunk - L
    lg = F.pad(logits.float() * keep[..., None], (0, 0, 0, pad)).view(S, n_chunks, chunk, E)
    counts = F.pad(keep.float(), (0, pad)).view(S, n_chunks, chunk).sum(-1)
    means = lg.sum(2) / counts.clamp(min=1)[..., None]  # (S, n_chunks, E)
    has_tokens = counts > 0
    decide_from = means
    evidence = has_tokens
    if causal:
        decide_from = torch.cat([torch.zeros_like(means[:, :1]), means[:, :-1]], 1)
        evidence = torch.cat([torch.zeros_like(has_tokens[:, :1]), has_tokens[:, :-1]], 1)

    chunk_gates = torch.full((S, n_chunks, E), 1.0 / E, device=logits.device)
    if top_k > 1:
        k = min(top_k, E)
        top = decide_from.topk(k, dim=-1)
        soft = torch.zeros_like(decide_from).scatter(-1, top.indices, top.values.softmax(-1))
        chunk_gates = torch.where(evidence[..., None], soft, chunk_gates)
        if not causal:
            chunk_gates = _carry_forward(chunk_gates, evidence)
    else:
        # Sequential over chunks (hysteresis needs the previous choice), vectorised over S.
        prev = torch.full((S,), -1, dtype=torch.long, device=logits.device)
        for c in range(n_chunks):
            scores = decide_from[:, c]
            best = scores.argmax(-1)
            lead = scores.gather(1, best[:, None]) - scores.gather(1, prev.clamp(min=0)[:, None])
            choice = torch.where((prev >= 0) & (lead.squeeze(1) <= tau), prev, best)
            choice = torch.where(evidence[:, c], choice, prev)
            one_hot = (choice[:, None] == torch.arange(E, device=choice.device)).float()
            chunk_gates[:, c] = torch.where((choice >= 0)[:, None], one_hot, chunk_gates[:, c])
            prev = choice
    gates = _repeat_last_but_one(chunk_gates, chunk)[:, :L]
    return gates * keep[..., None]


def _carry_forward(chunk_gates: torch.Tensor, evidence: torch.Tensor) -> torch.Tensor:
    out = chunk_gates.clone()
    for c in range(1, out.shape[1]):
        out[:, c] = torch.where(evidence[:, c, None], out[:, c], out[:, c - 1])
    return out


def expand_gates(gates: torch.Tensor, rank: int,
                 rank_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-expert gates (…, E) → per-rank-component gates c (…, E·r): each expert's gate
    repeated r times, times an optional dynamic-rank mask (…, E·r) or (E·r,)."""
    c = gates[..., None].expand(*gates.shape, rank).reshape(*gates.shape[:-1], -1)
    return c if rank_mask is None else c * rank_mask


def _repeat_last_but_one(t: torch.Tensor, times: int) -> torch.Tensor:
    """(S, n, E) → (S, n·times, E), each of the n rows repeated `times` times: an expand, which
    (unlike `repeat_interleave`) never reads the device back."""
    S, n, E = t.shape
    return t[:, :, None].expand(S, n, times, E).reshape(S, n * times, E)
