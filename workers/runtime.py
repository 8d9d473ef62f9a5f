"""What a worker process loads once and keeps: settings, store, blobs, tokenizer and model.

The model loads on first use, so ops workers (which never embed) never pay for it. CUDA when
available (or forced by BEMQ_DEVICE), CPU otherwise; one process serves one device.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import logging
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kernels import dispatch
from kernels.layer import BEMContext, budget_mask
from kernels.layout import to_device
from ops import metrics
from ops.blobs import Blobs, open_blobs
from ops.models import ModelFiles, model_files
from ops.settings import Settings, settings
from ops.store import Store, open_store
from schemas import tokens
from workers.adapters import AdapterCache
from workers.busy import BusyMeter
from workers.gate import ForwardGate
from workers.leases import LeaseKeeper
from workers.service_rate import ServiceRate

log = logging.getLogger(__name__)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018  (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


class Runtime:
    def __init__(self, cfg: Settings) -> None:
        self.settings = cfg
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self.store: Store = open_store(
            cfg.store_url, pool_size=cfg.db_pool_size, retry_seconds=cfg.db_retry_seconds
        )
        self.store.ensure_schema(migrate=cfg.migrates_on_start)
        self.blobs: Blobs = open_blobs(cfg.blobs_url, endpoint_url=cfg.s3_endpoint_url)
        self.files: ModelFiles = model_files(cfg.model_name, cfg.model_dir)
        self._installed: list[str] = []
        self.token_budget = cfg.max_batch_tokens
        metrics.TOKEN_BUDGET.set(self.token_budget)
        self.gate = ForwardGate(cfg.online_priority_burst)
        self.busy = BusyMeter()
        metrics.BUSY_RATIO.set_function(self.busy.ratio)
        self.online_rate = ServiceRate()  # recorded with every heartbeat (ops.admission)
        # The micro-batch whose forward ended last and is not yet recorded as ended (the next
        # `Store.begin_forward` records it): used by the one thread that runs batch forwards.
        self.last_forward: tuple[str, int] | None = None

    @functools.cached_property
    def backups(self) -> Blobs:
        from ops.backup.service import open_backups

        return open_backups(self.settings)

    @functools.cached_property
    def leases(self) -> LeaseKeeper:
        return LeaseKeeper(self.store, self.name, self.settings.lease_seconds)

    @functools.cached_property
    def device(self) -> torch.device:
        wanted = self.settings.device
        if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()):
            return torch.device("cuda")
        return torch.device("cpu")

    @functools.cached_property
    def dtype(self) -> torch.dtype:
        """The model's dtype (BEMQ_DTYPE): bf16 on CUDA unless set, where tensor cores run it at
        many times fp32's rate; fp32 on the CPU, where bf16 matmuls are slower, not faster."""
        wanted = self.settings.dtype
        if wanted == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else torch.float32
        return getattr(torch, wanted)

    @functools.cached_property
    def tokenizer(self):  # type: ignore[no-untyped-def]
        return self.files.tokenizer(truncate=True)

    @functools.cached_property
    def model(self) -> torch.nn.Module:
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        dispatch.set_mode(self.settings.kernels)
        module_name, _, class_name = self.settings.model_class.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        return cls.from_pretrained(self.files.root).to(device=self.device, dtype=self.dtype)

    @functools.cached_property
    def adapters(self) -> AdapterCache:
        return AdapterCache(self.store, self.blobs, self.device, self.dtype,
                            self.settings.adapter_cache_bytes)

    def _slots(self, adapters: list[str | None]) -> list[int]:
        """Install the rows' adapters as the model's stack (reused while the set is the same)
        and return each row's slot, -1 for base-model rows. Called under the gate."""
        names = sorted({a for a in adapters if a is not None})
        if names != self._installed:
            self.model.set_adapters([self.adapters.get(n) for n in names])
            self._installed = names
        index = {n: i for i, n in enumerate(names)}
        return [-1 if a is None else index[a] for a in adapters]

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts → (lengths, flat ids), truncated to the model's limit: the form a micro-batch
        stores its token ids in (`schemas.tokens`)."""
        return tokens.from_rows([e.ids for e in self.tokenizer.encode_batch_fast(texts)])

    def embed(self, texts: list[str], adapters: list[str | None] | None = None, *,
              ranks: list[int | None] | None = None, normalize: bool = True,
              usage: dict[str, list[torch.Tensor]] | None = None, online: bool = False,
              timings: list[float] | None = None) -> torch.Tensor:
        """Embed texts (see `embed_tokens`)."""
        lengths, ids = self.tokenize(texts)
        return self.embed_tokens(lengths, ids, adapters, ranks=ranks, normalize=normalize,
                                 usage=usage, online=online, timings=timings)

    @torch.inference_mode()
    def embed_tokens(self, lengths: np.ndarray, ids: np.ndarray,
                     adapters: list[str | None] | None = None, *,
                     ranks: list[int | None] | None = None, normalize: bool = True,
                     usage: dict[str, list[torch.Tensor]] | None = None, online: bool = False,
                     timings: list[float] | None = None) -> torch.Tensor:
        """Embed token rows (lengths, flat ids), each row through its adapter (None = base);
        (rows, dim) float32 on the CPU, unit-norm unless `normalize=False` (then the pooled
        vectors). Rows go through the model in forwards of at most `token_budget` padded
        tokens, one forward at a time per process (`online` forwards go first, see
        `ForwardGate`); a forward that runs out of memory is split in half and the budget
        lowered. `ranks`: each row's rank budget (None: the adapter's own ranks), which keeps
        each expert's first components (dynamic rank). `usage`, when given, gains for each
        adapter an (S, E) tensor of top-1 expert token counts per sequence it served, one per
        forward; `timings` the seconds of each model forward (without installing adapters)."""
        names = adapters if adapters is not None and any(a is not None for a in adapters) \
            else None
        ids_t, mask = tokens.padded(lengths, ids)
        budgets = ranks if names is not None and ranks is not None else None
        pooled = self._forward(ids_t, mask, names, budgets, usage, online, timings)
        return F.normalize(pooled, p=2, dim=1) if normalize else pooled

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, names: list[str | None] | None,
                 budgets: list[int | None] | None, usage: dict[str, list[torch.Tensor]] | None,
                 online: bool, timings: list[float] | None = None) -> torch.Tensor:
        rows, width = ids.shape
        budget = self.token_budget
        if not online and self.gate.online_recently():
            budget = min(budget, self.settings.online_batch_forward_tokens)
        if rows > 1 and rows * width > budget:
            return self._halves(ids, mask, names, budgets, usage, online, timings)
        try:
            if 0 < self.settings.simulate_oom_above_tokens < rows * width:
                raise torch.OutOfMemoryError(f"simulated: {rows}x{width} tokens")
            with self.gate.hold(online):
                by_slot: dict[int, torch.Tensor] | None = {} if usage is not None else None
                bem = None if names is None else self._plan(names, budgets, mask, by_slot)
                started = time.perf_counter()
                out = self.model(to_device(ids, self.device), to_device(mask, self.device), bem,
                                 normalize=False)
                out = out.float().cpu()
                ended = time.perf_counter()
                self.busy.add(started, ended)
                if timings is not None:
                    timings.append(ended - started)
                for slot, counts in (by_slot or {}).items():
                    name = self._installed[slot]
                    assert usage is not None
                    usage.setdefault(name, []).append(counts.cpu())
                metrics.INFERENCE_LATENCY.labels(self.settings.model_name).observe(
                    ended - started)
            metrics.BATCH_SIZE.observe(rows)
            metrics.BATCH_TOKENS.observe(rows * width)
            return out
        except torch.OutOfMemoryError:
            if rows == 1:
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.token_budget = max(width, rows * width // 2)
            metrics.OOM_SPLITS.inc()
            metrics.TOKEN_BUDGET.set(self.token_budget)
            log.warning("out of memory at %dx%d tokens; token budget now %d",
                        rows, width, self.token_budget)
            return self._halves(ids, mask, names, budgets, usage, online, timings)

    def release_memory(self) -> None:
        """Hand freed heap back to the OS after a micro-batch. Batches of ever-different shapes
        leave glibc's arenas fragmented, so a CPU worker's RSS would otherwise climb to a high
        water mark far above what it uses (measured: 512 → 1,084 MB over 600 batches, flat
        at ~360 MB with this)."""
        if _LIBC is not None:
            _LIBC.malloc_trim(0)

    def _plan(self, names: list[str | None], budgets: list[int | None] | None,
              mask: torch.Tensor, usage: dict[int, torch.Tensor] | None) -> BEMContext:
        slots = self._slots(names)
        rank_mask = None
        if budgets is not None:
            shapes = [next((s.experts, s.rank) for s in self.adapters.get(n).values())
                      for n in self._installed]
            rank_mask = budget_mask(slots, budgets, shapes)
        return BEMContext.plan(slots, mask, self.device, rank_mask=rank_mask, usage=usage)

    def _halves(self, ids: torch.Tensor, mask: torch.Tensor, names: list[str | None] | None,
                budgets: list[int | None] | None, usage: dict[str, list[torch.Tensor]] | None,
                online: bool, timings: list[float] | None) -> torch.Tensor:
        mid = ids.shape[0] // 2

        def half(part: slice) -> torch.Tensor:
            return self._forward(ids[part], mask[part], None if names is None else names[part],
                                 None if budgets is None else budgets[part], usage, online,
                                 timings)

        return torch.cat([half(slice(None, mid)), half(slice(mid, None))])

    def start_heartbeat(self, queues: str) -> threading.Event:
        """Record this worker as alive now and then every `heartbeat_seconds` until the event
        is set, with the rate it answers online requests at (the gateway's admission reads
        it). The first beat is written before this returns, so no lease this process takes
        can ever belong to a worker without a row (which reconcile would take as dead)."""
        stop = threading.Event()
        device = str(self.device) if "gpu" in queues or "online" in queues else "cpu"
        self.store.heartbeat(self.name, os.getpid(), queues, device)

        def beat() -> None:
            while not stop.wait(self.settings.heartbeat_seconds):
                try:
                    self.store.heartbeat(self.name, os.getpid(), queues, device,
                                         self.online_rate.per_second)
                except Exception as exc:  # the store may be restarting; say so and keep going
                    log.warning("heartbeat failed: %s", exc)

        threading.Thread(target=beat, name="bemq-heartbeat", daemon=True).start()
        return stop


    def forget_dead_neighbours(self) -> list[str]:
        """Forget the workers recorded for this host whose process is gone (killed, crashed,
        or a host that rebooted): their leases end at the next reconcile instead of after
        `dead_after`. Another host's workers are left to their heartbeats."""
        host = socket.gethostname()
        gone = []
        for w in self.store.live_workers(None):
            ours = w["name"] == f"{host}-{w['pid']}"  # named as `Runtime.name` names them
            if ours and w["name"] != self.name and not pid_alive(w["pid"]):
                self.store.forget_worker(w["name"])
                gone.append(w["name"])
        if gone:
            log.info("forgot dead worker(s) of this host: %s", ", ".join(gone))
        return gone


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs here (a zombie, dead but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): the signal check is all there is
    return stat.rpartition(")")[2].split()[0] != "Z"


@functools.cache
def runtime() -> Runtime:
    return Runtime(settings())
