"""Start worker processes on this machine and wait for them: used by `bemq demo`, the
benchmarks and the integration tests, so all three run real workers the same way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ops.store import Store


class WorkerFailed(RuntimeError):
    """A worker process exited before it was ready."""


class LocalWorker:
    def __init__(self, env: dict[str, str], log_path: Path, *, queues: str = "gpu,online",
                 extra: tuple[str, ...] = (), wrap: tuple[str, ...] = ()) -> None:
        """`wrap` runs the worker through another command (`ip netns exec NS`, for a test
        host) that replaces itself with it."""
        self.env = env
        self.log_path = log_path
        self.queues = queues
        self.extra = extra
        self.wrap = wrap
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalWorker:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        cmd = [*self.wrap, sys.executable, "-m", "workers", "--queues", self.queues,
               "--loglevel", "INFO", *self.extra]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, store: Store, timeout: float = 180.0) -> float:
        """Block until this process has a heartbeat in the store; returns the seconds taken.
        A worker that became ready and then exited counts as ready (the caller sees its exit
        status): it may have died of its first micro-batch before this looked."""
        assert self.proc is not None
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            exited = self.proc.poll() is not None
            if any(w["pid"] == self.proc.pid for w in store.live_workers(60)):
                return time.monotonic() - start
            if exited:
                raise WorkerFailed(f"worker exited with {self.proc.returncode}; "
                                   f"see {self.log_path}:\n{self.tail()}")
            time.sleep(0.1)
        raise WorkerFailed(f"worker not ready after {timeout}s; see {self.log_path}")

    def stop(self, timeout: float = 60.0) -> int:
        """Warm shutdown (SIGTERM: the current micro-batch finishes), then SIGKILL past
        `timeout`. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.wait()

    def kill(self) -> None:
        """SIGKILL the whole process group (the worker and any children)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""
