"""Running one micro-batch: claim its lease, embed its items, write its shards, complete it once.

A model error is isolated by bisection: the batch is split in halves until the failing item is
alone, so it alone lands in the error file and every other item completes.
"""

from __future__ import annotations

import contextlib
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
from schemas.microbatch import Item, MicroBatch
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
        results: list[Result] = [(item, reason) for item in mb.items]
        first = _write_and_complete(rt, mb, results, dead=True)
    else:
        metrics.PADDING_EFFICIENCY.observe(mb.real_tokens / mb.padded_tokens)
        with _lease_kept(rt, mb):
            results = embed_items(rt.embed, mb.items)
        first = _write_and_complete(rt, mb, results, dead=False)
        rt.release_memory()
    if first:
        finalize(rt.store, rt.blobs, job_id)
    return claim.outcome.value


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


def _write_and_complete(rt: Runtime, mb: MicroBatch, results: list[Result], *, dead: bool) -> bool:
    ok_lines: list[bytes] = []
    err_lines: list[bytes] = []
    for item, value in results:
        rid = request_id(mb.job_id, item.custom_id)
        outcome = "failed"
        if isinstance(value, str):
            code = "micro_batch_dead" if dead else "inference_error"
            err_lines.append(_error_line(rid, item, code, value))
        elif not torch.isfinite(value).all():
            err_lines.append(_error_line(rid, item, "invalid_output", "embedding is not finite"))
        else:
            ok_lines.append(_output_line(rid, item, value))
            outcome = "completed"
        metrics.ITEMS.labels(rt.settings.model_name, item.adapter or "none", outcome).inc()
    if ok_lines:
        rt.blobs.put(shard_key(mb.job_id, mb.seq, "out"), b"\n".join(ok_lines) + b"\n")
    if err_lines:
        rt.blobs.put(shard_key(mb.job_id, mb.seq, "err"), b"\n".join(err_lines) + b"\n")
    error = "; ".join(str(v) for _, v in results if isinstance(v, str))[:2000] or None
    return rt.store.complete(mb.job_id, mb.seq, len(ok_lines), len(err_lines), dead=dead,
                             error=error)


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
