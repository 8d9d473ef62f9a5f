"""Private Redis and PostgreSQL servers for fault tests: started by the test on free loopback
ports, stopped, restarted and killed by it — never the machine's shared services."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.services import free_port, migrate, require, wait_port


class PrivateRedis:
    def __init__(self, workdir: Path) -> None:
        if shutil.which("redis-server") is None:
            require("redis-server", "not installed")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Start with no persistence: a restart loses every key, as a crashed cache would."""
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--maxmemory-policy", "noeviction", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if not wait_port(self.port):
            raise RuntimeError("private redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart_empty(self) -> None:
        self.kill()
        self.start()


class PrivatePostgres:
    """A throw-away cluster in its own temporary directory (the server's user must be able to
    reach it, which pytest's private temp dirs do not allow); removed by `close`."""

    def __init__(self) -> None:
        if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
            require("PostgreSQL server binaries", "initdb/pg_ctl not on PATH")
        workdir = Path(tempfile.mkdtemp(prefix="bemq-pg-"))
        self.workdir = workdir
        self.port = free_port()
        self.data = workdir / "pgdata"
        self.socket_dir = workdir / "pgsock"
        for path in (workdir, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(workdir, "postgres")
            shutil.chown(self.socket_dir, "postgres")
        self._run(["initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"])
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.start()
        migrate(self.url)

    def _run(self, cmd: list[str]) -> None:
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(["pg_ctl", "-D", str(self.data), "-o", opts, "-w", "-l",
                   str(self.data.parent / "pg.log"), "start"])

    def stop(self) -> None:
        self._run(["pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"])

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped by the test
            self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def wait_down(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and wait_port(self.port, timeout=0.1):
            time.sleep(0.1)
