"""Schema migrations: a store made by the release before numbered migrations (the frozen DDL in
tests/fixtures/store_v3.sql, recorded as version 3) upgrades to the newest version with every
row kept and usable, on SQLite and PostgreSQL; a process refuses a schema it does not know;
two `bemq migrate` at once apply each step once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops import apikeys
from ops.fairshare import DispatchOrder
from ops.store import ClaimOutcome, Store, Window, migrations, open_store
from ops.store.migrations import SchemaMismatch
from schemas.batch import JobStatus
from tests.conftest import embedded_env
from tests.support.services import create_database, drop_database

pytestmark = pytest.mark.timeout(120)

FIXTURE = Path(__file__).parents[1] / "fixtures" / "store_v3.sql"
KEY = apikeys.KEY_PREFIX + "upgrade-test-key"
ITEMS = [{"line": 1, "custom_id": "a", "texts": ["hello there"], "lengths": [4], "model": "minilm"},
         {"line": 2, "custom_id": "b", "texts": ["general kenobi"], "lengths": [5],
          "model": "minilm"}]

# One or more rows in every table, in the columns version 3 had.
V3_ROWS = [
    ("INSERT INTO jobs (id, tenant, model, endpoint, status, input_file_id, completion_window, "
     "created_at, in_progress_at, expires_at, total, micro_batches, metadata) VALUES "
     "(?, 'acme', 'minilm', '/v1/embeddings', 'in_progress', 'file-in', '24h', ?, ?, ?, 2, 2, ?)",
     ("batch_old", 1_700_000_000, 1_700_000_001, 4_000_000_000, json.dumps({"team": "x"}))),
    ("INSERT INTO jobs (id, tenant, model, endpoint, status, completion_window, created_at, "
     "completed_at, total, completed, micro_batches, output_file_id) VALUES "
     "(?, 'acme', 'minilm', '/v1/embeddings', 'completed', '24h', ?, ?, 1, 1, 1, 'file-out')",
     ("batch_done", 1_700_000_100, 1_700_000_200)),
    ("INSERT INTO micro_batches (job_id, seq, state, items, rows, real_tokens, padded_tokens, "
     "enqueued_at) VALUES ('batch_old', 0, 'queued', ?, 1, 4, 4, ?)",
     (json.dumps(ITEMS[:1]), 1_700_000_001.0)),
    ("INSERT INTO micro_batches (job_id, seq, state, items, rows, real_tokens, padded_tokens, "
     "enqueued_at) VALUES ('batch_old', 1, 'queued', ?, 1, 5, 5, ?)",
     (json.dumps(ITEMS[1:]), 1_700_000_001.0)),
    ("INSERT INTO micro_batches (job_id, seq, state, items, rows, real_tokens, padded_tokens, "
     "n_ok) VALUES ('batch_done', 0, 'done', ?, 1, 4, 4, 1)", (json.dumps(ITEMS[:1]),)),
    ("INSERT INTO files (id, tenant, purpose, filename, bytes, blob_key, created_at) VALUES "
     "('file-in', 'acme', 'batch', 'in.jsonl', 120, 'files/file-in', 1700000000)", ()),
    ("INSERT INTO files (id, tenant, purpose, filename, bytes, blob_key, created_at) VALUES "
     "('file-out', 'acme', 'batch_output', 'out.jsonl', 900, 'files/file-out', 1700000200)", ()),
    ("INSERT INTO workers (name, pid, queues, device, started_at, last_seen) VALUES "
     "('host-1', 1, 'gpu', 'cpu', 1.0, 2.0)", ()),
    ("INSERT INTO adapters (name, model, blob_key, sha256, bytes, experts, rank, created_at) "
     "VALUES ('support-v1', 'minilm', 'adapters/support-v1', ?, 10, 4, 8, 1700000000)",
     ("ab" * 32,)),
    ("INSERT INTO canaries (id, model, stable, canary, steps, step, weight, state, min_samples, "
     "started_at, step_started_at) VALUES ('can_1', 'minilm', 'support-v1', 'support-v2', "
     "'[5.0, 25.0, 100.0]', 1, 25.0, 'running', 200, 1.0, 2.0)", ()),
    ("INSERT INTO canary_decisions (canary_id, at, step, weight, decision, reason, numbers) "
     "VALUES ('can_1', 2.0, 0, 5.0, 'advance', 'all gates passed', '{}')", ()),
    ("INSERT INTO canary_samples (canary_id, step, arm, error, violation, latency, agreement, "
     "at) VALUES ('can_1', 1, 'canary', 0, NULL, NULL, 0.97, 3.0)", ()),
    ("INSERT INTO features (at, model, kind, adapter, reference, sample_key, data) VALUES "
     "(?, 'minilm', 'lengths', '', 0, 0.5, '[4, 5]')", (time.time(),)),
    ("INSERT INTO drift_baselines (model, pinned_at, pending_since, reason) VALUES "
     "('minilm', 1.0, NULL, 'first full window')", ()),
    ("INSERT INTO drift_reports (id, at, model, alerts, severe, report) VALUES "
     "('drift_1', 5.0, 'minilm', 0, 0, '{\"id\": \"drift_1\"}')", ()),
    ("INSERT INTO api_keys (id, tenant, sha256, created_at) VALUES ('key_1', 'acme', ?, 1.0)",
     (apikeys.digest(KEY),)),
    ("INSERT INTO rate_buckets (key, tokens, updated_at) VALUES ('key_1:GET:/x', 3.0, 1.0)", ()),
    ("INSERT INTO online_requests (id, payload, enqueued_at) VALUES ('r1', '{}', 1.0)", ()),
]
TABLES = ("jobs", "micro_batches", "files", "workers", "adapters", "canaries",
          "canary_decisions", "canary_samples", "features", "drift_baselines", "drift_reports",
          "api_keys", "rate_buckets", "online_requests")


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.sqlite3"
        return
    url = create_database(migrated=False)
    yield url
    drop_database(url)


def make_v3(url: str) -> Store:
    """What the release before migrations did at every start, then rows in every table."""
    store = open_store(url, retry_seconds=5)
    statements = [s.strip() for s in FIXTURE.read_text().split(";") if s.strip()]
    with store.tx() as cur:
        for statement in statements:
            cur.execute(statement)
        cur.execute("INSERT INTO schema_version (version, applied_at) VALUES (3, 1.0)")
        for sql, params in V3_ROWS:
            cur.execute(sql, params)
    return store


def counts(store: Store) -> dict[str, int]:
    with store.tx() as cur:
        return {t: cur.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}


def test_v3_store_upgrades_with_every_row_kept_and_usable(store_url: str) -> None:
    """A version-3 store is refused until migrated; `migrate` applies every later step once,
    keeps every row, and the rows then work through today's code."""
    store = make_v3(store_url)
    try:
        before = counts(store)
        assert all(before.values()), before
        with pytest.raises(SchemaMismatch, match=rf"version 3; this bemq needs version "
                                                 rf"{migrations.latest()}: run `bemq migrate`"):
            store.ensure_schema(migrate=False)
        applied = store.migrate()
        assert applied == [m.version for m in migrations.migrations() if m.version > 3]
        assert store.migrate() == []
        store.ensure_schema(migrate=False)
        assert counts(store) == before
        # Every kind of row is still usable.
        job = store.get_job("batch_old", tenant="acme")
        assert job is not None and job.status == JobStatus.IN_PROGRESS
        assert job.metadata == {"team": "x"} and job.request_counts.total == 2
        assert [j.id for j in store.list_jobs("acme")] == ["batch_done", "batch_old"]
        claim = store.claim("batch_old", 0, "w", 60, 3)
        assert claim.outcome == ClaimOutcome.RUN
        assert [i.custom_id for i in claim.micro_batch.items] == ["a"]
        assert store.complete("batch_old", 0, 1, 0).first
        assert store.get_job("batch_old").request_counts.completed == 1
        # Work queued before dispatch messages existed is dispatched from the store.
        window = Window(per_worker=2, live_within=15)
        token, = store.top_up(window)
        nxt = store.claim_next(token, "w", 60, 3, DispatchOrder.SHARE, window)
        assert nxt.outcome == ClaimOutcome.RUN and nxt.claims[0].micro_batch.seq == 1  # type: ignore[union-attr]
        found = store.get_file("file-out", tenant="acme")
        assert found is not None and found[1] == "files/file-out"
        assert store.get_adapter("support-v1").rank == 8
        assert apikeys.owner(store, KEY) == ("key_1", "acme")
        canary = store.get_canary("can_1")
        assert canary is not None and canary.weight == 25.0 and canary.steps == [5, 25, 100]
        assert store.decisions("can_1")[0].reason == "all gates passed"
        assert store.samples("can_1", 1)[0].agreement == pytest.approx(0.97)
        assert store.features("minilm", "lengths", reference=False)
        assert store.drift_reports("minilm") == [{"id": "drift_1"}]
        assert store.baseline("minilm")[2] == "first full window"
    finally:
        store.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A store migrated by a newer bemq is refused, naming both versions."""
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    store.migrate()
    with store.tx() as cur:
        cur.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, 1.0)",
                    (migrations.latest() + 1,))
    with pytest.raises(SchemaMismatch, match=rf"version {migrations.latest() + 1}, newer than "
                                             rf"this bemq knows \({migrations.latest()}\)"):
        store.ensure_schema(migrate=True)


def bemq(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "producers.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_concurrent_migrate_applies_each_step_once(store_url: str, tmp_path: Path) -> None:
    """Two `bemq migrate` started together on an empty store: both succeed, each step is
    applied once; `--check` then says current. Before, a process refuses the empty store."""
    env = embedded_env(tmp_path / "var") | {"BEMQ_DATABASE_URL": store_url,
                                            "BEMQ_MIGRATE_ON_START": "false"}
    refused = bemq(env, "jobs")
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 1
    assert f"has no schema; this bemq needs version {migrations.latest()}" in err
    assert len(err.strip().splitlines()) == 1
    check = bemq(env, "migrate", "--check")
    assert check.wait(60) == 1
    both = [bemq(env, "migrate") for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in both]
    assert [p.returncode for p in both] == [0, 0], outputs
    store = open_store(store_url)
    try:
        with store.tx() as cur:
            versions = [r[0] for r in cur.execute(
                "SELECT version FROM schema_version ORDER BY version").fetchall()]
    finally:
        store.close()
    assert versions == [m.version for m in migrations.migrations()]
    check = bemq(env, "migrate", "--check")
    out, _ = check.communicate(timeout=60)
    assert check.returncode == 0 and "current" in out
