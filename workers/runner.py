"""Running one micro-batch in three stages: claim the lease of the one that goes next and decode
its token ids, embed its items, write its shards and complete it once.

A model error is isolated by bisection: the batch is split in halves until the failing item is
alone, so it alone lands in the error file and every other item completes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import numpy as np
import orjson
import torch
from celery.exceptions import SoftTimeLimitExceeded

from ops import metrics
from ops.blobs import BlobsUnavailable
from ops.canary import routing
from ops.fairshare import DispatchOrder
from ops.keys import request_id, shard_key
from ops.lifecycle import finalize
from ops.store import ClaimOutcome, Completion, StoreUnavailable
from schemas import tokens
from schemas.canary import Arm
from schemas.microbatch import Item, MicroBatch
from workers import outcomes
from workers.runtime import Runtime

log = logging.getLogger(__name__)

Embed = Callable[[list[int], list[str | None], list[int | None]], torch.Tensor]
Send = Callable[[Sequence[str], float], None]  # dispatch messages, countdown seconds
Result = tuple[Item, np.ndarray | str]


@dataclasses.dataclass
class Work:
    """A claimed micro-batch on its way through the stages: claim (decode its tokens), forward
    (fill `results` and `extras`), write (shards, completion). `rows[k]` are item k's rows in
    the micro-batch's token rows (`lengths`, `ids`). A dead micro-batch skips the forward."""

    mb: MicroBatch
    dead: bool
    rows: list[list[int]]
    lengths: np.ndarray
    ids: np.ndarray
    rank: tuple[float, int]  # its place in dispatch order (`ops.store.Claim.rank`)
    results: list[Result] | None = None
    extras: Extras | None = None

    @property
    def outcome(self) -> str:
        """What a dispatch message did, as Flower shows it: "run batch_x/3"."""
        kind = ClaimOutcome.DEAD if self.dead else ClaimOutcome.RUN
        return f"{kind.value} {self.mb.job_id}/{self.mb.seq}"


@dataclasses.dataclass
class Extras:
    """What a forward yields besides the items' vectors: shadow stable vectors by custom_id,
    the paired latency probe (canary seconds, stable seconds), and expert usage by adapter."""

    shadows: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    probe: tuple[float, float] | None = None
    usage: dict[str, list[torch.Tensor]] = dataclasses.field(default_factory=dict)


def run(rt: Runtime, token: str, send: Send) -> str:
    """Use one dispatch message: the next micro-batch through every stage in this thread
    (`workers.pipeline` runs the same stages on three threads)."""
    got = claim(rt, token, send)
    if isinstance(got, str):
        return got
    (work,) = got
    try:
        if not forward(rt, work):
            return ClaimOutcome.BUSY.value
        write(rt, work)
    finally:
        rt.leases.drop(work.mb)
    return work.outcome


def claim(rt: Runtime, token: str, send: Send, count: int = 1) -> list[Work] | str:
    """Use dispatch message `token`: take the leases of the (up to) `count` micro-batches that
    go next (kept by `rt.leases` until the caller drops each), send the messages that refill
    the window, and decode their token ids; the outcome's name when there is nothing to run."""
    cfg = rt.settings
    got = rt.store.claim_next(token, rt.name, cfg.lease_seconds, cfg.max_deliveries,
                              DispatchOrder(cfg.dispatch_order), cfg.window, count)
    metrics.DISPATCH_LOCK.observe(got.locked_seconds)
    if got.tokens:
        try:
            send(got.tokens, 0.0)
        except Exception as exc:  # kombu raises a variety of connection errors
            log.warning("could not send %d dispatch message(s) (%r); jobs.reconcile refills "
                        "the window", len(got.tokens), exc)
    if not got.claims:
        metrics.MICRO_BATCHES.labels(got.outcome.value).inc()
        return got.outcome.value
    # Every one decoded before any lease is kept renewed: should one fail, the leases of all
    # run out and jobs.reconcile puts them back in the queue.
    works = []
    for each in got.claims:
        metrics.MICRO_BATCHES.labels(each.outcome.value).inc()
        mb = each.micro_batch
        assert mb is not None
        mb.items = routing.confirm(mb.items, rt.store.canaries_by_id)  # arms of running canaries
        rows = item_rows(mb.items)
        if mb.tokens is not None:
            lengths, ids = tokens.unpack_lengths_and_ids(mb.tokens)
        else:  # stored before token ids were kept: tokenize as then
            lengths, ids = rt.tokenize([t for item in mb.items for t in item.texts])
        works.append(Work(mb, each.outcome == ClaimOutcome.DEAD, rows, lengths, ids, each.rank))
    for work in works:
        rt.leases.hold(work.mb)
    return works


def item_rows(items: Sequence[Item]) -> list[list[int]]:
    """Each item's rows among the items' texts taken in order."""
    rows, start = [], 0
    for item in items:
        rows.append(list(range(start, start + len(item.texts))))
        start += len(item.texts)
    return rows


def forward(rt: Runtime, work: Work) -> bool:
    """Embed the items (pooled vectors), and in the same forward the shadow stable rows of
    canary items sampled for agreement. Only this stage touches the device. The forward is
    counted as begun first (and the previous one as finished); False if the lease was lost
    meanwhile (another worker runs it now)."""
    if work.dead:
        return True
    mb = work.mb
    if not rt.store.begin_forward(mb.job_id, mb.seq, rt.name, rt.last_forward, work.rank[0]):
        log.warning("lease on %s/%s lost before its forward; not run here", mb.job_id, mb.seq)
        return False
    rt.last_forward = None
    metrics.PADDING_EFFICIENCY.observe(mb.real_tokens / mb.padded_tokens)
    extras = Extras()
    entries = list(zip(mb.items, work.rows, strict=True))
    entries += [(dataclasses.replace(item, adapter=item.shadow, arm=None, canary_id=None,
                                    shadow=None), rows)
                for item, rows in entries if item.shadow is not None]

    def embed(rows: list[int], adapters: list[str | None], ranks: list[int | None]
              ) -> torch.Tensor:
        lengths, ids = tokens.select_rows(work.lengths, work.ids, rows)
        return rt.embed_tokens(lengths, ids, adapters, ranks=ranks, normalize=False,
                               usage=extras.usage)

    try:
        results = embed_items(embed, entries)
    finally:  # ended, by an error that is not the items' too: only a crash leaves it unended
        rt.last_forward = (mb.job_id, mb.seq)
    extras.probe = latency_probe(rt, mb.items, work.rows, work.lengths, work.ids)
    shadows = results[len(mb.items):]
    for (item, _), checked in zip(shadows, outcomes.check([v for _, v in shadows],
                                                          rt.settings), strict=True):
        if isinstance(checked, outcomes.Checked) and checked.vectors is not None:
            extras.shadows[item.custom_id] = checked.vectors
    work.results, work.extras = results[:len(mb.items)], extras
    return True


def write(rt: Runtime, work: Work) -> None:
    """Write the shards and complete the micro-batch once; finalize the job once its last
    item is accounted for."""
    mb = work.mb
    if work.dead:
        reason = (f"micro-batch failed {mb.failed_deliveries} deliveries "
                  f"(limit {rt.settings.max_deliveries})")
        done = _write_and_complete(rt, mb, [(item, reason) for item in mb.items], None)
    else:
        assert work.results is not None
        done = _write_and_complete(rt, mb, work.results, work.extras)
        rt.release_memory()
    if done.first and done.job_done:
        finalize(rt.store, rt.blobs, mb.job_id)
    elif not done.first:
        _late(rt, mb)


def _late(rt: Runtime, mb: MicroBatch) -> None:
    """Another holder completed this micro-batch first (this worker lost its lease: cut off,
    or stalled, past it): the completion changed nothing. Its shards are the same items under
    the same keys, so before the job ends they are the ones its files are built from; once the
    job has ended (its files published, its shards cleared or about to be) they would be left
    for ever, so they go."""
    log.info("micro-batch %s/%d was completed by another worker first; this late completion "
             "changed nothing", mb.job_id, mb.seq)
    job = rt.store.get_job(mb.job_id)
    if job is None or job.status.terminal:
        for kind in ("out", "err"):
            rt.blobs.delete(shard_key(mb.job_id, mb.seq, kind))


def embed_items(embed: Embed, entries: Sequence[tuple[Item, list[int]]]) -> list[Result]:
    """Embed all items' rows in one call; on a model error, bisect to isolate the culprit.
    `entries` pairs each item with its rows (what `embed` takes, with one adapter a row); each
    item gets its rows of the result as a numpy view, or the error's text."""
    try:
        vectors = embed([r for _, rows in entries for r in rows],
                        [item.adapter for item, rows in entries for _ in rows],
                        [item.rank for item, rows in entries for _ in rows]).numpy()
    except (SoftTimeLimitExceeded, StoreUnavailable, BlobsUnavailable):
        raise  # not the items' fault: the whole micro-batch is retried
    except Exception as exc:
        if len(entries) == 1:
            log.warning("item %s failed: %r", entries[0][0].custom_id, exc)
            return [(entries[0][0], f"{type(exc).__name__}: {exc}")]
        mid = len(entries) // 2
        return embed_items(embed, entries[:mid]) + embed_items(embed, entries[mid:])
    out: list[Result] = []
    row = 0
    for item, rows in entries:
        out.append((item, vectors[row:row + len(rows)]))
        row += len(rows)
    return out


def latency_probe(rt: Runtime, items: Sequence[Item], rows: Sequence[list[int]],
                  lengths: np.ndarray, ids: np.ndarray) -> tuple[float, float] | None:
    """(canary, stable) forward seconds of each arm's adapter alone on the same rows: the
    faster of two runs each, in the orders stable-canary and canary-stable. The arms share the
    micro-batch's forward (one kernel serves both), so only forwards of their own tell their
    costs apart; the same rows, back to back, make the pair's ratio independent of the rows'
    lengths, which differ from one micro-batch to the next; and since interference from other
    work only ever adds time, the faster run of each is the closer to the adapter's own cost."""
    limit = rt.settings.canary_probe_rows
    names = {item.arm: item.adapter for item in items if item.arm is not None}
    if not limit or set(names) != set(Arm):
        return None
    picked = [own[0] for item, own in zip(items, rows, strict=True)
              if item.canary_id is not None][:limit]
    lengths, ids = tokens.select_rows(lengths, ids, picked)
    seconds = dict.fromkeys(Arm, float("inf"))
    try:
        for order in ((Arm.STABLE, Arm.CANARY), (Arm.CANARY, Arm.STABLE)):
            for arm in order:
                timings: list[float] = []
                rt.embed_tokens(lengths, ids, [names[arm]] * len(picked), timings=timings)
                seconds[arm] = min(seconds[arm], sum(timings))
    except Exception as exc:  # the items themselves already ran; their outcome is recorded
        log.warning("latency probe failed: %r", exc)
        return None
    return seconds[Arm.CANARY], seconds[Arm.STABLE]


def _write_and_complete(rt: Runtime, mb: MicroBatch, results: list[Result],
                        extras: Extras | None) -> Completion:
    """Write the shards and complete the micro-batch once; `extras` is None for a dead one
    (its items never ran)."""
    cfg = rt.settings
    dead = extras is None
    served_lines: list[tuple[str, Item, np.ndarray]] = []
    err_lines: list[bytes] = []
    served: list[tuple[str, np.ndarray]] = []
    items = [item for item, _ in results]
    checked = outcomes.check([value for _, value in results], cfg)
    outcomes.record(cfg.model_name, items, checked)
    for item, result in zip(items, checked, strict=True):
        rid = request_id(mb.job_id, item.custom_id)
        if isinstance(result, str):
            code = "micro_batch_dead" if dead else "inference_error"
            err_lines.append(_error_line(rid, item, code, result))
        elif result.vectors is None:
            assert result.message is not None
            err_lines.append(_error_line(rid, item, "invalid_output", result.message))
        else:
            served_lines.append((rid, item, result.vectors))
            served.append((item.adapter or "", result.vectors))
    ok_lines = output_lines(served_lines)
    if ok_lines:
        rt.blobs.put(shard_key(mb.job_id, mb.seq, "out"), b"\n".join(ok_lines) + b"\n")
    if err_lines:
        rt.blobs.put(shard_key(mb.job_id, mb.seq, "err"), b"\n".join(err_lines) + b"\n")
    error = "; ".join(str(v) for _, v in results if isinstance(v, str))[:2000] or None
    extras = extras or Extras()
    samples = outcomes.samples(mb.items, checked, extras.shadows, extras.probe)
    features = [] if dead else outcomes.features(cfg.model_name, mb.job_id, mb.items, served,
                                                  extras.usage, cfg.drift_embedding_rate)
    return rt.store.complete(mb.job_id, mb.seq, len(ok_lines), len(err_lines), dead=dead,
                             error=error, samples=samples, features=features)


def _error_line(rid: str, item: Item, code: str, message: str) -> bytes:
    return orjson.dumps({"id": rid, "custom_id": item.custom_id, "response": None,
                         "error": {"code": code, "message": message}})


def output_lines(served: Sequence[tuple[str, Item, np.ndarray]]) -> list[bytes]:
    """OpenAI's embeddings response line for each (request id, item, unit vectors), float32
    values in their shortest exact decimal form: the same bytes as `orjson.dumps` of the
    response dict, but every vector of the micro-batch is formatted in one call and each line
    is put together around its rows (every string in it still goes through orjson)."""
    if not served:
        return []
    matrix = np.concatenate([vectors for _, _, vectors in served])
    rows = orjson.dumps(matrix, option=orjson.OPT_SERIALIZE_NUMPY)[2:-2].split(b"],[")
    lines, start = [], 0
    for rid, item, vectors in served:
        tokens = sum(item.lengths)
        data = b",".join(b'{"object":"embedding","index":%d,"embedding":[%s]}' % (i, row)
                         for i, row in enumerate(rows[start:start + vectors.shape[0]]))
        start += vectors.shape[0]
        rid_json = orjson.dumps(rid)
        lines.append(
            b'{"id":' + rid_json + b',"custom_id":' + orjson.dumps(item.custom_id)
            + b',"response":{"status_code":200,"request_id":' + rid_json
            + b',"body":{"object":"list","data":[' + data + b'],"model":'
            + orjson.dumps(item.model)
            + b',"usage":{"prompt_tokens":%d,"total_tokens":%d}}},"error":null}'
            % (tokens, tokens))
    return lines
