"""`bemq demo` (and `make demo`): the whole system on the embedded default, no servers.

A real Celery worker process consumes a filesystem broker under `var/demo`, with a SQLite store
and a local blob directory there; a real batch job of a few thousand sentences of varied length
goes through it, a third of them through a freshly registered BEM adapter (sharing micro-batches
with the base model's rows), with a progress bar while polling and a summary table at the end.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

EMBEDDED_OVERRIDES = ("BEMQ_BROKER_URL", "BEMQ_DATABASE_URL", "BEMQ_BLOB_URL")


def run_demo(items: int, home: str) -> int:
    console = Console()
    root = Path(home).resolve()
    shutil.rmtree(root, ignore_errors=True)
    for name in EMBEDDED_OVERRIDES:
        os.environ.pop(name, None)
    os.environ["BEMQ_HOME"] = str(root)
    os.environ["BEMQ_POLL_INTERVAL"] = "0.25"

    from producers.client import Client
    from producers.corpus import sentences
    from producers.local_worker import LocalWorker
    from producers.progress import wait_with_progress

    client = Client.from_env()
    worker = LocalWorker(dict(os.environ), root / "worker.log").start()
    try:
        console.print(f"[bold]bemq demo[/]: state under {root}")
        console.print(f"worker pid {worker.pid} starting (filesystem broker, SQLite, local blobs)")
        ready = worker.wait_ready(client.store)
        console.print(f"worker ready in {ready:.1f}s (model loaded)")

        adapter = _register_adapter(client, root)
        console.print(f"registered adapter {adapter}: 4 experts of rank 8 at every W_O and "
                      "W_down")
        base = client.settings.model_name
        lines = [{"model": adapter if i % 3 == 1 else base, "input": text}
                 for i, text in enumerate(sentences(client.model, items, seed=7))]
        start = time.perf_counter()
        job = client.submit_job(lines, metadata={"source": "bemq demo"})
        console.print(f"submitted {job.id}: {job.request_counts.total} items "
                      f"({sum(x['model'] == adapter for x in lines)} through {adapter}) in "
                      f"{job.micro_batches} length-bucketed micro-batches")
        job = wait_with_progress(client, job.id, timeout=1800)
        wall = time.perf_counter() - start
        first = next(client.results(job.id), None)
        console.print(_summary(job, wall, client.padding_efficiency(job.id), first))
    finally:
        code = worker.stop()
        client.close()
    console.print(f"worker stopped (exit {code}); logs in {worker.log_path}")
    ok = job.status.value == "completed" and job.request_counts.failed == 0
    return 0 if ok else 1


def _register_adapter(client, root: Path) -> str:  # type: ignore[no-untyped-def]
    """A random adapter (`make_adapter`), validated and stored as `bemq adapters add` would."""
    from workers.adapters import make_adapter

    path = root / "demo-v1.safetensors"
    path.write_bytes(make_adapter(client.model, experts=4, rank=8, b_std=0.02))
    client.add_adapter("demo-v1", path)
    return f"{client.settings.model_name}:demo-v1"


def _summary(job, wall: float, padding: float, first: dict | None) -> Table:  # type: ignore[no-untyped-def]
    counts = job.request_counts
    table = Table(title="demo summary", show_header=False)
    preview = "-"
    if first is not None:
        vec = first["response"]["body"]["data"][0]["embedding"]
        head = ", ".join(f"{v:.4f}" for v in vec[:4])
        model = first["response"]["body"].get("model", "?")
        preview = f"{first['custom_id']} ({model}): embedding[{len(vec)}] = [{head}, ...]"
    for key, value in [
        ("job", job.id), ("status", job.status.value), ("items", str(counts.total)),
        ("completed", str(counts.completed)), ("failed", str(counts.failed)),
        ("wall seconds", f"{wall:.2f}"), ("items/s", f"{counts.total / wall:.1f}"),
        ("padding efficiency", f"{padding:.3f}"), ("output preview", preview),
    ]:
        table.add_row(key, value)
    return table
