"""The Python client: submit batch jobs, poll them, read their results, cancel them.

The CLI and the HTTP gateway are thin layers over this class, so the three ways in behave alike.
A job is validated completely before anything is enqueued; it is then stored whole (job and
micro-batches in one transaction) before any message is sent, so a broker failure can delay a
job but never leave it half-enqueued.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ops import adapters
from ops.blobs import BlobNotFound, open_blobs
from ops.canary.routing import route
from ops.keys import file_key, new_file_id, new_job_id
from ops.lifecycle import finalize
from ops.models import model_files
from ops.settings import Settings, load_settings
from ops.store import open_store
from producers.broker import BrokerUnavailable, send_dispatch
from producers.packing import pack
from producers.validate import gc_paused, validate_jsonl
from schemas.adapters import AdapterRecord
from schemas.batch import BatchErrors, EmbeddingBody, FileObject, Job, JobStatus, job_priority
from schemas.constants import COMPLETION_WINDOWS, ENDPOINT_EMBEDDINGS
from schemas.microbatch import MicroBatch, MicroBatchState
from schemas.tokens import pack_ids

log = logging.getLogger(__name__)

ItemsLike = str | os.PathLike[str] | bytes | Iterable[str | dict[str, Any]]
# A short-form item: `custom_id` and the fields of a request line's `body`.
SHORT_FORM_KEYS = frozenset({"custom_id", *EmbeddingBody.__annotations__})


class NotFound(LookupError):
    """No job or file with that id for this tenant."""


class InvalidBatch(ValueError):
    """The input failed validation; the job exists with status `failed` and its errors."""

    def __init__(self, job: Job) -> None:
        self.job = job
        errors = job.errors.data if job.errors else []
        shown = "\n".join(f"  {e.message}" for e in errors[:10])
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        super().__init__(f"batch {job.id} failed validation:\n{shown}{more}")


class NotFinished(RuntimeError):
    """Results were asked for before the job ended."""


class Client:
    def __init__(self, cfg: Settings | None = None, *, tenant: str | None = None,
                 shared: Client | None = None) -> None:
        """`shared`: reuse another client's connections (the gateway makes one client per
        request, for the caller's tenant, over one set of pools)."""
        self.settings = cfg or (shared.settings if shared else load_settings())
        self.tenant = tenant or self.settings.tenant
        self._owns = shared is None
        if shared is not None:
            self.store, self.blobs, self.model = shared.store, shared.blobs, shared.model
            return
        self.store = open_store(self.settings.store_url, pool_size=self.settings.db_pool_size,
                                retry_seconds=self.settings.db_retry_seconds)
        try:
            self.store.ensure_schema(migrate=self.settings.migrates_on_start)
        except BaseException:
            self.store.close()  # no pool thread left behind to fail at exit
            raise
        self.blobs = open_blobs(self.settings.blobs_url,
                                endpoint_url=self.settings.s3_endpoint_url)
        self.model = model_files(self.settings.model_name, self.settings.model_dir)

    @classmethod
    def from_env(cls, tenant: str | None = None) -> Client:
        return cls(load_settings(), tenant=tenant)

    def close(self) -> None:
        if self._owns:
            self.store.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- files ---------------------------------------------------------------------------
    def upload_file(self, data: bytes, filename: str, purpose: str = "batch", *,
                    expires_after: int | None = None) -> FileObject:
        """Store a file; it expires `expires_after` seconds after its creation (default:
        BEMQ_RETAIN_INPUT_FILES; 0 there keeps it until deleted)."""
        keep = _lifetime("expires_after", expires_after, self.settings.retain_input_files)
        now = int(time.time())
        obj = FileObject(id=new_file_id(), bytes=len(data), created_at=now, filename=filename,
                         purpose=purpose, tenant=self.tenant,
                         expires_at=now + keep if keep else None)
        self.blobs.put(file_key(obj.id), data)
        self.store.add_file(obj, file_key(obj.id))
        return obj

    def files(self, *, purpose: str | None = None, after: str | None = None, limit: int = 20,
              order: str = "desc") -> list[FileObject]:
        """This tenant's files that have not expired, newest first (`order="asc"`: oldest)."""
        if order not in ("asc", "desc"):
            raise ValueError(f"order: expected asc or desc, got {order!r}")
        return self.store.list_files(self.tenant, purpose=purpose, after=after, limit=limit,
                                     descending=order == "desc")

    def file(self, file_id: str) -> FileObject:
        return self._file(file_id)[0]

    def file_content(self, file_id: str) -> bytes:
        key = self._file(file_id)[1]
        try:
            return self.blobs.get(key)
        except BlobNotFound:  # deleted between the lookup and the read
            raise NotFound(f"no file {file_id!r}") from None

    def delete_file(self, file_id: str) -> None:
        """Remove a file (jobs that used it keep their own outputs): it expires now, so it is
        gone for its users at once, then its bytes and its row go (if this is cut short,
        `retention.run` finishes it)."""
        _, key = self._file(file_id)
        self.store.expire_file(file_id)
        self.blobs.delete(key)
        self.store.delete_files([file_id])

    def _file(self, file_id: str) -> tuple[FileObject, str]:
        """This tenant's file and the blob key of its bytes; another tenant's is not found."""
        found = self.store.get_file(file_id, self.tenant)
        if found is None:
            raise NotFound(f"no file {file_id!r}")
        return found

    # -- adapters ------------------------------------------------------------------------
    def add_adapter(self, name: str, path: str | os.PathLike[str]) -> AdapterRecord:
        """Register an adapter file under a version name (`body.model` = "minilm:NAME")."""
        return adapters.add(self.store, self.blobs, name, Path(path), self.model,
                            self.settings.model_name)

    def adapters(self) -> list[AdapterRecord]:
        return self.store.list_adapters()

    # -- jobs ----------------------------------------------------------------------------
    def submit_job(self, items: ItemsLike, *, model: str | None = None,
                   metadata: dict[str, str] | None = None, completion_window: str = "24h",
                   expires_after: int | None = None,
                   output_expires_after: int | None = None, priority: int | None = None,
                   truncate: bool = False) -> Job:
        """Submit a JSONL path, raw JSONL bytes, or a list of texts / request dicts (full
        request lines, or the short form: `custom_id` and any `body` field, such as
        `{"custom_id": "a", "input": text, "truncate": True}`); the uploaded input file lives
        `expires_after` seconds (see `upload_file`). `truncate`: cut over-long inputs of
        lines that do not say (see `create_batch`).

        Raises `InvalidBatch` (carrying the failed job) when validation finds errors."""
        data, filename = self._input_bytes(items, model or self.settings.model_name)
        metadata = _with_priority(metadata, priority)  # a bad one fails before the upload
        upload = self.upload_file(data, filename, expires_after=expires_after)
        return self.create_batch(upload.id, metadata=metadata,
                                 completion_window=completion_window,
                                 output_expires_after=output_expires_after, truncate=truncate)

    def create_batch(self, input_file_id: str, *, endpoint: str = ENDPOINT_EMBEDDINGS,
                     completion_window: str = "24h",
                     metadata: dict[str, str] | None = None,
                     output_expires_after: int | None = None,
                     priority: int | None = None, truncate: bool = False) -> Job:
        """Validate the input file and enqueue its items. The job's output and error files
        expire `output_expires_after` seconds after they are written (default:
        BEMQ_RETAIN_OUTPUT_FILES; 0 there keeps them until deleted). `priority` (or
        `metadata["priority"]`, -100 to 100, default 0) orders this tenant's own jobs: higher
        first; it never takes work from another tenant's share. `truncate=True` cuts inputs
        over the model's `max_seq_length` on every line that does not set `body.truncate`
        itself (the default, as OpenAI's API, refuses them)."""
        if endpoint != ENDPOINT_EMBEDDINGS:
            raise ValueError(f"endpoint: only {ENDPOINT_EMBEDDINGS} is served, got {endpoint!r}")
        if completion_window not in COMPLETION_WINDOWS:
            raise ValueError(f"completion_window: expected one of {sorted(COMPLETION_WINDOWS)}")
        metadata = _with_priority(metadata, priority)
        rank = job_priority(metadata)
        keep = _lifetime("output_expires_after", output_expires_after,
                         self.settings.retain_output_files)
        _, input_key = self._file(input_file_id)
        now = int(time.time())
        job = Job(id=new_job_id(), status=JobStatus.VALIDATING, created_at=now,
                  input_file_id=input_file_id, completion_window=completion_window,
                  expires_at=now + COMPLETION_WINDOWS[completion_window],
                  metadata=metadata, tenant=self.tenant, model=self.settings.model_name,
                  output_expires_after=keep, priority=rank)
        self.store.create_job(job)
        # No collection while the file's millions of short-lived objects are alive: they are
        # freed by reference counting when `_store_batches` returns, and a collection midway
        # would only traverse them (measured on a 50,000-line submit: 0.2 s of collections in
        # a fresh process, 0.03 s in later ones).
        with gc_paused():
            self._store_batches(job, input_key, truncate)
        try:
            send_dispatch(self.settings, self.store.top_up(self.settings.window))
        except BrokerUnavailable as exc:
            log.warning("%s; job %s is stored, and jobs.reconcile dispatches it", exc, job.id)
        return self.status(job.id)

    def _store_batches(self, job: Job, input_key: str, truncate: bool) -> None:
        """Validate the job's input file and store its micro-batches; the job fails
        (`InvalidBatch`) when the file has errors."""
        cfg = self.settings
        check = validate_jsonl(self.blobs.get(input_key), model=self.model,
                               served=cfg.model_name, max_lines=cfg.max_lines,
                               max_bytes=cfg.max_file_bytes,
                               known_adapters={a.name: a.rank for a in self.adapters()},
                               truncate=truncate)
        if not check.errors and cfg.tenant_max_queued_tokens:
            tokens = sum(sum(item.lengths) for item in check.items)
            queued = self.store.queued_tokens(self.tenant)
            if queued + tokens > cfg.tenant_max_queued_tokens:
                check.add("token_limit_exceeded",
                          f"tenant {self.tenant!r} has {queued:,} tokens queued; this job's "
                          f"{tokens:,} would pass BEMQ_TENANT_MAX_QUEUED_TOKENS "
                          f"({cfg.tenant_max_queued_tokens:,}); submit it once some finish")
        if check.errors:
            self.store.fail_job(job.id, BatchErrors(data=check.errors))
            raise InvalidBatch(self.status(job.id))

        # Under a canary rollout, items asking for its stable version are split between the
        # arms here; mixed arms share micro-batches (one forward serves mixed adapters).
        items = route(check.items, self.tenant, self.store.routes(),
                      cfg.canary_shadow_fraction)
        groups = pack(items, cfg.max_batch_tokens, cfg.max_batch_size)
        batches = [MicroBatch(job_id=job.id, seq=seq, state=MicroBatchState.QUEUED,
                              items=g, tokens=pack_ids([row for item in g
                                                        for row in check.ids[item.line]]))
                   for seq, g in enumerate(groups)]
        self.store.start_job(job.id, batches, total=len(check.items))

    def status(self, job_id: str) -> Job:
        job = self.store.get_job(job_id, self.tenant)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    def list(self, limit: int = 20, after: str | None = None, *,
             all_tenants: bool = False) -> list[Job]:
        """This tenant's jobs, newest first (an operator's view of every tenant's with
        `all_tenants`)."""
        return self.store.list_jobs(None if all_tenants else self.tenant, after=after,
                                    limit=limit)

    def wait(self, job_id: str, *, timeout: float | None = None,
             on_progress: Callable[[Job], None] | None = None) -> Job:
        """Poll until the job ends; `on_progress` sees every polled state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.status(job_id)
            if on_progress is not None:
                on_progress(job)
            if job.status.terminal:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status.value} after {timeout}s")
            time.sleep(self.settings.poll_interval)

    def cancel(self, job_id: str) -> Job:
        """Skip the micro-batches not yet started; running ones finish and are kept."""
        job = self.status(job_id)
        if not job.status.terminal:
            self.store.cancel_job(job_id)
            finalize(self.store, self.blobs, job_id)
        return self.status(job_id)

    def results(self, job_id: str) -> Iterator[dict[str, Any]]:
        """Output lines (one per completed item) as dicts."""
        return self._lines(job_id, "output_file_id")

    def errors(self, job_id: str) -> Iterator[dict[str, Any]]:
        """Error-file lines (one per failed item) as dicts."""
        return self._lines(job_id, "error_file_id")

    def padding_efficiency(self, job_id: str) -> float:
        real, padded = self.store.padding(job_id)
        return real / padded if padded else 1.0

    def _lines(self, job_id: str, field: str) -> Iterator[dict[str, Any]]:
        job = self.status(job_id)
        if not job.status.terminal:
            raise NotFinished(f"job {job_id} is {job.status.value}; results come when it ends")
        file_id = getattr(job, field)
        if file_id is None:
            return iter(())
        key = self._file(file_id)[1]
        return (json.loads(line) for line in self.blobs.iter_lines(key) if line)

    @staticmethod
    def _input_bytes(items: ItemsLike, model: str) -> tuple[bytes, str]:
        if isinstance(items, bytes):
            return items, "input.jsonl"
        if isinstance(items, str | os.PathLike):
            path = Path(items)
            return path.read_bytes(), path.name
        lines = []
        for i, entry in enumerate(items):
            if isinstance(entry, str):
                entry = {"custom_id": f"item-{i}", "input": entry}
            if "body" not in entry:
                unknown = sorted(set(entry) - SHORT_FORM_KEYS)
                if unknown:
                    raise ValueError(
                        f"items[{i}]: unknown key {unknown[0]!r}; a short-form item takes "
                        f"{', '.join(sorted(SHORT_FORM_KEYS))} (or give a whole request line)")
                body = {k: v for k, v in entry.items() if k != "custom_id"}
                entry = {"custom_id": entry.get("custom_id", f"item-{i}"), "method": "POST",
                         "url": ENDPOINT_EMBEDDINGS, "body": {"model": model, **body}}
            lines.append(json.dumps(entry))
        return ("\n".join(lines) + "\n").encode(), "items.jsonl"


def _with_priority(metadata: dict[str, str] | None, priority: int | None) -> dict[str, str] | None:
    """The job's metadata carrying `priority` (checked), which wins over one already in it."""
    if priority is not None:
        metadata = {**(metadata or {}), "priority": str(priority)}
    job_priority(metadata)
    return metadata


def _lifetime(field: str, seconds: int | None, default: int) -> int | None:
    """Seconds a file lives: the caller's (positive), else the setting's; None = for ever."""
    if seconds is not None and seconds < 1:
        raise ValueError(f"{field}: seconds must be positive, got {seconds}")
    return (seconds if seconds is not None else default) or None
