"""`python -m kernels.check` exits 0 when every case is within tolerance and 1 on a miss."""

from __future__ import annotations

import pytest

from kernels import check
from kernels.cases import Case


def test_exit_code_follows_the_tolerance(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Within the table it passes; with a zero fp32 tolerance fp32 rounding is a miss."""
    monkeypatch.setattr(check, "grid", lambda on_gpu: [Case(7, 64, 48, 2, 4, adapters=3)])
    monkeypatch.setattr(check, "KRON_FACTORS", [(16, 32, 4)])
    assert check.main(["--tol", "1e-3"]) == 0
    assert "0 miss(es)" in capsys.readouterr().out
    assert check.main(["--tol", "0"]) == 1
    assert "NO" in capsys.readouterr().out
