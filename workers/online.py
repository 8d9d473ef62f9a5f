"""The online server in a GPU worker: a thread that pops dynamically batched `/v1/embeddings`
requests and answers each, sharing the model with batch jobs through the forward gate (online
first, batch jobs never starved). Requests under a canary rollout count in its gates as batch
items do."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import numpy as np
import torch

from ops.canary import routing
from ops.online import OnlineQueue, OnlineRequest, answer, open_queue
from schemas import tokens
from schemas.microbatch import Item
from workers import outcomes
from workers.runner import embed_items, item_rows, latency_probe
from workers.runtime import Runtime

log = logging.getLogger(__name__)


class OnlineServer:
    def __init__(self, rt: Runtime, queue: OnlineQueue | None = None) -> None:
        self.rt = rt
        self.queue = queue or open_queue(rt.settings, rt.store)
        self.stop = threading.Event()

    def start(self) -> threading.Event:
        threading.Thread(target=self._loop, name="bemq-online", daemon=True).start()
        return self.stop

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.serve_once(block=0.5)
            except Exception:  # a broker or store hiccup: say so, wait a little, go on
                log.exception("online batch failed")
                self.stop.wait(1.0)

    def serve_once(self, block: float) -> int:
        cfg = self.rt.settings
        rows = self.max_rows()
        rate = self.rt.online_rate.per_second
        # A request that cannot be answered before its deadline, its batch's forward counted,
        # is dropped unserved: the gateway has answered it 503 by then. (Never sooner than half
        # its deadline: a worker slower than that would otherwise drop everything, and never
        # measure a faster rate again.)
        batch = self.queue.pop_batch(
            max_tokens=cfg.online_max_batch_tokens, max_rows=rows,
            max_delay=cfg.online_max_queue_delay_ms / 1000, block=block,
            stale_after=max(cfg.online_timeout_seconds / 2,
                            cfg.online_timeout_seconds - (rows / rate if rate else 0.0)))
        if batch:
            began = time.monotonic()
            answers, rollout = self._embed(batch)
            self.queue.put_results(list(zip(batch, answers, strict=True)))
            self.rt.online_rate.add(len(batch), time.monotonic() - began)
            if rollout is not None:  # after the answers went out: no request waits for it
                self._sample(rollout)
        return len(batch)

    def max_rows(self) -> int:
        """Rows of the next batch: `BEMQ_ONLINE_MAX_BATCH_SIZE`, but no more than this worker
        answers in half a deadline at its measured rate. Under overload the queue would
        otherwise fill whole batches whose forward alone outlasts the deadline (a CPU forward
        of 64 rows of the real model takes about a second), so every answer would come too
        late and the work be wasted."""
        cfg = self.rt.settings
        rate = self.rt.online_rate.per_second
        if rate is None:
            return cfg.online_max_batch_size
        return max(1, min(cfg.online_max_batch_size, int(rate * cfg.online_timeout_seconds / 2)))

    def _embed(self, batch: list[OnlineRequest]) -> tuple[list[dict], Rollout | None]:
        """Answers in order; a request the model fails on is isolated by the same bisection
        as batch jobs, so it alone gets an error. Requests under a canary rollout are confirmed
        on their arm first, and come back as a `Rollout` for the canary's gates."""
        cfg = self.rt.settings
        items = routing.confirm([r.as_item() for r in batch], self.rt.store.canaries_by_id)
        if all(r.ids is not None for r in batch):  # measured by the gateway: not again here
            lengths, ids = tokens.from_rows([row for r in batch for row in r.ids or ()])
        else:
            lengths, ids = self.rt.tokenize([t for item in items for t in item.texts])
        rows = item_rows(items)

        def embed(picked: list[int], adapters: list[str | None], ranks: list[int | None]
                  ) -> torch.Tensor:
            sub_lengths, sub_ids = tokens.select_rows(lengths, ids, picked)
            return self.rt.embed_tokens(sub_lengths, sub_ids, adapters, ranks=ranks,
                                        normalize=False, online=True)

        answers = []
        results = embed_items(embed, list(zip(items, rows, strict=True)))
        checked = outcomes.check([value for _, value in results], cfg)
        outcomes.record(cfg.model_name, items, checked)
        for item, result in zip(items, checked, strict=True):
            if not outcomes.served(result):
                code, message = (("inference_error", result) if isinstance(result, str)
                                 else ("invalid_output", result.message))
                answers.append({"error": {"code": code, "message": message}})
            else:
                assert not isinstance(result, str) and result.vectors is not None
                answers.append(answer(result.vectors, sum(item.lengths)))
        routed = any(item.canary_id is not None for item in items)
        return answers, Rollout(items, rows, lengths, ids, checked) if routed else None

    def _sample(self, r: Rollout) -> None:
        """The rollout's samples, as batch items give them: error, safety violation and, for
        a batch holding both arms, a paired latency probe (no shadow: it would delay the
        answers)."""
        probe = latency_probe(self.rt, r.items, r.rows, r.lengths, r.ids)
        self.rt.store.add_samples(outcomes.samples(r.items, r.checked, {}, probe))


@dataclasses.dataclass(frozen=True)
class Rollout:
    """An online batch's requests under a canary, with what their samples need."""

    items: list[Item]
    rows: list[list[int]]
    lengths: np.ndarray
    ids: np.ndarray
    checked: list[outcomes.Checked | str]
