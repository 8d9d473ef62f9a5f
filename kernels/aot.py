"""Ahead-of-time compilation of the fused kernel for GPUs this machine does not have.

Triton's compiler needs no GPU: `triton.compile` on an `ASTSource` with a `GPUTarget` yields
the cubin, and `cuobjdump -res-usage` (shipped in the Triton wheel) reads its registers, stack
and shared memory. A non-zero stack means local memory: registers spilled, which on a GPU turns
register traffic into memory traffic. `python -m kernels.check --aot` drives this.

Must run in a process without TRITON_INTERPRET (the kernel must be a JIT function, not the
interpreter's stand-in).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import re
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from kernels import tiles

TARGETS = {"sm_80": 80, "sm_90": 90}
TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
INDEX_POINTERS = {"seq_ptr", "rows_ptr", "blk_start_ptr", "blk_len_ptr", "blk_adapter_ptr"}
FP32_POINTERS = {"h_ptr"}  # the shrink's output buffer is fp32 whatever the inputs
KERNELS = ("shrink", "expand")
FLOAT_SCALARS = {"scale"}


@dataclasses.dataclass(frozen=True)
class Config:
    kernel: str
    target: str
    dtype: torch.dtype
    aligned: bool
    tiles: tiles.Tiles
    has_film: bool

    def label(self) -> str:
        t = self.tiles
        size = (f"M{t.block_m} K{t.block_k} R{t.block_r}" if self.kernel == "shrink" else
                f"M{t.block_m} N{t.block_n} R{t.block_r}")
        return (f"{self.kernel:<6} {self.target} {TRITON_TYPES[self.dtype]:<4} "
                f"{'aligned' if self.aligned else 'odd':<7} {size:<13} w{t.num_warps} "
                f"{'film' if self.has_film else '-'}")


@dataclasses.dataclass(frozen=True)
class Usage:
    registers: int
    stack: int
    shared: int
    dynamic_shared: int

    @property
    def spills(self) -> bool:
        return self.stack > 0


def configs() -> list[Config]:
    """Every launch `kernels.triton_bem.bem_linear` can make, for every target."""
    found = []
    for target in TARGETS:
        for dtype, aligned, t in tiles.launchable():
            found.append(Config("shrink", target, dtype, aligned, t, False))
            found += [Config("expand", target, dtype, aligned, t, film) for film in (False, True)]
    # Tiles that differ only in sizes a kernel does not use compile to the same kernel.
    return list(dict.fromkeys(_used(c) for c in found))


def _used(c: Config) -> Config:
    t = c.tiles
    kept = (dataclasses.replace(t, block_n=0) if c.kernel == "shrink"
            else dataclasses.replace(t, block_k=0))
    return dataclasses.replace(c, tiles=kept)


def kernel_fn(name: str):  # type: ignore[no-untyped-def]
    from kernels import triton_bem

    return {"shrink": triton_bem._bem_shrink_kernel, "expand": triton_bem._bem_expand_kernel}[name]


def signature(kernel: str, dtype: torch.dtype) -> dict[str, str]:
    fn = kernel_fn(kernel)
    sig = {}
    for name, param in zip(fn.arg_names, fn.params, strict=True):
        if param.is_constexpr:
            sig[name] = "constexpr"
        elif name in INDEX_POINTERS:
            sig[name] = "*i32"
        elif name in FP32_POINTERS:
            sig[name] = "*fp32"
        elif name.endswith("_ptr"):
            sig[name] = "*" + TRITON_TYPES[dtype]
        else:
            sig[name] = "fp32" if name in FLOAT_SCALARS else "i32"
    return sig


def compile_one(config: Config) -> Usage:
    """Compile one configuration and read its resource usage; raises on a compile error."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels import triton_bem

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("ahead-of-time compilation needs TRITON_INTERPRET unset")
    t = config.tiles
    constexprs: dict[str, object] = {"PRECISION": triton_bem.precision(config.dtype),
                                     "BLOCK_M": t.block_m, "BLOCK_R": t.block_r}
    if config.kernel == "shrink":
        constexprs["BLOCK_K"] = t.block_k
    else:
        constexprs.update(HAS_FILM=config.has_film, BLOCK_N=t.block_n)
    sig = signature(config.kernel, config.dtype)
    # What Triton's launcher specialises for an aligned launch: 16-byte aligned pointers and
    # sizes and strides divisible by 16. An odd launch is compiled with no such hint (its worst
    # case: the launcher may still find some values divisible).
    hinted = [i for i, (name, kind) in enumerate(sig.items())
              if config.aligned and kind != "constexpr" and name not in FLOAT_SCALARS]
    source = ASTSource(kernel_fn(config.kernel), sig, constexprs,
                       attrs={(i,): [["tt.divisibility", 16]] for i in hinted})
    kernel = triton.compile(source, target=GPUTarget("cuda", TARGETS[config.target], 32),
                            options={"num_warps": t.num_warps, "num_stages": t.num_stages})
    return read_usage(kernel.asm["cubin"], dynamic_shared=int(kernel.metadata.shared))


def cuobjdump() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def read_usage(cubin: bytes, dynamic_shared: int) -> Usage:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(cuobjdump()), "-res-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out))
    if "REG" not in fields:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{out}")
    return Usage(int(fields["REG"]), int(fields["STACK"]) + int(fields.get("LOCAL", 0)),
                 int(fields["SHARED"]), dynamic_shared)


def compile_all(found: list[Config], jobs: int | None = None,
                ) -> list[tuple[Config, Usage | Exception]]:
    """Compile each configuration in `jobs` fresh processes (default: one per core)."""
    results: list[tuple[Config, Usage | Exception]] = []
    context = multiprocessing.get_context("spawn")
    interpret = os.environ.pop("TRITON_INTERPRET", None)  # workers are spawned as jobs are
    try:                                                   # submitted: they compile for real
        with ProcessPoolExecutor(jobs or os.cpu_count() or 1, mp_context=context) as pool:
            futures = [pool.submit(compile_one, c) for c in found]
            for config, future in zip(found, futures, strict=True):
                try:
                    results.append((config, future.result()))
                except Exception as exc:  # a compile error is a finding, reported per config
                    results.append((config, exc))
    finally:
        if interpret is not None:
            os.environ["TRITON_INTERPRET"] = interpret
    return results
