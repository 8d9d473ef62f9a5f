"""Running one micro-batch: claim its lease, embed its items, write its shards, complete it once.

A model error is isolated by bisection: the batch is split in halves until the failing item is
alone, so it alone lands in the error file and every other item completes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator, Sequence

import orjson
import torch
from celery.exceptions import SoftTimeLimitExceeded

from ops import metrics
from ops.blobs import BlobsUnavailable
from ops.keys import request_id, shard_key
from ops.lifecycle import finalize
from ops.store import ClaimOutcome, StoreUnavailable
from schemas.canary import Arm
from schemas.microbatch import Item, MicroBatch
from workers import outcomes
from workers.runtime import Runtime

log = logging.getLogger(__name__)

Embed = Callable[[list[str], list[str | None]], torch.Tensor]
Result = tuple[Item, torch.Tensor | str]


def run(rt: Runtime, job_id: str, seq: int) -> str:
    cfg = rt.settings
    claim = rt.store.claim(job_id, seq, rt.name, cfg.lease_seconds, cfg.max_deliveries)
    metrics.MICRO_BATCHES.labels(claim.outcome.value).inc()
    if claim.outcome in (ClaimOutcome.DONE, ClaimOutcome.BUSY):
        return claim.outcome.value
    if claim.outcome == ClaimOutcome.SKIP:
        finalize(rt.store, rt.blobs, job_id)
        return claim.outcome.value
    mb = claim.micro_batch
    assert mb is not None
    if claim.outcome == ClaimOutcome.DEAD:
        reason = (f"micro-batch failed {mb.deliveries - 1} deliveries "
                  f"(limit {cfg.max_deliveries})")
        first = _write_and_complete(rt, mb, [(item, reason) for item in mb.items], None)
    else:
        metrics.PADDING_EFFICIENCY.observe(mb.real_tokens / mb.padded_tokens)
        with _lease_kept(rt, mb):
            results, extras = _embed_batch(rt, mb.items)
        first = _write_and_complete(rt, mb, results, extras)
        rt.release_memory()
    if first:
        finalize(rt.store, rt.blobs, job_id)
    return claim.outcome.value


@dataclasses.dataclass
class Extras:
    """What a forward yields besides the items' vectors: shadow stable vectors by custom_id,
    the paired latency probe (canary seconds, stable seconds), and expert usage by adapter."""

    shadows: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    probe: tuple[float, float] | None = None
    usage: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


def _embed_batch(rt: Runtime, items: list[Item]) -> tuple[list[Result], Extras]:
    """Embed the items (pooled vectors), and in the same forward the shadow stable rows of
    canary items sampled for agreement."""
    extras = Extras()
    shadow_items = [item.model_copy(update={"adapter": item.shadow, "arm": None,
                                            "canary_id": None, "shadow": None})
                    for item in items if item.shadow is not None]

    def embed(texts: list[str], adapters: list[str | None]) -> torch.Tensor:
        return rt.embed(texts, adapters, normalize=False, usage=extras.usage)

    results = embed_items(embed, [*items, *shadow_items])
    extras.probe = _latency_probe(rt, items)
    for item, value in results[len(items):]:
        if not isinstance(value, str):
            checked = outcomes.check(value, rt.settings)
            if checked.vectors is not None:
                extras.shadows[item.custom_id] = checked.vectors
    return results[:len(items)], extras


def embed_items(embed: Embed, items: Sequence[Item]) -> list[Result]:
    """Embed all items' texts in one call; on a model error, bisect to isolate the culprit."""
    try:
        vectors = embed([t for item in items for t in item.texts],
                        [item.adapter for item in items for _ in item.texts])
    except (SoftTimeLimitExceeded, StoreUnavailable, BlobsUnavailable):
        raise  # not the items' fault: the whole micro-batch is retried
    except Exception as exc:
        if len(items) == 1:
            log.warning("item %s failed: %r", items[0].custom_id, exc)
            return [(items[0], f"{type(exc).__name__}: {exc}")]
        mid = len(items) // 2
        return embed_items(embed, items[:mid]) + embed_items(embed, items[mid:])
    out: list[Result] = []
    row = 0
    for item in items:
        out.append((item, vectors[row:row + len(item.texts)]))
        row += len(item.texts)
    return out


def _latency_probe(rt: Runtime, items: list[Item]) -> tuple[float, float] | None:
    """(canary, stable) forward seconds of each arm's adapter alone on the same rows: the
    faster of two runs each, in the orders stable-canary and canary-stable. The arms share the
    micro-batch's forward (one kernel serves both), so only forwards of their own tell their
    costs apart; the same rows, back to back, make the pair's ratio independent of the rows'
    lengths, which differ from one micro-batch to the next; and since interference from other
    work only ever adds time, the faster run of each is the closer to the adapter's own cost."""
    rows = rt.settings.canary_probe_rows
    names = {item.arm: item.adapter for item in items if item.arm is not None}
    if not rows or set(names) != set(Arm):
        return None
    texts = [item.texts[0] for item in items if item.canary_id is not None][:rows]
    seconds = dict.fromkeys(Arm, float("inf"))
    try:
        for order in ((Arm.STABLE, Arm.CANARY), (Arm.CANARY, Arm.STABLE)):
            for arm in order:
                timings: list[float] = []
                rt.embed(texts, [names[arm]] * len(texts), timings=timings)
                seconds[arm] = min(seconds[arm], sum(timings))
    except Exception as exc:  # the items themselves already ran; their outcome is recorded
        log.warning("latency probe failed: %r", exc)
        return None
    return seconds[Arm.CANARY], seconds[Arm.STABLE]


def _write_and_complete(rt: Runtime, mb: MicroBatch, results: list[Result],
                        extras: Extras | None) -> bool:
    """Write the shards and complete the micro-batch once; `extras` is None for a dead one
    (its items never ran)."""
    cfg = rt.settings
    dead = extras is None
    ok_lines: list[bytes] = []
    err_lines: list[bytes] = []
    checked: list[outcomes.Checked | str] = []
    served: list[torch.Tensor] = []
    for item, value in results:
        rid = request_id(mb.job_id, item.custom_id)
        result = value if isinstance(value, str) else outcomes.check(value, cfg)
        checked.append(result)
        outcomes.record(cfg.model_name, item.adapter, result)
        if isinstance(result, str):
            code = "micro_batch_dead" if dead else "inference_error"
            err_lines.append(_error_line(rid, item, code, result))
        elif result.vectors is None:
            assert result.message is not None
            err_lines.append(_error_line(rid, item, "invalid_output", result.message))
        else:
            ok_lines.append(_output_line(rid, item, result.vectors))
            served.append(result.vectors)
    if ok_lines:
        rt.blobs.put(shard_key(mb.job_id, mb.seq, "out"), b"\n".join(ok_lines) + b"\n")
    if err_lines:
        rt.blobs.put(shard_key(mb.job_id, mb.seq, "err"), b"\n".join(err_lines) + b"\n")
    error = "; ".join(str(v) for _, v in results if isinstance(v, str))[:2000] or None
    extras = extras or Extras()
    samples = outcomes.samples(mb.items, checked, extras.shadows, extras.probe)
    features = [] if dead else outcomes.features(cfg.model_name, mb.items, served,
                                                  extras.usage, cfg.drift_embeddings_per_batch)
    return rt.store.complete(mb.job_id, mb.seq, len(ok_lines), len(err_lines), dead=dead,
                             error=error, samples=samples, features=features)


def _error_line(rid: str, item: Item, code: str, message: str) -> bytes:
    return orjson.dumps({"id": rid, "custom_id": item.custom_id, "response": None,
                         "error": {"code": code, "message": message}})


def _output_line(rid: str, item: Item, vectors: torch.Tensor) -> bytes:
    """OpenAI's embeddings response; float32 values in their shortest exact decimal form."""
    tokens = sum(item.lengths)
    data = [{"object": "embedding", "index": i, "embedding": v}
            for i, v in enumerate(vectors.numpy())]
    return orjson.dumps({
        "id": rid, "custom_id": item.custom_id,
        "response": {"status_code": 200, "request_id": rid, "body": {
            "object": "list", "data": data, "model": item.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }},
        "error": None,
    }, option=orjson.OPT_SERIALIZE_NUMPY)


@contextlib.contextmanager
def _lease_kept(rt: Runtime, mb: MicroBatch) -> Iterator[None]:
    """Renew the micro-batch's lease while it runs, so a slow batch is not taken as lost."""
    stop = threading.Event()
    period = rt.settings.lease_seconds / 3

    def renew() -> None:
        while not stop.wait(period):
            try:
                rt.store.renew_lease(mb.job_id, mb.seq, rt.name, rt.settings.lease_seconds)
            except Exception as exc:  # a missed renewal only risks a duplicate run, never a loss
                log.warning("lease renewal failed for %s/%s: %r", mb.job_id, mb.seq, exc)

    thread = threading.Thread(target=renew, name="bemq-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
