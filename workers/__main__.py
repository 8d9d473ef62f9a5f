"""`python -m workers`: start Celery workers, one process per device for the GPU queue.

With several CUDA devices each process gets one through CUDA_VISIBLE_DEVICES; this launcher
forwards SIGTERM/SIGINT to them (warm shutdown: each finishes its current micro-batch) and
exits with the first non-zero status.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers")
    parser.add_argument("--queues", default="gpu,online",
                        help="comma-separated queues to consume")
    parser.add_argument("--devices", default="auto",
                        help="CUDA device indexes, e.g. 0,1; 'auto' = all visible (or CPU)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="threads for non-GPU queues (ops)")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--beat", action="store_true",
                        help="embed celery beat (on Redis, several hosts may: one leads, the "
                        "others wait to take over)")
    args = parser.parse_args(argv)

    devices = _devices(args.devices) if "gpu" in args.queues or "online" in args.queues else []
    if len(devices) <= 1:
        if devices:
            os.environ["CUDA_VISIBLE_DEVICES"] = devices[0]
        return _worker(args)
    procs = []
    base_port = int(os.environ.get("BEMQ_METRICS_PORT") or 0)
    for n, index in enumerate(devices):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=index)
        if base_port:  # one /metrics per process: BEMQ_METRICS_PORT, +1, +2, ...
            env["BEMQ_METRICS_PORT"] = str(base_port + n)
        cmd = [sys.executable, "-m", "workers", "--queues", args.queues, "--devices", index,
               "--loglevel", args.loglevel]
        procs.append(subprocess.Popen(cmd, env=env))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _f: [p.send_signal(signum) for p in procs])
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c), 0)


def _devices(spec: str) -> list[str]:
    if spec != "auto":
        return [d.strip() for d in spec.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _worker(args: argparse.Namespace) -> int:
    from workers.app import app

    gpu = "gpu" in args.queues or "online" in args.queues
    argv = ["worker", "-Q", args.queues, "-E", "--loglevel", args.loglevel,
            "-n", f"{args.queues.replace(',', '+')}-{os.getpid()}@%h"]
    # Ops tasks wait on the store, the blob store and scipy: threads suffice, and keep every
    # metric they set in the process that serves /metrics.
    argv += ["-P", "solo"] if gpu else ["-P", "threads", "-c", str(args.concurrency)]
    if args.beat:
        argv.append("-B")
    app.worker_main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
