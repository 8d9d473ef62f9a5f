"""Private Redis, Sentinel and PostgreSQL servers for fault tests: started by the test on free
loopback ports (or on a test host of `tests.support.hosts`, at its address), stopped, restarted
and killed by it — never the machine's shared services."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support import hosts
from tests.support.hosts import Host
from tests.support.services import free_port, migrate, require, wait_port


class PrivateRedis:
    """A redis-server on a free loopback port, or on port 6379 of a test host; `args` are more
    of its options (`--replicaof`, or a config file and `--sentinel` for a Sentinel)."""

    def __init__(self, workdir: Path, host: Host | None = None, args: tuple[str, ...] = (),
                 port: int = 6379) -> None:
        if shutil.which("redis-server") is None:
            require("redis-server", "not installed")
        self.host = host
        self.address = host.address if host else "127.0.0.1"
        self.port = port if host else free_port()
        self.url = f"redis://{self.address}:{self.port}/0"
        self.workdir = workdir
        self.args = args
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Start with no persistence: a restart loses every key, as a crashed cache would."""
        cmd = ["redis-server", *self.args, "--port", str(self.port), "--bind", self.address,
               "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction",
               "--dir", str(self.workdir),
               # Reached from other test hosts, on a bridge with no way out.
               *(("--protected-mode", "no") if self.host else ())]
        with (self.workdir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen([*(self.host.prefix() if self.host else ()), *cmd],
                                         stdout=log, stderr=subprocess.STDOUT)
        if not wait_port(self.port, address=self.address):
            raise RuntimeError(f"private redis-server did not start; see {self.workdir}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart_empty(self) -> None:
        self.kill()
        self.start()


def sentinel(workdir: Path, host: Host, primary: PrivateRedis, master: str, quorum: int = 2
             ) -> PrivateRedis:
    """A Sentinel on port 26379 of `host` monitoring `primary` as `master`: the primary counts
    as down after 1 s without an answer, and a failover may start again after 4 s."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "sentinel.conf"  # a Sentinel rewrites its own file as it learns
    conf.write_text(f"sentinel monitor {master} {primary.address} {primary.port} {quorum}\n"
                    f"sentinel down-after-milliseconds {master} 1000\n"
                    f"sentinel failover-timeout {master} 4000\n"
                    f"sentinel parallel-syncs {master} 1\n")
    return PrivateRedis(workdir, host, (str(conf), "--sentinel"), port=26379)


class PrivatePostgres:
    """A throw-away cluster in its own temporary directory (the server's user must be able to
    reach it, which pytest's private temp dirs do not allow); removed by `close`."""

    def __init__(self, host: Host | None = None) -> None:
        if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
            require("PostgreSQL server binaries", "initdb/pg_ctl not on PATH")
        workdir = Path(tempfile.mkdtemp(prefix="bemq-pg-"))
        self.workdir = workdir
        self.host = host
        self.address = host.address if host else "127.0.0.1"
        self.port = 5432 if host else free_port()
        self.data = workdir / "pgdata"
        self.socket_dir = workdir / "pgsock"
        for path in (workdir, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(workdir, "postgres")
            shutil.chown(self.socket_dir, "postgres")
        self._run(["initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"])
        if host is not None:  # the other test hosts, on the bridge
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {hosts.RANGE} trust\n")
        self.url = f"postgresql://postgres@{self.address}:{self.port}/postgres"
        self.start()
        migrate(self.url)

    def _run(self, cmd: list[str], on_host: bool = False) -> None:
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        if on_host and self.host is not None:
            cmd = [*self.host.prefix(), *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses={self.address} "
                "-c fsync=off")
        self._run(["pg_ctl", "-D", str(self.data), "-o", opts, "-w", "-l",
                   str(self.data.parent / "pg.log"), "start"], on_host=True)

    def stop(self) -> None:
        self._run(["pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"])

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped by the test
            self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def wait_down(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and wait_port(self.port, 0.1, self.address):
            time.sleep(0.1)
