"""Scale-out with real processes on test hosts (network namespaces on a bridge the test makes,
`tests.support.hosts`): GPU workers on several hosts share one PostgreSQL and one Redis; a worker
host is cut off mid-job; the broker's primary dies under Redis Sentinel. Every item ends exactly
once in the output or the error file, and no bemq process is restarted."""

from __future__ import annotations

import datetime
import itertools
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from ops import apikeys
from ops.keys import job_shards
from producers.client import Client
from producers.corpus import sentences
from producers.local_worker import LocalWorker
from tests.conftest import embedded_env
from tests.support import hosts
from tests.support.deploy import (
    FAST_RECOVERY,
    assert_exactly_once,
    settings_for,
    start_worker,
    wait_for,
)
from tests.support.private import PrivatePostgres, PrivateRedis, sentinel
from tests.support.services import require, wait_port

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

MASTER = "bemq"


@pytest.fixture
def network() -> Iterator[hosts.Network]:
    reason = hosts.unavailable()
    if reason is not None:
        require("network namespaces", reason)
    with hosts.Network() as net:
        yield net


@pytest.fixture
def database(network: hosts.Network) -> Iterator[str]:
    pg = PrivatePostgres(network.host("pg"))
    yield pg.url
    pg.close()


def cluster_env(tmp_path: Path, broker_url: str, database_url: str, **extra: str
                ) -> dict[str, str]:
    """Every host's environment: one store and one broker over the bridge; blobs in a local
    directory all hosts see (a shared file system here; S3 in production)."""
    return embedded_env(tmp_path / "var") | FAST_RECOVERY | {
        "BEMQ_BROKER_URL": broker_url, "BEMQ_DATABASE_URL": database_url,
        "BEMQ_DB_RETRY_SECONDS": "120", **extra}


def start_on(host: hosts.Host, env: dict[str, str], client: Client, log: Path,
             **kw: object) -> LocalWorker:
    """A worker process on `host`, once it heartbeats."""
    return start_worker(env, client, log, wrap=host.prefix(), **kw)


def beat_sends(log: Path, since: float = 0.0) -> int:
    """Scheduled tasks a worker's embedded beat sent at or after `since` (epoch seconds)."""
    sent = 0
    for line in log.read_text(errors="replace").splitlines():
        if "Scheduler: Sending due task" in line:
            stamp = datetime.datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
            sent += stamp.timestamp() >= since
    return sent


def micro_batches_by_pid(client: Client, job_id: str) -> Counter[int]:
    """Micro-batches of the job per worker process that completed them (names end in pid)."""
    with client.store.tx() as cur:
        rows = cur.execute("SELECT worker FROM micro_batches WHERE job_id = ? AND state = 'done'",
                           (job_id,)).fetchall()
    return Counter(int(name.rsplit("-", 1)[1]) for (name,) in rows)


def longest_standstill(client: Client, job_id: str) -> float:
    """The longest time between two of the job's completions: how long a user watching it saw
    it stand still."""
    with client.store.tx() as cur:
        done = [t for (t,) in cur.execute("SELECT completed_at FROM micro_batches WHERE "
                                          "job_id = ? ORDER BY completed_at", (job_id,)).fetchall()]
    return max(b - a for a, b in itertools.pairwise(done))


def test_a_job_is_shared_by_workers_on_three_hosts(network: hosts.Network, database: str,
                                                   tmp_path: Path) -> None:
    """A 3,000-item job over GPU workers on three hosts, each dispatch message claiming four
    micro-batches (the other tests here claim one): each host completes some, and every item
    is in the output once."""
    broker = PrivateRedis(tmp_path / "redis", network.host("redis"))
    env = cluster_env(tmp_path, broker.url, database, BEMQ_CLAIM_SIZE="4",
                      BEMQ_PIPELINE_DEPTH="8")
    workers: list[LocalWorker] = []
    try:
        with Client(settings_for(env)) as client:
            workers.append(start_on(network.host("ops"), env, client, tmp_path / "ops.log",
                                    queues="ops", extra=("--beat",)))
            gpus = [start_on(network.host(f"gpu{n}"), env, client, tmp_path / f"gpu{n}.log")
                    for n in range(3)]
            workers += gpus
            job = client.submit_job(sentences(client.model, 3000, seed=21))
            done = client.wait(job.id, timeout=400)
            assert_exactly_once(client, done, 3000)
            shares = micro_batches_by_pid(client, job.id)
            assert {w.pid for w in gpus} <= {pid for pid, n in shares.items() if n > 0}, shares
            assert all(w.proc is not None and w.proc.poll() is None for w in workers)
    finally:
        for worker in workers:
            worker.stop()
        broker.kill()


def test_a_worker_host_cut_off_mid_job(network: hosts.Network, database: str,
                                       tmp_path: Path) -> None:
    """A worker host's link is cut in the middle of its forward, for longer than the lease: its
    micro-batch comes back and the job completes exactly once on the other host; when the link
    returns, the cut worker's late completion changes nothing and leaves no shard behind."""
    broker = PrivateRedis(tmp_path / "redis", network.host("redis"))
    env = cluster_env(tmp_path, broker.url, database)
    slow = env | {"BEMQ_MODEL_CLASS": "tests.support.poison:SlowEncoder"}  # 3 s a forward
    cut = network.host("gpu-cut")
    workers: list[LocalWorker] = []
    try:
        with Client(settings_for(env)) as client:
            workers.append(start_on(network.host("ops"), env, client, tmp_path / "ops.log",
                                    queues="ops", extra=("--beat",)))
            stale = start_on(cut, slow, client, tmp_path / "cut.log")
            workers.append(stale)
            job = client.submit_job(sentences(client.model, 1200, seed=22))
            name_end = f"-{stale.pid}"

            def forward_under_way() -> bool:
                with client.store.tx() as cur:
                    return any(str(w).endswith(name_end) for (w,) in cur.execute(
                        "SELECT worker FROM micro_batches WHERE job_id = ? AND state = 'running' "
                        "AND deliveries > finished_forwards", (job.id,)).fetchall())

            wait_for(forward_under_way, 120, "a forward on the host to be cut")
            cut.cut()
            cut_at = time.monotonic()
            workers.append(start_on(network.host("gpu-b"), env, client, tmp_path / "b.log"))
            done = client.wait(job.id, timeout=300)
            assert_exactly_once(client, done, 1200)
            assert time.monotonic() - cut_at > float(FAST_RECOVERY["BEMQ_LEASE_SECONDS"])
            cut.restore()
            wait_for(lambda: "changed nothing" in stale.tail(200), 240,
                     "the cut worker's late completion")
            after = client.status(job.id)
            assert after.request_counts == done.request_counts
            assert after.output_file_id == done.output_file_id
            assert_exactly_once(client, after, 1200)
            assert client.blobs.list(job_shards(job.id)) == []
            assert stale.proc is not None and stale.proc.poll() is None  # never restarted
    finally:
        for worker in workers:
            worker.stop()
        broker.kill()


class Sentinels:
    """A primary and a replica on their own hosts, and three Sentinels on three more."""

    def __init__(self, network: hosts.Network, workdir: Path) -> None:
        self.primary_host = network.host("redis-1")
        self.primary = PrivateRedis(workdir / "r1", self.primary_host)
        self.replica = PrivateRedis(workdir / "r2", network.host("redis-2"), (
            "--replicaof", self.primary.address, str(self.primary.port)))
        self.sentinels = [sentinel(workdir / f"s{n}", network.host(f"sentinel-{n}"),
                                   self.primary, MASTER) for n in range(3)]
        self.url = ";".join(f"sentinel://{s.address}:{s.port}" for s in self.sentinels) + "/0"
        wait_for(self.ready, 30, "the replica in sync and the sentinels knowing one another")

    def ready(self) -> bool:
        info = redis.Redis(self.primary.address, self.primary.port).info("replication")
        if info.get("connected_slaves") != 1:
            return False
        for s in self.sentinels:
            ask = redis.Redis(s.address, s.port)
            if len(ask.sentinel_slaves(MASTER)) != 1 or len(ask.sentinel_sentinels(MASTER)) != 2:
                return False
        return True

    def master(self) -> tuple[str, int]:
        for s in self.sentinels:
            if s.proc is not None and s.proc.poll() is None:
                host, port = redis.Redis(s.address, s.port).sentinel_get_master_addr_by_name(
                    MASTER)
                return host.decode() if isinstance(host, bytes) else host, int(port)
        raise AssertionError("no sentinel left")

    @staticmethod
    def role(server: PrivateRedis) -> str:
        """What a Redis server says it is: "master" or "slave"."""
        return str(redis.Redis(server.address, server.port, socket_timeout=2).info(
            "replication")["role"])

    def kill(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.kill()


@pytest.mark.parametrize("loss", ["killed", "cut off"])
def test_broker_primary_lost_under_sentinel(network: hosts.Network, database: str,
                                            tmp_path: Path, loss: str) -> None:
    """With every sentinel in the URL and the first of them down, the primary is lost mid-job:
    killed, or its host cut off (no reset: every connection to it just goes quiet). After the
    failover the job completes exactly once with no bemq process restarted, and
    `/v1/embeddings` answers 200, or 503 with Retry-After, throughout: nothing hangs. A primary
    cut off comes back still believing it leads, and the sentinels demote it to a read-only
    replica (celery#7946's stuck workers): a second job then completes exactly once too."""
    ha = Sentinels(network, tmp_path)
    env = cluster_env(tmp_path, ha.url, database, BEMQ_SENTINEL_MASTER=MASTER,
                      BEMQ_ONLINE_TIMEOUT_SECONDS="5")
    workers: list[LocalWorker] = []
    gateway_host = network.host("gateway")
    gateway = None
    calls: list[tuple[int, float, str]] = []
    stop = threading.Event()
    try:
        with Client(settings_for(env)) as client:
            _, key = apikeys.create(client.store, "acme")
            workers.append(start_on(network.host("ops"), env, client, tmp_path / "ops.log",
                                    queues="ops", extra=("--beat",)))
            workers.append(start_on(network.host("gpu"), env, client, tmp_path / "gpu.log"))
            gateway = gateway_host.popen(
                [sys.executable, "-m", "producers.cli", "serve", "--host",
                 gateway_host.address, "--port", "8000"], tmp_path / "gateway.log", env)
            assert wait_port(8000, 120, gateway_host.address), "gateway did not start"
            url = f"http://{gateway_host.address}:8000/v1/embeddings"

            def online() -> None:
                with httpx.Client(headers={"Authorization": f"Bearer {key}"}) as http:
                    while not stop.is_set():
                        began = time.monotonic()
                        try:
                            r = http.post(url, json={"model": "minilm", "input": "a sentence"},
                                          timeout=20)
                            calls.append((r.status_code, time.monotonic() - began,
                                          r.headers.get("retry-after", "")))
                        except httpx.HTTPError as exc:
                            calls.append((0, time.monotonic() - began, repr(exc)))
                        time.sleep(0.05)

            ha.sentinels[0].kill()  # the first sentinel of the URL is down from here on
            with httpx.Client(headers={"Authorization": f"Bearer {key}"}) as http:
                # A cold gateway's and worker's first answer is not what this test judges.
                wait_for(lambda: http.post(url, json={"model": "minilm", "input": "warm"},
                                           timeout=30).status_code == 200, 120,
                         "a first online answer")
            caller = threading.Thread(target=online, name="test-online-caller", daemon=True)
            caller.start()
            job = client.submit_job(sentences(client.model, 1500, seed=23))
            wait_for(lambda: client.status(job.id).request_counts.completed > 0, 120,
                     "first completions")
            old = ha.master()
            if loss == "killed":
                ha.primary.kill()
            else:
                ha.primary_host.cut()
            killed_at = time.time()
            wait_for(lambda: ha.master() != old, 60, "the sentinels to promote the replica")
            promoted = time.time() - killed_at
            done = client.wait(job.id, timeout=300)
            gap = longest_standstill(client, job.id)
            if loss == "cut off":
                ha.primary_host.restore()
                wait_for(lambda: ha.role(ha.primary) == "slave", 60,
                         "the returning primary to be demoted")
                again = client.submit_job(sentences(client.model, 300, seed=24))
                assert_exactly_once(client, client.wait(again.id, timeout=240), 300)
            # Beat leads on through the failover: scheduled tasks go out from the new primary.
            wait_for(lambda: beat_sends(tmp_path / "ops.log", killed_at + 10) > 0, 60,
                     "beat to send a scheduled task after the failover")
            time.sleep(2)  # online calls after the failover too
            stop.set()
            caller.join(30)
            assert_exactly_once(client, done, 1500)
            assert ha.master() == (ha.replica.address, ha.replica.port)
            assert all(w.proc is not None and w.proc.poll() is None for w in workers)
            assert gateway.poll() is None
            statuses = Counter(status for status, _, _ in calls)
            print(f"primary {loss}: replica promoted {promoted:.1f} s after, longest wait "
                  f"between completions {gap:.1f} s; online calls {dict(statuses)}, slowest "
                  f"{max(t for _, t, _ in calls):.2f} s")
            # Each of a worker's calls on the quiet connection costs a read timeout (2 s; the
            # stall was 21 s with 5-s timeouts, 7 s with 2-s ones).
            assert gap < 15, f"batch work stood still {gap:.1f} s"
            assert set(statuses) <= {200, 503}, calls
            assert all(retry for status, _, retry in calls if status == 503), calls
            assert max(took for _, took, _ in calls) < 10, calls  # the deadline is 5 s
            assert statuses[200] > 0 and calls[-1][0] == 200, calls
    finally:
        stop.set()
        if gateway is not None:
            gateway.terminate()
            gateway.wait(20)
        for worker in workers:
            worker.stop()
        ha.kill()


def test_one_beat_leader_while_the_leaders_host_is_cut_off(network: hosts.Network,
                                                           database: str, tmp_path: Path) -> None:
    """Beats on two hosts, one leading (RedBeat's lock): while the leader's host is cut off the
    other takes over and the cut one sends nothing; back on the network, the old leader waits,
    and leads again when the new leader's host is cut off in turn. Never do both send."""
    broker = PrivateRedis(tmp_path / "redis", network.host("redis"))
    env = cluster_env(tmp_path, broker.url, database, BEMQ_BEAT_LOCK_SECONDS="6")
    first, second = network.host("ops-a"), network.host("ops-b")
    logs = {first: tmp_path / "ops-a.log", second: tmp_path / "ops-b.log"}
    workers: list[LocalWorker] = []

    def leads(host: hosts.Host, since: float) -> bool:
        return beat_sends(logs[host], since) > 0

    try:
        with Client(settings_for(env)) as client:
            workers.append(start_on(first, env, client, logs[first], queues="ops",
                                    extra=("--beat",)))
            wait_for(lambda: leads(first, 0), 60, "the first beat to lead")
            workers.append(start_on(second, env, client, logs[second], queues="ops",
                                    extra=("--beat",)))
            time.sleep(3)
            assert not leads(second, 0), "a second beat sent while the first led"
            for leader, standby in ((first, second), (second, first)):
                leader.cut()
                cut_at = time.time()
                wait_for(lambda s=standby, t=cut_at: leads(s, t), 60,
                         f"{standby.name} to take over")
                time.sleep(3)
                # The cut leader's last tick may have been on its way out as the link went.
                assert not leads(leader, cut_at + 1), f"{leader.name} sent while cut off"
                leader.restore()
                back_at = time.time()
                wait_for(lambda h=leader: "lost the beat lock" in logs[h].read_text(), 60,
                         f"{leader.name} to find its lock gone")
                time.sleep(3)
                assert not leads(leader, back_at), f"{leader.name} sent after it lost the lock"
                assert leads(standby, back_at), f"{standby.name} stopped leading"
            assert all(w.proc is not None and w.proc.poll() is None for w in workers)
    finally:
        for worker in workers:
            worker.stop()
        broker.kill()


HOLD_THE_DISPATCH_LOCK = """
import sys, time
from ops.store import open_store
store = open_store(sys.argv[1])
with store.tx() as cur:
    cur.execute("UPDATE dispatch SET value = value + 1 WHERE name = 'turns'")
    print("locked at", time.time(), flush=True)
    time.sleep(3600)
"""


HOLD_THE_DISPATCH_LOCK_WHILE_READING = """
import sys, time
from ops.store import open_store
store = open_store(sys.argv[1])
with store.pool.connection() as conn, conn.transaction():  # a session as the store sets it up
    conn.execute("UPDATE dispatch SET value = value + 1 WHERE name = 'turns'")
    print("locked at", time.time(), flush=True)
    with conn.cursor().copy("COPY (SELECT repeat('x', 100) FROM generate_series(1, 100000000))"
                      " TO STDOUT") as copy:
        for n, _ in enumerate(copy):
            if n == 1000:
                print("reading", flush=True)
"""


def test_a_host_cut_off_inside_a_transaction_does_not_stop_every_claim(
        network: hosts.Network, database: str, tmp_path: Path) -> None:
    """A process holding the dispatch lock (as a claim does) when its host is cut off: the
    server ends its session once it has idled in the transaction for 30 s, and the next claim
    goes through; without that, every worker's claims would wait on the lock for hours."""
    from ops.store import open_store
    from ops.store.postgres import IDLE_IN_TRANSACTION_MS

    holder = network.host("holder")
    log = tmp_path / "holder.log"
    env = embedded_env(tmp_path / "var")
    proc = holder.popen([sys.executable, "-c", HOLD_THE_DISPATCH_LOCK, database], log, env)
    store = open_store(database, retry_seconds=5)
    try:
        wait_for(lambda: "locked at" in log.read_text(), 60, "the holder to take the lock")
        # Let the holder's acknowledgement of the server's last reply through: data still
        # unacknowledged at the cut would end the session sooner (tcp_user_timeout; see below).
        time.sleep(1)
        holder.cut()
        # The server's clock of the idle transaction starts when the lock was taken.
        locked_at = float(log.read_text().split("locked at")[1].split()[0])
        assert time.time() - locked_at < 10, "the cut came too late to matter"
        store.top_up(settings_for(env).window)  # takes the dispatch lock: waits for the holder
        waited = time.time() - locked_at
        assert IDLE_IN_TRANSACTION_MS / 1000 - 1 < waited < IDLE_IN_TRANSACTION_MS / 1000 + 20
    finally:
        proc.kill()
        store.close()


def test_a_host_cut_off_while_the_server_sends_to_it_does_not_stop_every_claim(
        network: hosts.Network, database: str, tmp_path: Path) -> None:
    """The same cut while the server is still sending a result inside the transaction (a claim
    returns its micro-batches' texts): the session is not idle, so the idle limit does not end it,
    and a write to a host that has gone quiet blocks until TCP gives up (about 15 minutes of
    retransmission at Linux's defaults). The session's `tcp_user_timeout` ends it sooner."""
    from ops.store import open_store
    from ops.store.postgres import TCP_USER_TIMEOUT_MS

    holder = network.host("holder")
    log = tmp_path / "holder.log"
    env = embedded_env(tmp_path / "var")
    proc = holder.popen([sys.executable, "-c", HOLD_THE_DISPATCH_LOCK_WHILE_READING, database],
                        log, env)
    store = open_store(database, retry_seconds=5)
    try:
        wait_for(lambda: "reading" in log.read_text(), 60, "the holder to read under the lock")
        holder.cut()
        cut_at = time.time()
        store.top_up(settings_for(env).window)  # takes the dispatch lock: waits for the holder
        waited = time.time() - cut_at
        assert waited < TCP_USER_TIMEOUT_MS / 1000 + 20, f"the lock was held {waited:.0f} s"
    finally:
        proc.kill()
        store.close()
