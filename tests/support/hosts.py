"""Test hosts on one machine: Linux network namespaces, each joined by a veth pair to a bridge the
test makes, so that processes on different "hosts" talk over a network that a test can cut.

Addresses come from 198.18.0.0/15 (reserved for network benchmarks), one /24 per network; the
bridge holds .1, so the test process itself reaches every host. No host has a default route and
nothing is NATed: traffic never leaves the bridge. `Network.close` kills every process left in
its namespaces and removes the namespaces, veths and the bridge; it runs at the end of a `with`
block whatever happens inside, at interpreter exit, and a network whose creator died (a test run
killed outright) is swept by the next one made.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

NAME = "bq"  # every bridge, veth and namespace made here starts with it
STATE = Path("/run/bemq-test-networks")  # one file per live network: its creator's pid
RANGE = ipaddress.ip_network("198.18.0.0/15")


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (ip netns, ip link)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"{NAME}probe{os.getpid()}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"ip netns add failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


class Host:
    """One namespace: its address on the bridge, and the link a test can cut."""

    def __init__(self, network: Network, index: int, name: str) -> None:
        self.name = name
        self.netns = f"{NAME}{network.tag}-{name}"
        self.address = str(network.subnet.network_address + index)
        self.link = f"{NAME}{network.tag}h{index}"  # the bridge's end of the veth pair
        peer = f"{NAME}{network.tag}p{index}"
        _ip("netns", "add", self.netns)
        _ip("link", "add", self.link, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", self.netns)
        _ip("link", "set", self.link, "master", network.bridge, "up")
        self.exec("ip", "addr", "add", f"{self.address}/{network.subnet.prefixlen}", "dev", peer)
        self.exec("ip", "link", "set", peer, "up")
        self.exec("ip", "link", "set", "lo", "up")

    def prefix(self) -> tuple[str, ...]:
        """What runs a command inside this host (`ip netns exec` replaces itself with it, so
        the process's pid is the command's own)."""
        return ("ip", "netns", "exec", self.netns)

    def exec(self, *argv: str) -> str:
        done = subprocess.run([*self.prefix(), *argv], capture_output=True, text=True,
                              timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{self.name}: {' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout

    def popen(self, argv: list[str], log: Path, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            return subprocess.Popen([*self.prefix(), *argv], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def cut(self) -> None:
        """Take the host off the network: its packets go nowhere and nothing reaches it, with
        no reset sent either way (what a pulled cable or a partition looks like)."""
        _ip("link", "set", self.link, "down")

    def restore(self) -> None:
        _ip("link", "set", self.link, "up")

    def kill_all(self) -> None:
        pids = _ip("netns", "pids", self.netns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)


class Network:
    """A bridge and the hosts on it; a context manager that removes all of it on exit."""

    def __init__(self) -> None:
        _sweep()
        self.tag = f"{random.randrange(16**4):04x}"
        self.bridge = f"{NAME}{self.tag}br"
        self.subnet = _free_subnet()
        self.hosts: list[Host] = []
        STATE.mkdir(parents=True, exist_ok=True)
        (STATE / self.tag).write_text(str(os.getpid()))
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.subnet.network_address + 1}/{self.subnet.prefixlen}",
                "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except Exception:
            self.close()
            raise
        atexit.register(self.close)

    def host(self, name: str) -> Host:
        host = Host(self, len(self.hosts) + 2, name)
        self.hosts.append(host)
        return host

    def close(self) -> None:
        """Kill what runs on the hosts, then remove namespaces, veths and the bridge."""
        _remove(self.tag)
        self.hosts.clear()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _remove(tag: str) -> None:
    spaces = [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines()
              if line.startswith(f"{NAME}{tag}-")]
    for netns in spaces:
        for pid in _ip("netns", "pids", netns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 5  # a killed process leaves its namespace as it is reaped
    while spaces and time.monotonic() < deadline and any(
            _ip("netns", "pids", n, check=False).stdout.split() for n in spaces):
        time.sleep(0.05)
    for netns in spaces:
        _ip("netns", "del", netns, check=False)  # takes its end of each veth pair with it
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(f"{NAME}{tag}"):
            _ip("link", "del", name, check=False)
    (STATE / tag).unlink(missing_ok=True)


def _sweep() -> None:
    """Remove the networks whose creating process is gone."""
    if not STATE.is_dir():
        return
    for state in STATE.iterdir():
        try:
            os.kill(int(state.read_text()), 0)
        except (ProcessLookupError, ValueError):
            _remove(state.name)
        except PermissionError:
            pass  # alive, someone else's


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 198.18.0.0/15 that no interface here uses yet."""
    used = _ip("-4", "-o", "addr", "show", check=False).stdout
    subnets = list(RANGE.subnets(new_prefix=24))
    random.shuffle(subnets)
    for subnet in subnets:
        if f" {subnet.network_address + 1}/" not in used:
            return subnet
    raise RuntimeError("no free /24 in 198.18.0.0/15")
