"""The two set-up commands install what they need and no more: `make demo` the runtime only,
`make test` the test tools on top (read from make's dry run, nothing is installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")]
ROOT = Path(__file__).parents[2]


def planned(target: str) -> str:
    done = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_demo_installs_the_runtime_only() -> None:
    plan = planned("demo")
    assert "pip install -q -e ." in plan and ".[dev]" not in plan
    assert "bemq demo" in plan


def test_test_adds_the_test_tools() -> None:
    plan = planned("test")
    assert "pip install -q -e '.[dev]'" in plan and "pytest -q" in plan
