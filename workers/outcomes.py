"""What a worker records about each embedded item besides its output line: output safety
checks, per-arm canary samples (with shadow agreement), and bounded drift features."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from ops import metrics
from ops.settings import Settings
from ops.store.features import Feature
from schemas.canary import Arm, Sample
from schemas.microbatch import Item


@dataclasses.dataclass(frozen=True)
class Checked:
    """One item's unit vectors (float32 rows), or why they cannot be served."""

    vectors: np.ndarray | None
    violation: str | None = None  # "non_finite" | "norm_out_of_bounds"
    message: str | None = None


def check(values: Sequence[np.ndarray | str], cfg: Settings) -> list[Checked | str]:
    """Each item's pooled vectors normalised, or refused for non-finite values or a norm
    outside the bounds; a string (the model failed on the item) passes through. The tests run
    once over every row of the micro-batch, not once per item, in numpy (whose views and
    reductions on a few hundred small rows cost a fraction of torch's)."""
    pooled = [v for v in values if not isinstance(v, str)]
    if not pooled:
        return list(values)
    rows = np.concatenate(pooled)
    finite = np.isfinite(rows).all(axis=1)
    with np.errstate(invalid="ignore", over="ignore"):  # refused rows below; not a warning
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=np.float64))
        in_bounds = (norms >= cfg.safety_norm_min) & (norms <= cfg.safety_norm_max)
        unit = (rows / np.maximum(norms, 1e-12)[:, None]).astype(np.float32)
    ends = np.cumsum([v.shape[0] for v in pooled]).tolist()
    if finite.all() and in_bounds.all():  # the usual case: nothing to tell apart
        parts = iter(np.split(unit, ends[:-1]))
        return [value if isinstance(value, str) else Checked(next(parts)) for value in values]
    out: list[Checked | str] = []
    start = 0
    for value in values:
        if isinstance(value, str):
            out.append(value)
            continue
        end = start + value.shape[0]
        if not finite[start:end].all():
            out.append(Checked(None, "non_finite", "embedding is not finite"))
        elif not in_bounds[start:end].all():
            bad = norms[start + int(np.argmin(in_bounds[start:end]))]
            out.append(Checked(None, "norm_out_of_bounds",
                               f"pooled embedding norm {bad:.4g} outside "
                               f"[{cfg.safety_norm_min}, {cfg.safety_norm_max}]"))
        else:
            out.append(Checked(unit[start:end]))
        start = end
    return out


def served(result: Checked | str) -> bool:
    return isinstance(result, Checked) and result.vectors is not None


def record(model: str, items: Sequence[Item], results: Sequence[Checked | str]) -> None:
    """Count the items' outcomes (and safety violations): one counter update per label set,
    not per item."""
    outcomes = Counter((item.adapter or "none", "completed" if served(result) else "failed")
                       for item, result in zip(items, results, strict=True))
    violations = Counter(result.violation for result in results
                         if isinstance(result, Checked) and result.violation is not None)
    for (adapter, outcome), n in outcomes.items():
        metrics.ITEMS.labels(model, adapter, outcome).inc(n)
    for violation, n in violations.items():
        metrics.SAFETY_VIOLATIONS.labels(violation).inc(n)


def samples(items: Sequence[Item], checked: Sequence[Checked | str],
            shadows: dict[str, np.ndarray], probe: tuple[float, float] | None
            ) -> list[Sample]:
    """A canary sample for every routed item. `checked[i]` is item i's outcome (a string:
    the model failed on it); `shadows` maps custom_id to its shadow stable unit vectors;
    `probe` (canary seconds, stable seconds) goes with the first canary item."""
    out = []
    for item, result in zip(items, checked, strict=True):
        if item.canary_id is None or item.arm is None or item.canary_step is None:
            continue
        ok = served(result)
        agreement = None
        if ok and item.custom_id in shadows:
            assert isinstance(result, Checked) and result.vectors is not None
            agreement = float((result.vectors * shadows[item.custom_id]).sum(axis=1).mean())
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


# Sequences whose expert usage one micro-batch records per adapter, at most (drawn at random;
# the row's weight says how many each stands for).
USAGE_SEQUENCES_PER_BATCH = 64


def features(model: str, job_id: str, items: Sequence[Item],
             served: Sequence[tuple[str, np.ndarray]], usage: dict[str, list[torch.Tensor]],
             embedding_rate: float) -> list[Feature]:
    """This micro-batch's drift sample, counted once its job completes: every text's token
    length; per serving adapter ("" = base), each output vector with probability
    `embedding_rate` (independent draws, so a window's vectors are independent whatever the
    micro-batches; a row's weight is its vector count); and per adapter, the top-1 expert
    counts of up to `USAGE_SEQUENCES_PER_BATCH` sequences drawn at random (one row of E counts
    each: the sequence, not the token, is the unit the usage test treats as independent,
    weighted by how many sequences each stands for)."""
    out = [Feature(model, "lengths", [n for item in items for n in item.lengths],
                   job_id=job_id)]
    by_adapter: dict[str, list[np.ndarray]] = {}
    for adapter, vectors in served:
        by_adapter.setdefault(adapter, []).append(vectors)
    for adapter, parts in sorted(by_adapter.items()):
        rows = np.concatenate(parts)
        kept = rows[np.random.default_rng().random(len(rows)) < embedding_rate]
        if len(kept):
            out.append(Feature(model, "embeddings", kept.round(5).tolist(), adapter=adapter,
                               weight=float(len(kept)), job_id=job_id))
    for adapter, counts in sorted(usage.items()):
        per_sequence = torch.cat(counts).numpy()
        if len(per_sequence):
            picked = random.sample(range(len(per_sequence)),
                                   min(USAGE_SEQUENCES_PER_BATCH, len(per_sequence)))
            out.append(Feature(model, "experts", per_sequence[picked].tolist(), adapter=adapter,
                               weight=len(per_sequence) / len(picked), job_id=job_id))
    return out
