"""What a worker records about each embedded item besides its output line: output safety
checks, per-arm canary samples (with shadow agreement), and bounded drift features."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ops import metrics
from ops.settings import Settings
from ops.store.features import Feature
from schemas.canary import Arm, Sample
from schemas.microbatch import Item


@dataclasses.dataclass(frozen=True)
class Checked:
    """One item's unit vectors, or why they cannot be served."""

    vectors: torch.Tensor | None
    violation: str | None = None  # "non_finite" | "norm_out_of_bounds"
    message: str | None = None


def check(pooled: torch.Tensor, cfg: Settings) -> Checked:
    """Normalise pooled vectors, refusing non-finite values and norms outside the bounds."""
    if not torch.isfinite(pooled).all():
        return Checked(None, "non_finite", "embedding is not finite")
    norms = pooled.norm(dim=1)
    bad = (norms < cfg.safety_norm_min) | (norms > cfg.safety_norm_max)
    if bad.any():
        value = float(norms[bad][0])
        return Checked(None, "norm_out_of_bounds",
                       f"pooled embedding norm {value:.4g} outside "
                       f"[{cfg.safety_norm_min}, {cfg.safety_norm_max}]")
    return Checked(F.normalize(pooled, p=2, dim=1))


def record(model: str, adapter: str | None, result: Checked | str) -> bool:
    """Count one item's outcome (a string: the model failed on it); True if it is served."""
    served = isinstance(result, Checked) and result.vectors is not None
    if isinstance(result, Checked) and result.violation is not None:
        metrics.SAFETY_VIOLATIONS.labels(result.violation).inc()
    metrics.ITEMS.labels(model, adapter or "none", "completed" if served else "failed").inc()
    return served


def samples(items: Sequence[Item], checked: Sequence[Checked | str],
            shadows: dict[str, torch.Tensor], probe: tuple[float, float] | None
            ) -> list[Sample]:
    """A canary sample for every routed item. `checked[i]` is item i's outcome (a string:
    the model failed on it); `shadows` maps custom_id to its shadow stable unit vectors;
    `probe` (canary seconds, stable seconds) goes with the first canary item."""
    out = []
    for item, result in zip(items, checked, strict=True):
        if item.canary_id is None or item.arm is None or item.canary_step is None:
            continue
        ok = isinstance(result, Checked) and result.vectors is not None
        agreement = None
        if ok and item.custom_id in shadows:
            assert isinstance(result, Checked) and result.vectors is not None
            agreement = float((result.vectors * shadows[item.custom_id]).sum(dim=1).mean())
        out.append(Sample(
            canary_id=item.canary_id, step=item.canary_step, arm=item.arm, error=not ok,
            violation=result.violation if isinstance(result, Checked) else None,
            latency=probe[0] if probe and item.arm == Arm.CANARY else None,
            stable_latency=probe[1] if probe and item.arm == Arm.CANARY else None,
            agreement=agreement,
        ))
        if item.arm == Arm.CANARY:
            probe = None
    return out


def features(model: str, items: Sequence[Item], vectors: Sequence[torch.Tensor],
             usage: dict[str, torch.Tensor], per_batch: int) -> list[Feature]:
    """This micro-batch's drift sample: every text's token length, up to `per_batch` of its
    output vectors chosen at random (weighted by how many each stands for, so that a window's
    read is uniform over outputs), and each adapter's expert counts."""
    out = [Feature(model, "lengths", [n for item in items for n in item.lengths])]
    rows = [row for v in vectors for row in v]
    if rows and per_batch:
        picked = random.sample(rows, min(per_batch, len(rows)))
        out.append(Feature(model, "embeddings", [[round(x, 5) for x in r.tolist()]
                                                 for r in picked],
                           weight=len(rows) / len(picked)))
    out += [Feature(model, "experts", counts.tolist(), adapter=name)
            for name, counts in sorted(usage.items())]
    return out
