"""Forward anatomy: where one model forward's wall time goes, for the micro-batches the packer
forms (log-normal lengths, median 20 tokens), with no adapter and with 8 adapters mixed.

Per micro-batch, in one run:
- first_ms: the case's first `Runtime.embed_tokens` at that shape (the base case runs first,
  so its figure is the shape's first forward; a worker meets most shapes once);
- wall_ms: `Runtime.embed_tokens` (pad, copy in, forward, copy out), what a worker pays;
- enqueue_ms: host time until the model's forward returns, before anything waits for the
  device (on a GPU: Python and launch cost; on the CPU it is the whole compute);
- device_ms (CUDA only): time between CUDA events around one forward; where launching is
  slower than the kernels, the device idles between them and this is the host's pace;
- device_queued_ms (CUDA only): the same over forwards queued back to back;
- graph_ms (CUDA only): one replay of the forward captured as a CUDA graph for that shape,
  until the device is done: the kernels' own time once Python is out of the loop;
  `graph_error` says why where capture failed.
Ratios: wall ÷ graph replay says how much of a forward a GPU spends waiting for the host.

Usage: python bench/forward.py --json PATH [--items 4000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console

from bench.report import report
from kernels.layout import to_device
from ops.settings import Settings
from producers.corpus import sentences, to_jsonl
from producers.packing import pack
from producers.validate import validate_jsonl
from schemas import tokens
from tests.support.adapters import install
from workers.adapters import make_adapter
from workers.runtime import Runtime

console = Console(stderr=True)
ADAPTERS = 8
GRAPH_ERRORS: dict[str, str] = {}  # case → why its CUDA-graph capture failed


def sync(rt: Runtime) -> None:
    if rt.device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, repeats: int, rt: Runtime) -> float:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeats):
        sync(rt)
        started = time.perf_counter()
        fn()
        sync(rt)  # a replay only queues its work: the time is the device's
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


@torch.inference_mode()
def anatomy(rt: Runtime, lengths, ids, names, repeats: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """The figures of one micro-batch (see the module's docstring)."""
    out: dict[str, float] = {}
    sync(rt)
    started = time.perf_counter()  # this shape's first forward (allocations, kernel plans)
    rt.embed_tokens(lengths, ids, names)
    out["first_ms"] = (time.perf_counter() - started) * 1000
    out["wall_ms"] = median_ms(lambda: rt.embed_tokens(lengths, ids, names), repeats, rt)
    ids_t, mask = tokens.padded(lengths, ids)
    bem = None if names is None else rt._plan(names, None, mask, None)
    dev_ids, dev_mask = to_device(ids_t, rt.device), to_device(mask, rt.device)
    sync(rt)
    enqueue = []
    for _ in range(repeats):
        sync(rt)
        started = time.perf_counter()
        rt.model(dev_ids, dev_mask, bem, normalize=False)
        enqueue.append((time.perf_counter() - started) * 1000)
    sync(rt)
    out["enqueue_ms"] = statistics.median(enqueue)
    if rt.device.type != "cuda":
        return out
    device = []
    for _ in range(repeats):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        rt.model(dev_ids, dev_mask, bem, normalize=False)
        end.record()
        end.synchronize()
        device.append(begin.elapsed_time(end))
    # Device time alone: the same forward queued back to back (`repeats` of them) between two
    # events, so that host gaps between kernels of one forward are hidden behind the queue.
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(repeats):
        rt.model(dev_ids, dev_mask, bem, normalize=False)
    end.record()
    end.synchronize()
    out["device_ms"] = statistics.median(device)
    out["device_queued_ms"] = begin.elapsed_time(end) / repeats
    # With adapters too: a forward reads nothing back, so it can be captured. After a failed
    # capture the case is not tried again (a broken capture can leave the stream unusable).
    case = "base" if names is None else "adapters"
    if case in GRAPH_ERRORS:
        return out
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                rt.model(dev_ids, dev_mask, bem, normalize=False)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            rt.model(dev_ids, dev_mask, bem, normalize=False)
        out["graph_ms"] = median_ms(graph.replay, repeats, rt)
    except Exception as exc:  # reported, not hidden: the figures say why
        GRAPH_ERRORS[case] = f"{type(exc).__name__}: {exc}"[:300]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--items", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        rt = Runtime(Settings(home=Path(tmp)))
        texts = sentences(rt.files, args.items, median_tokens=20, seed=7)
        check = validate_jsonl(to_jsonl(texts, rt.settings.model_name), model=rt.files,
                               served=rt.settings.model_name, max_lines=args.items,
                               max_bytes=1 << 31)
        batches = pack(check.items, rt.settings.max_batch_tokens, rt.settings.max_batch_size)
        install(rt, **{f"a{i}": make_adapter(rt.files, seed=i, b_std=0.05)
                       for i in range(ADAPTERS)})
        rows: list[dict[str, float]] = []
        for n, batch in enumerate(batches):
            lengths, ids = rt.tokenize([t for item in batch for t in item.texts])
            count = len(lengths)
            for label, names in (("base", None),
                                 ("adapters", [f"a{i % ADAPTERS}" for i in range(count)])):
                row = anatomy(rt, lengths, ids, names, args.repeats)
                row |= {"rows": count, "width": int(lengths.max())}
                rows.append({"batch": n, "case": label} | row)  # type: ignore[arg-type]
            console.print(f"  {n + 1}/{len(batches)} micro-batches", end="\r")
        console.print()

    results: dict[str, float] = {"device": str(rt.device), "dtype": str(rt.dtype),
                                 "micro_batches": len(batches)}  # type: ignore[dict-item]
    for label in ("base", "adapters"):
        mine = [r for r in rows if r["case"] == label]
        for key in ("first_ms", "wall_ms", "enqueue_ms", "device_ms", "device_queued_ms",
                    "graph_ms"):
            values = [r[key] for r in mine if key in r]
            if values:
                results[f"{label}_{key}_mean"] = round(statistics.fmean(values), 3)
        wall = sum(r["wall_ms"] for r in mine)
        items = sum(r["rows"] for r in mine)
        results[f"{label}_direct_items_per_s"] = round(items / wall * 1000, 1)
        if all("device_queued_ms" in r for r in mine):
            results[f"{label}_wall_over_device"] = round(
                wall / sum(r["device_queued_ms"] for r in mine), 2)
        graphs = [r for r in mine if "graph_ms" in r]
        if len(graphs) == len(mine):
            results[f"{label}_wall_over_graph"] = round(
                wall / sum(r["graph_ms"] for r in mine), 2)
        if graphs:
            results[f"{label}_graph_items_per_s"] = round(
                sum(r["rows"] for r in graphs) / sum(r["graph_ms"] for r in graphs) * 1000, 1)
        if label in GRAPH_ERRORS:
            results[f"{label}_graph_error"] = GRAPH_ERRORS[label]  # type: ignore[assignment]
    report(args.json, results, "forward anatomy (bench/forward.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
