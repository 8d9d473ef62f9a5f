"""Kernel benchmark: the BEM operator against the base GEMM and two plain-torch baselines.

For each configuration, in one run: base GEMM alone; base + fused BEM (`kernels.dispatch`, the
Triton kernel on CUDA, the torch reference elsewhere); base + a per-adapter loop in torch;
base + a gathered `bmm` (every row's A and B gathered, then batched matmuls). Reports ratios,
and the fused update's achieved GB/s and TFLOP/s against the device's peak
(bench/device_peaks.json). On CUDA, timings come from triton.testing.do_bench (warm-up,
synchronisation, L2 flush between runs); on CPU, medians of wall-clock repeats.

Usage: python bench/kernels.py --json PATH [--dtype bfloat16] [--tokens N]
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
    t_base = bench(lambda: F.linear(x, w, b), repeats)
    t_fused = bench(lambda: dispatch.bem_linear(**inp), repeats)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--dtype", default="bfloat16" if ON_GPU else "float32",
                        choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--tokens", type=int, default=8192 if ON_GPU else 1024,
                        help="tokens for the large site (8192 on GPU; smaller on CPU)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    device_name = torch.cuda.get_device_name() if ON_GPU else "cpu"
    impl = "triton" if dispatch.uses_triton(torch.empty(0, device="cuda" if ON_GPU else "cpu")) \
        else "torch reference (no CUDA: the Triton kernel is not timed on CPU)"
    print(f"device: {device_name}; fused path: {impl}; dtype {args.dtype}", file=sys.stderr)
    configs = {
        "minilm_attn_out": Case(4096 if ON_GPU else 1024, 384, 384, 4, 8, adapters=8,
                                base_share=0.0),
        "minilm_ffn_down": Case(4096 if ON_GPU else 1024, 1536, 384, 4, 8, adapters=8,
                                base_share=0.0),
        **{f"large_{n}_adapters": Case(args.tokens, 4096, 4096, 4, 16, adapters=n,
                                       base_share=0.0) for n in (8, 32)},
    }
    results: dict[str, object] = {"device": device_name, "fused_path": impl,
                                  "dtype": args.dtype, "large_tokens": args.tokens}
    peaks = json.loads((Path(__file__).parent / "device_peaks.json").read_text())
    peak = next((v for k, v in peaks.items() if k != "_comment" and k in device_name), None)
    print(f"{'config':<22} {'base ms':>9} {'fused ms':>9} {'loop ms':>9} {'bmm ms':>9} "
          f"{'ovh':>6} {'vs loop':>8} {'vs bmm':>7} {'GB/s':>8} {'TFLOP/s':>8}")
    for label, case in configs.items():
        r = measure(case, dtype, args.repeats)
        if peak:
            r["update_gbps_of_peak"] = round(r["update_gbps"] / peak["gbps"], 3)
            r["update_tflops_of_peak"] = round(r["update_tflops"] / peak["tflops"][args.dtype], 4)
        results[label] = r
        print(f"{label:<22} {r['base_ms']:>9.3f} {r['fused_ms']:>9.3f} {r['loop_ms']:>9.3f} "
              f"{r['bmm_ms']:>9.3f} {r['fused_overhead_vs_base']:>6.2f} "
              f"{r['fused_speedup_vs_loop']:>8.2f} {r['fused_speedup_vs_bmm']:>7.2f} "
              f"{r['update_gbps']:>8.1f} {r['update_tflops']:>8.3f}")
    large = results["large_32_adapters"]
    for key in ("fused_overhead_vs_base", "fused_speedup_vs_loop", "fused_speedup_vs_bmm"):
        results[key] = large[key]  # type: ignore[index]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
