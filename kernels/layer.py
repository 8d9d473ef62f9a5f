"""`BEMLinear`: a frozen base `nn.Linear` plus a stack of BEM adapters and their routers.

One forward serves a batch whose sequences use different adapters (or none): each sequence
names a slot in the stack (-1 = base only); routing runs with each adapter's own router and
settings, and one `bem_linear` call computes every row.

Routing is batched over slots: the slots that share experts, rank and routing settings (a
`RouterGroup`, usually every adapter of a deployment) are routed together, each sequence
against its own slot's router, so that a site launches the same few operations for one adapter
as for 32. Routed one slot at a time, the rest of a forward (the adapter update left out) made
855 torch operations with one adapter and 5,811 with 8; batched, 909 with 1, 8 or 32. On a GPU
each is a launch, and an H200 spent a forward with 8 adapters waiting for them.

Adapters may differ in experts E and rank r: the stack is padded to the largest E·r (rounded
up to a multiple of 16) with zero components (zero A rows, zero B columns, zero gates), which
contribute nothing. Each adapter's scale α/r is folded into its B when the stack is built, so
the kernel runs with scale 1.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from kernels import dispatch
from kernels.kron import Factors, kron_apply, kron_shapes
from kernels.layout import RowLayout, to_device


@dataclasses.dataclass(frozen=True)
class Routing:
    chunk: int = 32
    tau: float = 0.0
    causal: bool = False
    top_k: int = 1


@dataclasses.dataclass
class SiteAdapter:
    """One adapter's weights at one linear site.

    A (E·r, d_in); B (d_out, E·r); router (E, d_in); film_gamma, film_beta (d_out,) or None.
    A Kronecker-factored adapter (`kron`: (K₁, K₂) or (K₁, K₂ᴮ, K₂ᴬ), `kernels.kron`) has no
    experts: A and B are empty (rank 0), router None, and ΔW = scale · (K₁ ⊗ K₂)."""

    A: torch.Tensor
    B: torch.Tensor
    router: torch.Tensor | None
    experts: int
    rank: int
    scale: float
    routing: Routing = Routing()
    film_gamma: torch.Tensor | None = None
    film_beta: torch.Tensor | None = None
    kron: Factors | None = None


@dataclasses.dataclass(frozen=True)
class RouterGroup:
    """Stack slots routed alike (same experts, rank and `Routing`): their routers stacked as
    (len(slots)·E, d_in) fp32 rows, slot by slot, so one product gives every slot's logits."""

    slots: tuple[int, ...]
    routers: torch.Tensor
    experts: int
    rank: int
    routing: Routing


@dataclasses.dataclass(frozen=True)
class GroupRows:
    """The sequences of one forward that a `RouterGroup` routes: `rows` (n,) their indices,
    slot by slot in the group's order; `which` (n,) each one's position in the group's slots;
    `spans` (slot, start, end) on the host, where each slot's sequences lie in `rows`."""

    rows: torch.Tensor
    which: torch.Tensor
    spans: tuple[tuple[int, int, int], ...]


@dataclasses.dataclass
class BEMContext:
    """Per-forward inputs every BEM site shares, built on the host by `plan` so that no site
    reads anything back from the device.

    seq_slots (S,) long: each sequence's adapter slot, -1 = base only; mask (S, L) bool: real
    tokens; rows_by_slot: each used slot's sequence indices; token_slots (S·L,): each token's
    slot, -1 for padding and base-only rows; seq_of_token (S·L,): each token's sequence;
    layout: the kernels' row layout; rank_mask (S, R_max) or None: each sequence's
    dynamic-rank mask (`budget_mask`); usage: when given, each site adds to each slot's
    (rows, E) counts of every sequence's real tokens by top-1 expert (on the device)."""

    seq_slots: torch.Tensor
    mask: torch.Tensor
    rows_by_slot: dict[int, torch.Tensor]
    token_slots: torch.Tensor
    seq_of_token: torch.Tensor
    layout: RowLayout
    rank_mask: torch.Tensor | None = None
    usage: dict[int, torch.Tensor] | None = None
    host_slots: tuple[int, ...] = ()
    _group_rows: dict[tuple[int, ...], GroupRows | None] = dataclasses.field(
        default_factory=dict, repr=False)

    @classmethod
    def plan(cls, seq_slots: list[int], mask: torch.Tensor, device: torch.device, *,
             rank_mask: torch.Tensor | None = None,
             usage: dict[int, torch.Tensor] | None = None) -> BEMContext:
        """The context of one forward from each sequence's slot, the host's (S, L) mask and,
        for rank budgets, the host's (S, R_max) rank mask."""
        if mask.device.type != "cpu":
            raise ValueError("BEMContext.plan needs the mask on the host")
        S, L = mask.shape
        if len(seq_slots) != S:
            raise ValueError(f"{len(seq_slots)} adapter slots for {S} sequences")
        slots = torch.tensor(seq_slots, dtype=torch.long)
        keep = mask.bool()
        token_slots = torch.where(keep, slots[:, None], -1).reshape(-1).to(torch.int32)
        rows = {s: to_device(torch.tensor([i for i, v in enumerate(seq_slots) if v == s]), device)
                for s in sorted(set(seq_slots)) if s >= 0}
        return cls(
            seq_slots=to_device(slots, device), mask=to_device(keep, device), rows_by_slot=rows,
            token_slots=to_device(token_slots, device),
            seq_of_token=to_device(torch.arange(S, dtype=torch.int32).repeat_interleave(L),
                                   device),
            layout=RowLayout(token_slots, device),
            rank_mask=None if rank_mask is None else to_device(rank_mask, device), usage=usage,
            host_slots=tuple(seq_slots))

    @property
    def any_adapter(self) -> bool:
        return bool(self.rows_by_slot)

    def group_rows(self, slots: tuple[int, ...]) -> GroupRows | None:
        """The sequences of these slots (a `RouterGroup`'s), None when none is in this
        forward; built on the host once per forward and group, shared by every site."""
        if slots not in self._group_rows:
            rows: list[int] = []
            which: list[int] = []
            spans = []
            for j, slot in enumerate(slots):
                seqs = [i for i, s in enumerate(self.host_slots) if s == slot]
                if seqs:
                    spans.append((slot, len(rows), len(rows) + len(seqs)))
                    rows += seqs
                    which += [j] * len(seqs)
            device = self.seq_slots.device
            self._group_rows[slots] = GroupRows(
                to_device(torch.tensor(rows), device), to_device(torch.tensor(which), device),
                tuple(spans)) if rows else None
        return self._group_rows[slots]


class BEMLinear(nn.Module):
    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.slots: list[SiteAdapter] = []
        self._A: torch.Tensor | None = None
        self._B: torch.Tensor | None = None
        self._gamma: torch.Tensor | None = None
        self._beta: torch.Tensor | None = None
        self._groups: list[RouterGroup] = []

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def set_adapters(self, slots: list[SiteAdapter]) -> None:
        """Install the stack: slot i of every context refers to `slots[i]`."""
        w = self.base.weight
        self.slots = slots
        self._groups = router_groups(slots, w.device)
        if not slots:
            self._A = self._B = self._gamma = self._beta = None
            return
        # Padded to a multiple of 16: the kernels' aligned (vectorised) launch needs it.
        width = stack_width([(s.experts, s.rank) for s in slots])
        A = torch.zeros((len(slots), width, self.in_features), dtype=w.dtype, device=w.device)
        B = torch.zeros((len(slots), self.out_features, width), dtype=w.dtype, device=w.device)
        for i, s in enumerate(slots):
            _check_shapes(s, self.in_features, self.out_features)
            R = s.experts * s.rank
            A[i, :R] = s.A.to(A)
            B[i, :, :R] = (s.B.float() * s.scale).to(B)
        self._A, self._B = A, B
        if any(s.film_gamma is not None for s in slots):
            ones = torch.ones(self.out_features, dtype=w.dtype, device=w.device)
            zeros = torch.zeros_like(ones)
            # An extra last row is the identity FiLM that base-only sequences use.
            self._gamma = torch.stack([*(ones if s.film_gamma is None else s.film_gamma.to(ones)
                                         for s in slots), ones])
            self._beta = torch.stack([*(zeros if s.film_beta is None else s.film_beta.to(zeros)
                                        for s in slots), zeros])
        else:
            self._gamma = self._beta = None

    def forward(self, x: torch.Tensor, ctx: BEMContext | None = None) -> torch.Tensor:
        """x (S, L, d_in) → (S, L, d_out)."""
        if ctx is None or self._A is None or not ctx.any_adapter:
            return self.base(x)
        S, L, _ = x.shape
        gates = self.gates(x, ctx)
        film: dict[str, torch.Tensor] = {}
        if self._gamma is not None:
            seq_film = torch.where(ctx.seq_slots >= 0, ctx.seq_slots, len(self.slots))
            film = {"film_gamma": self._gamma[seq_film], "film_beta": self._beta[seq_film],
                    "seq_ids": ctx.seq_of_token}
        y = dispatch.bem_linear(
            x.reshape(S * L, -1), self.base.weight, self.base.bias, self._A, self._B,
            ctx.token_slots, gates.reshape(S * L, -1), 1.0, layout=ctx.layout, **film,
        ).view(S, L, -1)
        for slot, rows in ctx.rows_by_slot.items():  # Kronecker adapters: their own update
            site = self.slots[slot]
            if site.kron is not None:
                delta = kron_apply(x[rows].reshape(-1, self.in_features), site.kron, site.scale)
                keep = ctx.mask[rows][..., None].to(delta.dtype)  # padding gets no update
                y[rows] = y[rows] + delta.view(len(rows), L, -1) * keep
        return y

    def gates(self, x: torch.Tensor, ctx: BEMContext) -> torch.Tensor:
        """Per-token gates c (S, L, R_max): chunk-sticky routing, one `RouterGroup` at a time,
        each sequence by its own slot's router; zero on padding and on base-only sequences."""
        assert self._A is not None
        S, L, _ = x.shape
        out = torch.zeros((S, L, self._A.shape[1]), dtype=x.dtype, device=x.device)
        for group in self._groups:
            picked = ctx.group_rows(group.slots)
            if picked is None:
                continue
            n, E = picked.rows.shape[0], group.experts
            every = (x[picked.rows].float() @ group.routers.T).view(n, L, len(group.slots), E)
            logits = every.gather(2, picked.which.view(n, 1, 1, 1).expand(n, L, 1, E))[:, :, 0]
            mask = ctx.mask[picked.rows]
            r = group.routing
            g = dispatch.route_chunks(logits, mask, chunk=r.chunk, tau=r.tau, causal=r.causal,
                                      top_k=r.top_k)
            if ctx.usage is not None:  # real tokens by top-1 expert, per sequence
                top = g.argmax(-1, keepdim=True)  # (n, L, 1)
                counts = torch.zeros(g.shape, dtype=torch.long, device=g.device).scatter_(
                    -1, top, mask.long()[..., None]).sum(1)  # (n, E)
                for slot, start, end in picked.spans:
                    part = counts[start:end]
                    ctx.usage[slot] = ctx.usage[slot] + part if slot in ctx.usage else part
            c = dispatch.expand_gates(g, group.rank).to(x.dtype)
            out[picked.rows, :, : c.shape[-1]] = c
        if ctx.rank_mask is not None:
            out = out * ctx.rank_mask[:, None, : out.shape[-1]].to(out)
        return out


def router_groups(slots: list[SiteAdapter], device: torch.device) -> list[RouterGroup]:
    """The stack's slots grouped by (experts, rank, routing), routers stacked per group;
    Kronecker slots (no router) are in none."""
    alike: dict[tuple[int, int, Routing], list[int]] = {}
    for i, s in enumerate(slots):
        if s.router is not None:
            alike.setdefault((s.experts, s.rank, s.routing), []).append(i)
    return [RouterGroup(tuple(members),
                        torch.cat([slots[i].router.float() for i in members]).to(device),
                        E, r, routing)
            for (E, r, routing), members in alike.items()]


def stack_width(shapes: list[tuple[int, int]]) -> int:
    """Rank components of a stack of adapters of (experts, rank) `shapes`, as `set_adapters`
    pads it: the largest E·r rounded up to a multiple of 16."""
    return max(16, -(-max(E * r for E, r in shapes) // 16) * 16)


def budget_mask(seq_slots: list[int], budgets: list[int | None],
                shapes: list[tuple[int, int]]) -> torch.Tensor | None:
    """(S, R_max) host mask for rank budgets: sequence i keeps, in each expert of its slot's
    adapter, the first `budgets[i]` rank components (all with None or a base-only row); None
    when no sequence has a budget. `shapes`: each slot's (experts, rank)."""
    if all(b is None for b in budgets):
        return None
    mask = torch.ones(len(seq_slots), stack_width(shapes))
    for i, (slot, budget) in enumerate(zip(seq_slots, budgets, strict=True)):
        if slot >= 0 and budget is not None:
            E, r = shapes[slot]
            mask[i, : E * r] = (torch.arange(r) < budget).float().repeat(E)
    return mask


def _check_shapes(s: SiteAdapter, d_in: int, d_out: int) -> None:
    R = s.experts * s.rank
    expected = {"A": (R, d_in), "B": (d_out, R)}
    if s.kron is not None:
        if s.film_gamma is not None or kron_shapes(s.kron) != (d_out, d_in):
            raise ValueError(f"Kronecker factors give ΔW {kron_shapes(s.kron)}, this site needs "
                             f"{(d_out, d_in)}, and take no FiLM")
    else:
        expected["router"] = (s.experts, d_in)
    for name, shape in expected.items():
        got = tuple(getattr(s, name).shape)
        if got != shape:
            raise ValueError(f"adapter {name} has shape {got}; this site needs {shape}")
