"""Overload benchmark: `/v1/embeddings` under open-loop load above the capacity it first measures.

Open loop: requests leave on a fixed schedule (request i at t0 + i/R), whatever the answers, as
real clients do; a closed loop would slow down with the server and never overload it. One run,
on loopback: Redis (private prefix), a fresh PostgreSQL database, local blobs, one `bemq serve`
and one worker, first with the zero-cost model (`bench/null_model.py`), then the real one.

Per model:
1. capacity: 16 callers of the same bare client, each sending its next request when the last
   is answered, for a few seconds; answered requests per second (the threaded httpx callers of
   `bench/online.py` took CPU the server needed and measured about half the zero-cost model's
   capacity);
2. levels 0.5×, 1×, 2×, 4× of it, `--seconds` each: accepted requests/s, p50 and p99 of the
   accepted, the share refused (429 and 503), the slowest answer of any kind, how many took
   longer than their deadline (`BEMQ_ONLINE_TIMEOUT_SECONDS`, `--deadline`), gateway RSS and
   Redis memory after the level;
3. with no worker alive (stopped, its heartbeat gone): seconds until a request's 503.

The JSON holds `capacity_rps`, `accepted_over_capacity_2x` / `_4x` (accepted ÷ capacity),
`p99_over_base_2x` / `_4x` (accepted p99 ÷ the 0.5× level's), `past_deadline` (all levels),
`first_503_s`, each also with a `real_` prefix, and every level's figures. The load generator is
this process (a bare HTTP/1.1 client on uvloop, one asyncio protocol per keep-alive connection
for the open loop); its CPU share is reported, with the gateway's and the worker's (cores busy,
over the level), since on a small machine they compete for the same cores.

Usage: python bench/overload.py --json PATH [--seconds 8] [--deadline 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import uvloop
from rich.console import Console
from rich.table import Table

from bench.online import deployment, load, start_gateway
from bench.proc import cpu_seconds
from ops import apikeys
from ops.settings import Settings
from producers.client import Client
from producers.corpus import sentences
from producers.local_worker import LocalWorker
from tests.support import services
from tests.support.deploy import settings_for

console = Console(stderr=True)
NULL_MODEL = "bench.null_model:NullModel"
LEVELS = (0.5, 1.0, 2.0, 4.0)
REFUSED_PAUSE = 0.05
MAX_CONNECTIONS = 256


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def exchange(conn: Connection, request: bytes) -> tuple[int, str]:
    """Send one encoded request on a keep-alive connection; (status, error code)."""
    reader, writer = conn
    writer.write(request)
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length)
    return status, "" if status == 200 else error_code(status, body)



class _Caller(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the open-loop client: one request at a time, its
    answer parsed from the bytes as they arrive. A protocol, not streams: with a task and
    five stream reads per request the generator took 0.34-0.35 of a core at about 3,950
    requests/s, this one 0.19-0.21 at 3,660-4,190, CPU the server on the same two cores
    needed."""

    def __init__(self, done: Callable[[_Caller, int, bytes], None]) -> None:
        self.done, self.buffer = done, b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self.buffer[:head_end].split(b"\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buffer) < head_end + 4 + length:
            return
        status = int(head[0].split()[1])
        body = self.buffer[head_end + 4:head_end + 4 + length]
        self.buffer = self.buffer[head_end + 4 + length:]
        self.done(self, status, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.done(self, 0, b"")  # status 0: this connection is gone


async def open_loop(url: str, key: str, texts: list[str], rate: float, seconds: float
                    ) -> list[tuple[int, float, str]]:
    """Requests at `rate` per second for `seconds`, each sent on schedule: (status, seconds,
    error code) per request, timed from its scheduled moment (a wait for a free connection
    counts). Keep-alive connections, at most `MAX_CONNECTIONS` as a client's pool, requests
    encoded beforehand; every request due is sent at each wake-up."""
    loop = asyncio.get_running_loop()
    host, port = url.removeprefix("http://").split(":")
    requests = [_request(host, key, text) for text in texts[:500]]
    total = int(rate * seconds)
    results: list[tuple[int, float, str]] = []
    idle: list[_Caller] = []
    waiting: collections.deque[int] = collections.deque()  # due, no connection free yet
    busy: dict[_Caller, float] = {}  # connection → its request's scheduled moment
    opened, finished = [0], loop.create_future()
    connecting: list[asyncio.Task[None]] = []
    t0 = time.perf_counter() + 0.01

    def start(caller: _Caller, i: int) -> None:
        busy[caller] = t0 + i / rate
        caller.send(requests[i % len(requests)])

    def record(status: int, took: float, code: str) -> None:
        results.append((status, took, code))
        if len(results) == total and not finished.done():
            finished.set_result(None)

    def done(caller: _Caller, status: int, body: bytes) -> None:
        if finished.done():  # the run is over: what closing its connections reports is not
            return
        due = busy.pop(caller, None)
        if due is not None:
            code = "" if status == 200 else (error_code(status, body) if status else "lost")
            record(status, time.perf_counter() - due, code)
        if not status:  # lost: a new connection may take its place
            if caller in idle:
                idle.remove(caller)
            opened[0] -= 1
            if waiting:
                opened[0] += 1
                connecting.append(asyncio.create_task(connect(waiting.popleft())))
        elif waiting:
            start(caller, waiting.popleft())
        else:
            idle.append(caller)

    async def connect(i: int) -> None:
        try:
            _, caller = await loop.create_connection(lambda: _Caller(done), host, int(port))
        except OSError as exc:
            opened[0] -= 1
            record(0, time.perf_counter() - (t0 + i / rate), type(exc).__name__)
            return
        start(caller, i)

    for i in range(total):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if idle:
            start(idle.pop(), i)
        elif opened[0] < MAX_CONNECTIONS:
            opened[0] += 1
            connecting.append(asyncio.create_task(connect(i)))
        else:
            waiting.append(i)
    try:
        if total:
            await asyncio.wait_for(finished, seconds + 60)
    except TimeoutError:  # unanswered: failures of their own kind, never a hang
        now = time.perf_counter()
        results += [(0, now - due, "unanswered") for due in busy.values()]
        results += [(0, now - (t0 + i / rate), "unanswered") for i in waiting]
    for caller in idle + list(busy):
        if caller.transport is not None:
            caller.transport.close()
    return results


async def closed_loop(url: str, key: str, texts: list[str], clients: int, seconds: float
                      ) -> float:
    """Answered requests per second from `clients` callers, each sending its next request when
    the last is answered (a refused one waits `REFUSED_PAUSE` first, as a caller honouring
    Retry-After would, only shorter): the capacity the levels are multiples of."""
    host, port = url.removeprefix("http://").split(":")
    requests = [_request(host, key, text) for text in texts[:500]]
    answered = [0]
    stop = time.perf_counter() + seconds

    async def caller(n: int) -> None:
        conn = await asyncio.open_connection(host, int(port))
        i = n
        while time.perf_counter() < stop:
            status, _ = await exchange(conn, requests[i % len(requests)])
            if status == 200:
                answered[0] += 1
            else:
                await asyncio.sleep(REFUSED_PAUSE)
            i += clients
        conn[1].close()

    began = time.perf_counter()
    await asyncio.gather(*(caller(n) for n in range(clients)))
    return answered[0] / (time.perf_counter() - began)


def _request(host: str, key: str, text: str) -> bytes:
    body = json.dumps({"model": "minilm", "input": text}).encode()
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def error_code(status: int, body: bytes) -> str:
    """The error's code from OpenAI's error shape; `http_NNN` for any other body (a failure of
    the gateway itself, which the figures then show)."""
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return f"http_{status}"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def level(url: str, key: str, texts: list[str], rate: float, seconds: float, deadline: float,
          gateway_pid: int, worker_pid: int) -> dict[str, float]:
    others0 = cpu_seconds(gateway_pid), cpu_seconds(worker_pid)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    got = uvloop.run(open_loop(url, key, texts, rate, seconds))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    gateway_cpu, worker_cpu = (cpu_seconds(pid) - before for pid, before in
                               zip((gateway_pid, worker_pid), others0, strict=True))
    ok = sorted(t for status, t, _ in got if status == 200)
    refused = sum(status in (429, 503) for status, _, _ in got)
    return {
        "offered_rps": rate, "sent": len(got), "accepted_rps": len(ok) / seconds,
        "p50_ms": statistics.median(ok) * 1000 if ok else float("nan"),
        "p99_ms": ok[min(len(ok) - 1, int(0.99 * len(ok)))] * 1000 if ok else float("nan"),
        "refused_share": refused / len(got),
        "failed": sum(s not in (200, 429, 503) for s, _, _ in got),
        "slowest_ms": max(t for _, t, _ in got) * 1000,
        "past_deadline": sum(t > deadline * 1.1 + 0.02 for _, t, _ in got),
        "gateway_rss_mb": rss_mb(gateway_pid),
        "redis_used_mb": services.redis_client().info("memory")["used_memory"] / 2**20,
        "generator_cpu_share": cpu / wall,
        "gateway_cpu_share": gateway_cpu / wall,
        "worker_cpu_share": worker_cpu / wall,
        "codes": dict(collections.Counter(code or "ok" for _, _, code in got)),
    }


def first_503(url: str, key: str, client: Client, worker: LocalWorker, dead_after: float
              ) -> tuple[float, float]:
    """(seconds from the worker's death to the first 503; seconds a request takes to its 503
    once no worker is alive)."""
    killed = time.monotonic()
    worker.kill()
    auth = {"Authorization": f"Bearer {key}"}
    body = {"model": "minilm", "input": "anyone there?"}
    while True:
        began = time.monotonic()
        r = httpx.post(url + "/v1/embeddings", json=body, headers=auth, timeout=120)
        if r.status_code == 503:
            to_first = time.monotonic() - killed
            break
        assert time.monotonic() - killed < dead_after + 60, "no 503 after the worker died"
    began = time.monotonic()
    r = httpx.post(url + "/v1/embeddings", json=body, headers=auth, timeout=120)
    assert r.status_code == 503, r.text
    return to_first, time.monotonic() - began


def run_model(label: str, env: dict[str, str], home: Path, client: Client, key: str,
              texts: list[str], args: argparse.Namespace) -> dict[str, object]:
    gateway, url = start_gateway(env, home)
    worker = LocalWorker(env, home / f"worker-{label}.log").start()
    try:
        worker.wait_ready(client.store)
        load(url, key, texts, 4, 3.0)  # warm-up; the worker's rate reaches its heartbeat
        capacity = uvloop.run(closed_loop(url, key, texts, args.capacity_clients,
                                           args.capacity_seconds))
        console.print(f"[bold]{label}[/]: capacity {capacity:.0f} requests/s")
        levels = {}
        for factor in LEVELS:
            levels[f"{factor:g}x"] = level(url, key, texts, capacity * factor, args.seconds,
                                           args.deadline, gateway.pid, worker.pid)
            console.print(f"  {factor:g}×: {levels[f'{factor:g}x']}")
        cfg = settings_for(env)
        to_first, answer = first_503(url, key, client, worker, cfg.dead_after)
    finally:
        worker.stop()
        gateway.terminate()
        gateway.wait(20)
    base = levels["0.5x"]["p99_ms"]
    return {
        "capacity_rps": capacity,
        "accepted_over_capacity_2x": levels["2x"]["accepted_rps"] / capacity,
        "accepted_over_capacity_4x": levels["4x"]["accepted_rps"] / capacity,
        "p99_over_base_2x": levels["2x"]["p99_ms"] / base,
        "p99_over_base_4x": levels["4x"]["p99_ms"] / base,
        "past_deadline": sum(int(v["past_deadline"]) for v in levels.values()),
        "first_503_s": answer, "worker_death_to_first_503_s": to_first, "levels": levels,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=8.0, help="per load level")
    parser.add_argument("--capacity-seconds", type=float, default=5.0)
    parser.add_argument("--capacity-clients", type=int, default=16,
                        help="closed-loop clients that measure capacity (few enough that a full "
                        "batch of theirs is answered within the deadline)")
    parser.add_argument("--deadline", type=float, default=0.5,
                        help="each request's deadline (BEMQ_ONLINE_TIMEOUT_SECONDS)")
    parser.add_argument("--models", default="null,real")
    args = parser.parse_args()

    home, prefix, pg, env = deployment("overload")
    env["BEMQ_ONLINE_TIMEOUT_SECONDS"] = str(args.deadline)
    client = Client(settings_for(env))
    _, key = apikeys.create(client.store, "bench")
    texts = sentences(client.model, 2000, seed=13)
    results: dict[str, object] = {"deadline_s": args.deadline, "seconds_per_level":
                                  args.seconds, "cpu_count": os.cpu_count() or 0}
    models = {"null": ("", NULL_MODEL), "real": ("real_",
                                                 Settings.model_fields["model_class"].default)}
    try:
        for name in args.models.split(","):
            prefix_key, model_class = models[name]
            figures = run_model(name, env | {"BEMQ_MODEL_CLASS": model_class}, home, client,
                                key, texts, args)
            results |= {prefix_key + k: v for k, v in figures.items()}
    finally:
        client.close()
        services.drop_database(pg)
        services.drop_prefix(services.redis_client(), prefix)

    table = Table("model", "level", "offered/s", "accepted/s", "p50 ms", "p99 ms", "refused",
                  "slowest ms", "past deadline", "gateway MB", "Redis MB",
                  "cores: generator / gateway / worker",
                  title=f"overload (open loop, deadline {args.deadline:g}s)")
    for name in args.models.split(","):
        p = models[name][0]
        for lv, v in results[p + "levels"].items():  # type: ignore[union-attr]
            table.add_row(name, lv, f"{v['offered_rps']:.0f}", f"{v['accepted_rps']:.0f}",
                          f"{v['p50_ms']:.1f}", f"{v['p99_ms']:.1f}",
                          f"{v['refused_share']:.1%}", f"{v['slowest_ms']:.0f}",
                          str(v["past_deadline"]), f"{v['gateway_rss_mb']:.0f}",
                          f"{v['redis_used_mb']:.1f}",
                          f"{v['generator_cpu_share']:.2f} / {v['gateway_cpu_share']:.2f} / "
                          f"{v['worker_cpu_share']:.2f}")
    Console().print(table)
    for key_name in ("capacity_rps", "accepted_over_capacity_2x", "accepted_over_capacity_4x",
                     "p99_over_base_2x", "p99_over_base_4x", "past_deadline", "first_503_s",
                     "worker_death_to_first_503_s"):
        for p in (models[n][0] for n in args.models.split(",")):
            console.print(f"{p + key_name}: {results[p + key_name]}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
