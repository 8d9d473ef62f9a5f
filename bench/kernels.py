"""Kernel benchmark: the BEM operator against the base GEMM and two plain-torch baselines.

For each configuration, in one run: base GEMM alone; base + fused BEM (`kernels.dispatch`, the
Triton kernel on CUDA, the torch reference elsewhere); base + a per-adapter loop in torch;
base + a gathered `bmm` (every row's A and B gathered, then batched matmuls). Reports ratios,
and the fused update's achieved GB/s and TFLOP/s against the device's peak
(bench/device_peaks.json). On CUDA, timings come from triton.testing.do_bench (warm-up,
synchronisation, L2 flush between runs); on CPU, medians of wall-clock repeats.

`--model`: instead of timing, the cost model of `bench/kernel_model.py` (FLOPs, bytes and a
roofline estimate per forward, for the demo corpus's micro-batches with 0, 1, 8 and 32
adapters); it needs no GPU and is labelled as a model in its output.

Usage: python bench/kernels.py --json PATH [--dtype bfloat16] [--tokens N] [--model]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import dispatch
from kernels.cases import Case, make_inputs
from kernels.layout import RowLayout

ON_GPU = torch.cuda.is_available()


def bench(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of one call."""
    if ON_GPU:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100))
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def loop_baseline(x, weight, bias, A, B, adapter_ids, gates, scale, **_):  # type: ignore[no-untyped-def]
    y = F.linear(x, weight, bias)
    for a in torch.unique(adapter_ids).tolist():
        if a < 0:
            continue
        rows = (adapter_ids == a).nonzero().squeeze(1)
        y[rows] += scale * ((x[rows] @ A[a].T) * gates[rows]) @ B[a].T
    return y


def bmm_baseline(x, weight, bias, A, B, adapter_ids, gates, scale, **_):  # type: ignore[no-untyped-def]
    y = F.linear(x, weight, bias)
    ids = adapter_ids.clamp(min=0)
    live = (adapter_ids >= 0).to(x.dtype)[:, None]
    h = torch.bmm(A[ids], x[:, :, None]).squeeze(2) * gates * live
    return y + scale * torch.bmm(B[ids], h[:, :, None]).squeeze(2)


def measure(case: Case, dtype: torch.dtype, repeats: int) -> dict[str, float]:
    device = "cuda" if ON_GPU else "cpu"
    inp = make_inputs(case, dtype, device)
    x, w, b = inp["x"], inp["weight"], inp["bias"]
    # A forward works its row layout out once on the host for all its sites (kernels.layout);
    # the site's own time is what follows.
    layout = RowLayout.of(inp["adapter_ids"])  # type: ignore[arg-type]
    t_base = bench(lambda: F.linear(x, w, b), repeats)
    t_fused = bench(lambda: dispatch.bem_linear(**inp, layout=layout), repeats)
    t_loop = bench(lambda: loop_baseline(**inp), repeats)
    t_bmm = bench(lambda: bmm_baseline(**inp), repeats)
    R = case.experts * case.rank
    size = torch.tensor([], dtype=dtype).element_size()
    used = len(torch.unique(inp["adapter_ids"][inp["adapter_ids"] >= 0]))  # type: ignore[index]
    moved = size * (case.tokens * case.d_in + 2 * case.tokens * case.d_out
                    + used * R * (case.d_in + case.d_out) + case.tokens * R)
    flops = 2 * case.tokens * R * (case.d_in + case.d_out)
    extra_s = max(t_fused - t_base, 1e-6) / 1000
    return {
        "base_ms": round(t_base, 4), "fused_ms": round(t_fused, 4),
        "loop_ms": round(t_loop, 4), "bmm_ms": round(t_bmm, 4),
        "fused_overhead_vs_base": round(t_fused / t_base, 3),
        "fused_speedup_vs_loop": round(t_loop / t_fused, 3),
        "fused_speedup_vs_bmm": round(t_bmm / t_fused, 3),
        "update_gbps": round(moved / extra_s / 1e9, 1),
        "update_tflops": round(flops / extra_s / 1e12, 3),
    }


def forward_syncs(dtype: torch.dtype) -> int:
    """Device-to-host synchronisations in one forward through 12 BEM sites (MiniLM's six layers
    × W_O and W_down) with mixed adapters, FiLM and base rows, counted by
    `torch.cuda.set_sync_debug_mode("warn")` after a warm-up forward."""
    import warnings

    from kernels.layer import BEMContext, BEMLinear, SiteAdapter

    g = torch.Generator().manual_seed(0)
    sites = []
    for d_in in (384, 1536) * 6:
        site = BEMLinear(torch.nn.Linear(d_in, 384)).to("cuda", dtype)
        on_device = {"device": "cuda", "dtype": dtype}  # as workers.adapters loads them
        site.set_adapters([SiteAdapter(
            A=(torch.randn(32, d_in, generator=g) * d_in ** -0.5).to(**on_device),
            B=(torch.randn(384, 32, generator=g) * 0.02).to(**on_device),
            router=torch.randn(4, d_in, generator=g).to(**on_device),
            experts=4, rank=8, scale=2.0,
            film_gamma=torch.ones(384, **on_device) if n == 1 else None,
            film_beta=torch.zeros(384, **on_device) if n == 1 else None) for n in range(3)])
        sites.append(site)
    S, L = 64, 24
    mask = torch.ones(S, L, dtype=torch.bool)
    mask[::3, L // 2:] = False
    x = {d: torch.randn(S, L, d, generator=g).to("cuda", dtype) for d in (384, 1536)}

    def forward() -> None:
        ctx = BEMContext.plan([i % 4 - 1 for i in range(S)], mask, torch.device("cuda"))
        for site in sites:
            site(x[site.in_features], ctx)

    forward()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            forward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # The mode's own notice ("a prototype feature") is not a synchronisation.
    return sum("called a synchronizing" in str(w.message) for w in seen)


def demo_micro_batches() -> list[list[int]]:
    """Token lengths of each micro-batch the packer forms from the demo corpus (2,400 items,
    `make demo`), with the default micro-batch limits."""
    from ops.models import model_files
    from ops.settings import Settings
    from producers.corpus import sentences
    from producers.packing import pack
    from schemas.microbatch import Item

    files = model_files("minilm")
    texts = sentences(files, 2400, seed=7)
    lengths = [len(e.ids) for e in files.tokenizer(truncate=True).encode_batch(texts)]
    items = [Item(line=i, custom_id=str(i), texts=[t], lengths=[n], model="minilm")
             for i, (t, n) in enumerate(zip(texts, lengths, strict=True))]
    fields = Settings.model_fields
    batches = pack(items, fields["max_batch_tokens"].default, fields["max_batch_size"].default)
    return [[n for item in batch for n in item.lengths] for batch in batches]


def cost_model(path: Path) -> int:
    from bench import kernel_model as km

    batches = demo_micro_batches()
    print(f"COST MODEL (not a measurement): roofline at {km.PEAK_FLOPS / 1e12:.0f} TFLOP/s and "
          f"{km.PEAK_BYTES / 1e12:.2f} TB/s, bf16; {len(batches)} demo micro-batches; adapters "
          f"of {km.EXPERTS} experts × rank {km.RANK} at W_O and W_down of {km.LAYERS} layers")
    print(f"{'adapters':>8} {'fwd GFLOP':>10} {'fwd MB':>8} {'adapter GFLOP':>14} "
          f"{'adapter MB':>11} {'flops ratio':>12} {'fwd ratio':>10} {'one-pass':>9}  "
          f"(ratios: worst micro-batch; corpus: all micro-batches' time together)")
    results: dict[str, object] = {"model": "roofline", "peak_tflops": km.PEAK_FLOPS / 1e12,
                                  "peak_tbps": km.PEAK_BYTES / 1e12,
                                  "micro_batches": len(batches)}
    worst = {"flops_ratio": 1.0, "modelled_forward_ratio": 1.0, "modelled_one_pass_ratio": 1.0}
    for n in (0, 1, 8, 32):
        rows = [km.micro_batch(lengths, n) for lengths in batches]
        total = {k: sum(r[k] for r in rows) for k in ("forward_gflop", "forward_mb",
                                                       "adapter_gflop", "adapter_mb", "base_us",
                                                       "adapter_us", "one_pass_us")}
        level = {k: max(r[k] for r in rows) for k in worst}
        corpus = {"corpus_forward_ratio": 1 + total["adapter_us"] / total["base_us"],
                  "corpus_one_pass_ratio": 1 + total["one_pass_us"] / total["base_us"]}
        results[f"{n}_adapters"] = {**{k: round(v, 3) for k, v in total.items()},
                                    **{k: round(v, 4) for k, v in {**level, **corpus}.items()}}
        worst = {k: max(worst[k], level[k]) for k in worst}
        print(f"{n:>8} {total['forward_gflop']:>10.1f} {total['forward_mb']:>8.0f} "
              f"{total['adapter_gflop']:>14.2f} {total['adapter_mb']:>11.0f} "
              f"{level['flops_ratio']:>12.3f} {level['modelled_forward_ratio']:>10.3f} "
              f"{level['modelled_one_pass_ratio']:>9.3f}  "
              f"corpus {corpus['corpus_forward_ratio']:.3f} / one-pass "
              f"{corpus['corpus_one_pass_ratio']:.3f}")
    results.update({k: round(v, 4) for k, v in worst.items()})
    print(f"flops_ratio {worst['flops_ratio']:.3f} (target ≤ 1.1); modelled_forward_ratio "
          f"{worst['modelled_forward_ratio']:.3f} (target ≤ 1.15); a one-pass kernel "
          f"(x read once, y written once) would model {worst['modelled_one_pass_ratio']:.3f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--dtype", default="bfloat16" if ON_GPU else "float32",
                        choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--tokens", type=int, default=8192 if ON_GPU else 1024,
                        help="tokens for the large site (8192 on GPU; smaller on CPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", action="store_true",
                        help="print the cost model (no timing) instead")
    args = parser.parse_args()
    if args.model:
        return cost_model(args.json)
    dtype = getattr(torch, args.dtype)

    device_name = torch.cuda.get_device_name() if ON_GPU else "cpu"
    impl = "triton" if dispatch.uses_triton(torch.empty(0, device="cuda" if ON_GPU else "cpu")) \
        else "torch reference (no CUDA: the Triton kernel is not timed on CPU)"
    print(f"device: {device_name}; fused path: {impl}; dtype {args.dtype}", file=sys.stderr)
    minilm_rows = 4096 if ON_GPU else 1024
    configs = {
        **{f"minilm_{site}_{n}_adapters": Case(minilm_rows, d_in, 384, 4, 8, adapters=n,
                                               base_share=0.0)
           for site, d_in in (("attn_out", 384), ("ffn_down", 1536)) for n in (1, 8, 32)},
        **{f"large_{n}_adapters": Case(args.tokens, 4096, 4096, 4, 16, adapters=n,
                                       base_share=0.0) for n in (8, 32)},
    }
    results: dict[str, object] = {"device": device_name, "fused_path": impl,
                                  "dtype": args.dtype, "large_tokens": args.tokens}
    peaks = json.loads((Path(__file__).parent / "device_peaks.json").read_text())
    peak = next((v for k, v in peaks.items() if k != "_comment" and k in device_name), None)
    print(f"{'config':<28} {'base ms':>9} {'fused ms':>9} {'loop ms':>9} {'bmm ms':>9} "
          f"{'ovh':>6} {'vs loop':>8} {'vs bmm':>7} {'GB/s':>8} {'TFLOP/s':>8}")
    for label, case in configs.items():
        r = measure(case, dtype, args.repeats)
        if peak:
            r["update_gbps_of_peak"] = round(r["update_gbps"] / peak["gbps"], 3)
            r["update_tflops_of_peak"] = round(r["update_tflops"] / peak["tflops"][args.dtype], 4)
        results[label] = r
        print(f"{label:<28} {r['base_ms']:>9.3f} {r['fused_ms']:>9.3f} {r['loop_ms']:>9.3f} "
              f"{r['bmm_ms']:>9.3f} {r['fused_overhead_vs_base']:>6.2f} "
              f"{r['fused_speedup_vs_loop']:>8.2f} {r['fused_speedup_vs_bmm']:>7.2f} "
              f"{r['update_gbps']:>8.1f} {r['update_tflops']:>8.3f}")
    if ON_GPU:
        results["forward_syncs"] = forward_syncs(dtype)
        print(f"device-to-host syncs in a 12-site adapter forward: {results['forward_syncs']}")
    large = results["large_32_adapters"]
    for key in ("fused_overhead_vs_base", "fused_speedup_vs_loop", "fused_speedup_vs_bmm"):
        results[key] = large[key]  # type: ignore[index]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
