"""`bemq demo`, as `make demo` runs it: exits 0, prints the summary, leaves no process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(300)
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    """The demo embeds 300 sentences, a third through its adapter, on a real worker and stops
    it cleanly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEMQ_")}
    result = subprocess.run(
        [sys.executable, "-m", "producers.cli", "demo", "--items", "300",
         "--home", str(tmp_path / "demo")],
        env=env, capture_output=True, text=True, timeout=280,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "demo summary" in out and "completed" in out
    assert re.search(r"items\s+│\s+300", out)
    assert re.search(r"failed\s+│\s+0\s", out)
    assert re.search(r"300\s+items\s+\(100\s+through\s+minilm:demo-v1\)", out)
    assert re.search(r"padding efficiency\s+│\s+0\.\d+", out)
    assert "embedding[384]" in out
    pid = int(re.search(r"worker pid (\d+)", out).group(1))  # type: ignore[union-attr]
    assert not Path(f"/proc/{pid}").exists()
