"""`python -m kernels.check --aot` compiles for GPUs this machine lacks, reads registers and
stack from the cubin, and fails on a spill."""

from __future__ import annotations

import pytest
import torch

from kernels import aot, check, tiles


@pytest.mark.timeout(300)
def test_a_launched_configuration_compiles_without_spilling() -> None:
    dtype, aligned, t = next(c for c in tiles.launchable()
                             if c[0] == torch.bfloat16 and c[1])
    configs = [aot.Config(kernel, "sm_90", dtype, aligned, t, False) for kernel in aot.KERNELS]
    for config, usage in aot.compile_all(configs, jobs=2):
        assert isinstance(usage, aot.Usage), f"{config.label()}: {usage}"
        assert 0 < usage.registers <= 255 and not usage.spills


@pytest.mark.timeout(300)
def test_a_spill_fails_the_check(monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """fp32 tiles far wider than the table's choice spill; the check says so and exits 1."""
    wide = aot.Config("expand", "sm_90", torch.float32, False,
                      tiles.Tiles(64, 128, 32, 128, num_warps=4), True)
    monkeypatch.setattr(aot, "configs", lambda: [wide])
    assert check.main(["--aot", "--jobs", "1"]) == 1
    out = capsys.readouterr().out
    assert "SPILLS" in out and "1 failure(s) in 1 configurations" in out


def test_every_rank_up_to_the_limit_is_launchable() -> None:
    ranks = {t.block_r for _, _, t in tiles.launchable()}
    assert ranks == {16, 32, 64, 128} and max(ranks) == tiles.MAX_RANK_TOTAL
    with pytest.raises(ValueError, match="above the kernel's limit of 128"):
        tiles.rank_block(129)
