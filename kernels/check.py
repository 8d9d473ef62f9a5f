"""`python -m kernels.check --tol 1e-3`: compare every fast kernel with the reference on a grid
of shapes and dtypes, print a table, exit 1 on any miss.

`--tol` sets the fp32 bound (atol = rtol = tol); fp16 and bf16 use `kernels.tolerances`.
Without CUDA the Triton kernels run through TRITON_INTERPRET=1 on small shapes.

Kronecker-factored adapters (`kernels.kron`, plain torch) are checked against the reference,
which forms ΔW = K₁ ⊗ K₂, on the same tolerance table.

`--aot`: compile every configuration the dispatcher can launch for sm_80 and sm_90 (no GPU
needed; `kernels.aot`), print registers, stack and shared memory of each, exit 1 on a compile
error or a spill (any stack).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch

from kernels.cases import Case
from kernels.tolerances import TOLERANCES, Tolerance


def grid(on_gpu: bool) -> list[Case]:
    tokens = (1, 3, 7, 133, 1024) if on_gpu else (1, 3, 7, 133)
    sites = [(384, 384), (1536, 384)] + ([(4096, 4096)] if on_gpu else [])
    shapes = [(1, 1), (2, 4), (4, 8), (8, 16)]  # (experts, rank)
    cases = []
    for i, (t, (d_in, d_out)) in enumerate(itertools.product(tokens, sites)):
        experts, rank = shapes[i % len(shapes)]
        cases.append(Case(t, d_in, d_out, experts, rank, adapters=3, film=i % 2 == 1))
    cases += [
        Case(133, 384, 384, 4, 8, adapters=5, skew=True),
        Case(64, 384, 384, 2, 4, adapters=5, base_share=1.0, film=True),
        Case(64, 384, 384, 2, 4, adapters=5, base_share=0.0),
    ]
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.check", description=__doc__)
    parser.add_argument("--tol", type=float, default=TOLERANCES[torch.float32].atol)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--aot", action="store_true",
                        help="compile for sm_80 and sm_90 and check for spills instead")
    parser.add_argument("--jobs", type=int, default=None, help="compile processes (--aot)")
    args = parser.parse_args(argv)
    if args.aot:
        return ahead_of_time(args.jobs)

    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are defined, below
    from kernels import kron, reference, triton_bem
    from kernels.cases import make_inputs

    device = "cuda" if on_gpu else "cpu"
    tolerances = {**TOLERANCES, torch.float32: Tolerance(args.tol, args.tol)}
    print(f"kernels.check on {torch.cuda.get_device_name() if on_gpu else 'CPU (interpreter)'}")
    header = f"{'kernel':<11} {'dtype':<9} {'case':<44} {'max |err|':>10} {'worst':>6}  ok"
    print(header)
    print("-" * len(header))
    misses = 0
    for dtype, case in itertools.product(tolerances, grid(on_gpu)):
        inputs = make_inputs(case, dtype, device, seed=args.seed)
        ref = reference.bem_linear(**inputs)
        fast = triton_bem.bem_linear(**inputs)
        tol = tolerances[dtype]
        err = float((fast.float() - ref.float()).abs().max()) if ref.numel() else 0.0
        ok = tol.within(fast, ref)
        misses += not ok
        print(f"{'bem_linear':<11} {str(dtype)[6:]:<9} {case.label():<44} {err:>10.2e} "
              f"{tol.worst(fast, ref):>6.3f}  {'yes' if ok else 'NO'}")
    for dtype, (a, b, k), (d_in, d_out) in itertools.product(
            tolerances, KRON_FACTORS, [(384, 384), (1536, 384)]):
        f = kron_factors(a, b, d_out // a, d_in // b, k, dtype, device, args.seed)
        x = torch.randn(33, d_in, generator=torch.Generator().manual_seed(args.seed))
        x = x.to(device=device, dtype=dtype)
        ref, fast = reference.kron_delta(x, f, 0.5), kron.kron_apply(x, f, 0.5)
        tol = tolerances[dtype]
        err = float((fast.float() - ref.float()).abs().max())
        ok = tol.within(fast, ref)
        misses += not ok
        label = f"T=33 {d_in}->{d_out} K1={a}x{b}" + (f" k={k}" if k else "")
        print(f"{'kron':<11} {str(dtype)[6:]:<9} {label:<44} {err:>10.2e} "
              f"{tol.worst(fast, ref):>6.3f}  {'yes' if ok else 'NO'}")
    print(f"{misses} miss(es)")
    return 1 if misses else 0


# Kronecker adapters' K₁ shapes (a, b) and K₂ factor ranks (0: full K₂).
KRON_FACTORS = [(16, 32, 0), (16, 32, 4), (8, 16, 8), (384, 384, 0)]


def kron_factors(a: int, b: int, c: int, d: int, k: int, dtype: torch.dtype, device: str,
                 seed: int) -> tuple[torch.Tensor, ...]:
    """K₁ and K₂ (or its factors), scaled so that the update stays O(1)."""
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(a, b, generator=g) / b**0.5]
    parts += ([torch.randn(c, k, generator=g) / k**0.5, torch.randn(k, d, generator=g) / d**0.5]
              if k else [torch.randn(c, d, generator=g) / d**0.5])
    return tuple(t.to(device=device, dtype=dtype) for t in parts)


def ahead_of_time(jobs: int | None) -> int:
    from kernels import aot

    found = aot.configs()
    print(f"kernels.check --aot: {len(found)} launchable configurations "
          f"({', '.join(aot.TARGETS)}); flags: b = bias, f = FiLM, β = FiLM shift")
    header = f"{'configuration':<44} {'regs':>5} {'stack':>6} {'shared':>7}  ok"
    print(header)
    print("-" * len(header))
    failures = 0
    for config, usage in aot.compile_all(found, jobs):
        if isinstance(usage, Exception):
            failures += 1
            reason = str(usage).strip().splitlines()[-1] if str(usage).strip() else repr(usage)
            print(f"{config.label():<44} compile error: {reason}")
            continue
        failures += usage.spills
        print(f"{config.label():<44} {usage.registers:>5} {usage.stack:>6} "
              f"{usage.dynamic_shared:>7}  {'SPILLS' if usage.spills else 'yes'}")
    print(f"{failures} failure(s) in {len(found)} configurations")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
