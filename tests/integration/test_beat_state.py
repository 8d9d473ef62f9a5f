"""`bemq worker --queues ops --beat` keeps beat's state under BEMQ_HOME, never in the directory
it was started from (a read-only or shared working directory must not matter)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import embedded_env

pytestmark = pytest.mark.timeout(120)


def test_beat_state_lives_under_bemq_home(tmp_path: Path) -> None:
    home, cwd = tmp_path / "var", tmp_path / "cwd"
    cwd.mkdir()
    env = embedded_env(home) | {"BEMQ_RECONCILE_INTERVAL": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "producers.cli", "worker", "--queues", "ops",
                             "--beat"], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(home.glob("celerybeat-schedule*")):
            assert proc.poll() is None, "the ops worker exited"
            assert time.monotonic() < deadline, "beat never wrote its state"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert list(cwd.iterdir()) == []
