"""Fair share with real worker processes: a small job submitted behind another tenant's big one
finishes first (and, in arrival order, last: the test tells the two apart), and two tenants of
weights 1 and 3 get a quarter and three quarters of the micro-batches while both have work."""

from __future__ import annotations

from pathlib import Path

import pytest

from producers.client import Client
from producers.corpus import sentences
from schemas.batch import JobStatus
from tests.conftest import embedded_env
from tests.support.deploy import (
    assert_exactly_once,
    running,
    settings_for,
    start_worker,
    wait_for,
)
from tests.support.services import REDIS_URL

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("order", ["share", "arrival"])
def test_a_small_job_finishes_ahead_of_a_big_one_queued_earlier(tmp_path: Path,
                                                                 order: str) -> None:
    """Tenant alpha's 800-item job is running when tenant beta submits 20 items: by share,
    beta's job completes while alpha's has most of its items left; in arrival order it
    completes only after alpha's."""
    env = embedded_env(tmp_path / "var") | {"BEMQ_MAX_BATCH_SIZE": "16",
                                            "BEMQ_DISPATCH_ORDER": order}
    cfg = settings_for(env)
    with Client(cfg, tenant="alpha") as alpha, Client(cfg, tenant="beta") as beta:
        worker = start_worker(env, alpha, tmp_path / "worker.log")
        try:
            big = alpha.submit_job(sentences(alpha.model, 800, seed=31))
            wait_for(lambda: alpha.status(big.id).request_counts.completed > 0, 120,
                     "the big job under way")
            small = beta.wait(beta.submit_job(sentences(beta.model, 20, seed=32)).id,
                              timeout=240)
            big_then = alpha.status(big.id)
            big = alpha.wait(big.id, timeout=240)
        finally:
            assert worker.stop() == 0
    assert small.status == big.status == JobStatus.COMPLETED
    if order == "share":
        assert big_then.status == JobStatus.IN_PROGRESS
        assert big_then.request_counts.completed < 400, big_then.request_counts
    else:
        assert big_then.status.value in {"finalizing", "completed"}, big_then.status
    assert_exactly_once(alpha, big, 800)
    assert_exactly_once(beta, small, 20)


@pytest.mark.parametrize("claim_size", [1, 4])
def test_weights_split_the_workers_between_backlogged_tenants(tmp_path: Path,
                                                              redis_prefix: str,
                                                              postgres_url: str,
                                                              claim_size: int) -> None:
    """Redis + PostgreSQL, two GPU workers, weights 1 and 3, both tenants with a backlog: over
    the middle half of the run the light tenant gets 25 % of the texts served (± 5 points),
    whether a dispatch message claims one micro-batch or four; every item once."""
    env = embedded_env(tmp_path / "var") | {
        "BEMQ_BROKER_URL": REDIS_URL, "BEMQ_REDIS_PREFIX": redis_prefix,
        "BEMQ_DATABASE_URL": postgres_url, "BEMQ_MIGRATE_ON_START": "1",
        "BEMQ_MAX_BATCH_SIZE": "16", "BEMQ_MODEL_CLASS": "bench.null_model:NullModel",
        "BEMQ_CLAIM_SIZE": str(claim_size), "BEMQ_PIPELINE_DEPTH": str(max(2, claim_size))}
    cfg = settings_for(env)
    with Client(cfg, tenant="light") as light, Client(cfg, tenant="heavy") as heavy:
        light.store.migrate()
        light.store.set_tenant_weight("light", 1)
        light.store.set_tenant_weight("heavy", 3)
        with running(env, light, tmp_path, gpus=2):
            jobs = [client.submit_job(sentences(client.model, 1600, seed=seed))
                    for client, seed in ((light, 41), (heavy, 42))]
            for client, job in zip((light, heavy), jobs, strict=True):
                done_job = client.wait(job.id, timeout=240)
                assert done_job.status == JobStatus.COMPLETED
                assert_exactly_once(client, done_job, 1600)
        with light.store.tx() as cur:
            done = cur.execute(
                "SELECT j.tenant, mb.rows FROM micro_batches mb JOIN jobs j ON j.id = mb.job_id "
                "ORDER BY mb.claimed_at").fetchall()
    # Both have work waiting from the heavy tenant's first claim (the light one's job was
    # submitted first) to its last (it has three times the share of the same work).
    both = [i for i, (tenant, _) in enumerate(done) if tenant == "heavy"]
    span = done[both[0]:both[-1] + 1]
    middle = span[len(span) // 4: 3 * len(span) // 4]
    share = sum(rows for tenant, rows in middle if tenant == "light") / sum(r for _, r in middle)
    assert abs(share - 0.25) <= 0.05, (share, len(middle))
