"""CPU seconds of processes on this machine, read from `/proc/PID/stat` (Linux): what the
benchmarks report for servers and workers that share the cores with their load generator."""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: str | int) -> tuple[str, list[str]] | None:
    """(command name, the fields after it), or None for a process already gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (all its threads)."""
    got = _stat(pid)
    if got is None:
        raise ProcessLookupError(pid)
    fields = got[1]
    return (int(fields[11]) + int(fields[12])) / TICK


def named_cpu_seconds(name: str) -> float:
    """CPU seconds (user + system) of every process here named `name`, with those of its
    children that have exited (a PostgreSQL backend ends with its connection; the postmaster
    that reaps it then holds its time)."""
    stats = {pid: got[1] for pid in filter(str.isdigit, os.listdir("/proc"))
             if (got := _stat(pid)) is not None and got[0] == name}
    total = 0
    for fields in stats.values():
        total += int(fields[11]) + int(fields[12])  # utime, stime
        if fields[1] not in stats:  # a parent of the others: its reaped children's time too
            total += int(fields[13]) + int(fields[14])
    return total / TICK
