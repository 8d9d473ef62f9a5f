"""`python -m kernels.check --tol 1e-3`: compare every fast kernel with the reference on a grid
of shapes and dtypes, print a table, exit 1 on any miss.

`--tol` sets the fp32 bound (atol = rtol = tol); fp16 and bf16 use `kernels.tolerances`.
Without CUDA the Triton kernels run through TRITON_INTERPRET=1 on small shapes.
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
    args = parser.parse_args(argv)

    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are defined, below
    from kernels import reference, triton_bem
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
    print(f"{misses} miss(es)")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
