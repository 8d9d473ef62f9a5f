"""One contract for both stores (SQLite and a fresh PostgreSQL database): the lifecycle rules
that keep work from being lost or doubled."""

from __future__ import annotations

import random
import threading
import time

from ops.fairshare import DispatchOrder
from ops.store import ClaimOutcome, Claims, Store, Window, open_store
from ops.store.features import Feature
from schemas.batch import BatchError, BatchErrors, FileObject, Job, JobStatus
from schemas.microbatch import Item, MicroBatch, MicroBatchState
from tests.support.services import require

SHARE, ARRIVAL = DispatchOrder.SHARE, DispatchOrder.ARRIVAL
WINDOW = Window(per_worker=2, live_within=15)


def new_job(store: Store, job_id: str = "batch_1", tenant: str = "t", created: int = 100,
            batches: int = 2) -> Job:
    job = Job(id=job_id, status=JobStatus.VALIDATING, created_at=created, tenant=tenant)
    store.create_job(job)
    mbs = [MicroBatch(job_id=job_id, seq=s, state=MicroBatchState.QUEUED, items=[
        Item(line=s * 2 + k, custom_id=f"{job_id}-{s}-{k}", texts=["hi"], lengths=[3], model="m")
        for k in range(2)]) for s in range(batches)]
    if batches:
        store.start_job(job_id, mbs, total=2 * batches)
    return job


def test_start_job_stores_micro_batches_and_moves_to_in_progress(store: Store) -> None:
    """start_job stores every micro-batch and stamps in_progress with the total."""
    new_job(store)
    job = store.get_job("batch_1")
    assert job is not None and job.status == JobStatus.IN_PROGRESS
    assert job.request_counts.total == 4 and job.micro_batches == 2
    assert job.in_progress_at is not None
    assert store.micro_batch_summary("batch_1") == {"queued": 2}


def test_claim_outcomes_and_single_completion(store: Store) -> None:
    """A claim leases; a second claim while leased is BUSY; completion counts once only."""
    new_job(store)
    first = store.claim("batch_1", 0, "w1", lease_seconds=60, max_deliveries=3)
    assert first.outcome == ClaimOutcome.RUN and first.micro_batch is not None
    assert [i.custom_id for i in first.micro_batch.items] == ["batch_1-0-0", "batch_1-0-1"]
    assert store.claim("batch_1", 0, "w2", 60, 3).outcome == ClaimOutcome.BUSY
    assert store.complete("batch_1", 0, n_ok=2, n_err=0).first
    assert not store.complete("batch_1", 0, n_ok=2, n_err=0).first
    assert store.claim("batch_1", 0, "w2", 60, 3).outcome == ClaimOutcome.DONE
    counts = store.get_job("batch_1").request_counts  # type: ignore[union-attr]
    assert (counts.completed, counts.failed) == (2, 0)
    assert store.claim("batch_9", 0, "w", 60, 3).outcome == ClaimOutcome.DONE
    assert not store.complete("batch_1", 0, n_ok=2, n_err=0).job_done
    last = store.complete("batch_1", 1, n_ok=1, n_err=1)  # every item accounted for now
    assert last.first and last.job_done


def test_expired_lease_is_reclaimed_and_counted_to_dead(store: Store) -> None:
    """A lease that expires (worker died) can be claimed again; once `max_deliveries`
    forwards were begun and never ended it is DEAD. Claims alone, and forwards that ended,
    do not count."""
    new_job(store)
    for _ in range(3):  # claimed ahead, never run: not the micro-batch's failures
        assert store.claim("batch_1", 1, "w", lease_seconds=0.01, max_deliveries=2).outcome \
            == ClaimOutcome.RUN
        time.sleep(0.02)
    claim = store.claim("batch_1", 1, "w", lease_seconds=0.01, max_deliveries=2)
    assert store.begin_forward("batch_1", 1, "w")
    assert store.claim("batch_1", 0, "w", 60, 2).outcome == ClaimOutcome.RUN
    assert store.begin_forward("batch_1", 0, "w", finished=("batch_1", 1))  # 1 ended
    assert not store.begin_forward("batch_1", 1, "other")  # not the holder: no forward
    time.sleep(0.02)
    for delivery in (2, 3):
        claim = store.claim("batch_1", 1, "w", lease_seconds=0.01, max_deliveries=2)
        assert claim.outcome == ClaimOutcome.RUN and claim.micro_batch is not None
        assert claim.micro_batch.failed_deliveries == delivery - 2
        assert store.begin_forward("batch_1", 1, "w")  # and the worker dies in it
        time.sleep(0.02)
    assert store.requeue_lapsed() == 1
    assert store.micro_batch_summary("batch_1") == {"queued": 1, "running": 1}
    assert store.claim("batch_1", 1, "w", 60, max_deliveries=2).outcome == ClaimOutcome.DEAD
    assert store.complete("batch_1", 1, 0, 2, dead=True, error="limit").first
    assert store.get_job("batch_1").dead_micro_batches == 1  # type: ignore[union-attr]


def test_dead_holders_lose_their_leases_live_ones_keep_them(store: Store) -> None:
    """A running micro-batch whose holder stopped heartbeating, or has no row, gets its lease
    ended (so reconcile puts it back in the queue at once); a live holder's long lease is
    kept."""
    new_job(store, batches=3)
    store.heartbeat("live", 1, "gpu", "cpu")
    store.heartbeat("silent", 2, "gpu", "cpu")
    with store.tx() as cur:
        cur.execute("UPDATE workers SET last_seen = ? WHERE name = ?", (time.time() - 30, "silent"))
    for seq, holder in enumerate(("live", "silent", "forgotten")):
        assert store.claim("batch_1", seq, holder, 3600, 3).outcome == ClaimOutcome.RUN
        assert store.begin_forward("batch_1", seq, holder)
    assert store.requeue_lapsed() == 0
    assert store.end_dead_leases(dead_after=15) == 2
    assert store.end_dead_leases(dead_after=15) == 0  # already ended: nothing moves twice
    time.sleep(0.01)
    assert store.requeue_lapsed() == 2
    assert store.micro_batch_summary("batch_1") == {"queued": 2, "running": 1}
    assert store.claim("batch_1", 0, "other", 60, 3).outcome == ClaimOutcome.BUSY
    again = store.claim("batch_1", 1, "other", 60, 3)
    assert again.outcome == ClaimOutcome.RUN and again.micro_batch.failed_deliveries == 1


def test_release_requeues_after_its_backoff(store: Store) -> None:
    """A released micro-batch is queued again, but not dispatched before its backoff ends."""
    new_job(store, batches=1)
    store.claim("batch_1", 0, "w", 60, 3)
    assert store.release("batch_1", 0, "someone-else", "blip") is False
    assert store.release("batch_1", 0, "w", "store blip", not_before=time.time() + 0.3) is True
    assert store.micro_batch_summary("batch_1") == {"queued": 1}
    assert store.claim_next(store.add_token(time.time()), "w", 60, 3, SHARE,
                            WINDOW).outcome == ClaimOutcome.IDLE
    assert store.top_up(WINDOW) == []  # nothing ready yet: no message to send
    time.sleep(0.35)
    assert len(store.top_up(WINDOW)) == 1
    got = store.claim_next(store.add_token(time.time()), "w", 60, 3, SHARE, WINDOW)
    assert got.outcome == ClaimOutcome.RUN and got.claims[0].micro_batch.seq == 0  # type: ignore[union-attr]


def test_cancel_skips_queued_and_running_finish(store: Store) -> None:
    """Cancelling skips queued micro-batches; a later claim of them is SKIP."""
    new_job(store)
    store.claim("batch_1", 0, "w", 60, 3)
    assert store.cancel_job("batch_1") is True
    assert store.cancel_job("batch_1") is False
    job = store.get_job("batch_1")
    assert job.status == JobStatus.CANCELLING and job.cancelling_at is not None  # type: ignore[union-attr]
    assert store.micro_batch_summary("batch_1") == {"running": 1, "skipped": 1}
    assert store.claim("batch_1", 1, "w", 60, 3).outcome == ClaimOutcome.DONE
    assert store.complete("batch_1", 0, 2, 0).first
    assert store.open_micro_batches("batch_1") == 0
    assert store.finished_shards("batch_1") == [(0, 2, 0)]


def test_expire_skips_queued_work(store: Store) -> None:
    """Expiry stamps expired_at once and skips queued micro-batches."""
    new_job(store)
    assert store.expire("batch_1") is True
    assert store.expire("batch_1") is False
    assert store.get_job("batch_1").expired_at is not None  # type: ignore[union-attr]
    assert store.micro_batch_summary("batch_1") == {"skipped": 2}


def test_set_status_guards_and_stamps(store: Store) -> None:
    """set_status moves only from the allowed statuses and stamps the status's timestamp."""
    new_job(store)
    assert store.set_status("batch_1", JobStatus.FINALIZING, only_from=(JobStatus.VALIDATING,)) \
        is False
    assert store.set_status("batch_1", JobStatus.FINALIZING,
                            only_from=(JobStatus.IN_PROGRESS,)) is True
    job = store.get_job("batch_1")
    assert job.status == JobStatus.FINALIZING and job.finalizing_at is not None  # type: ignore[union-attr]


def test_failed_job_keeps_its_errors(store: Store) -> None:
    """fail_job stores line-numbered errors that come back on the job."""
    new_job(store, batches=0)
    store.fail_job("batch_1", BatchErrors(data=[BatchError(code="invalid_json", message="line 3",
                                                           line=3)]))
    job = store.get_job("batch_1")
    assert job.status == JobStatus.FAILED and job.failed_at is not None  # type: ignore[union-attr]
    assert job.errors.data[0].line == 3  # type: ignore[union-attr]


def test_list_is_per_tenant_newest_first_with_cursor(store: Store) -> None:
    """list_jobs pages newest first by cursor and never shows another tenant's jobs."""
    for n in range(5):
        new_job(store, f"batch_{n}", created=100 + n, batches=0)
    new_job(store, "batch_other", tenant="u", created=500, batches=0)
    page1 = store.list_jobs("t", limit=2)
    assert [j.id for j in page1] == ["batch_4", "batch_3"]
    page2 = store.list_jobs("t", after="batch_3", limit=10)
    assert [j.id for j in page2] == ["batch_2", "batch_1", "batch_0"]
    assert store.get_job("batch_other", tenant="t") is None


def test_files_and_heartbeats(store: Store) -> None:
    """Files are per tenant; worker heartbeats show live workers."""
    store.add_file(FileObject(id="file-1", bytes=3, created_at=1, filename="a.jsonl",
                              purpose="batch", tenant="t"), "files/file-1")
    assert store.get_file("file-1", "t")[1] == "files/file-1"  # type: ignore[index]
    assert store.get_file("file-1", "u") is None
    store.delete_files(["file-1"])
    assert store.get_file("file-1") is None
    store.heartbeat("w1", 42, "gpu", "cpu")
    assert [w["name"] for w in store.live_workers(10)] == ["w1"]
    store.heartbeat("w1", 42, "gpu,online", "cpu", online_rps=123.5)  # the measured rate
    assert [(w["queues"], w["online_rps"]) for w in store.live_workers(10)] == \
        [("gpu,online", 123.5)]
    with store.tx() as cur:
        cur.execute("UPDATE workers SET last_seen = ? WHERE name = ?", (time.time() - 60, "w1"))
    assert store.live_workers(10) == []
    assert [w["name"] for w in store.live_workers(None)] == ["w1"]
    store.forget_worker("w1")
    assert store.live_workers(10) == []


def test_reconcile_queries_find_exactly_the_jobs_to_act_on(store: Store) -> None:
    """overdue_jobs: in progress past expires_at, once; finishable_jobs: no open micro-batch."""
    new_job(store, "batch_1")
    new_job(store, "batch_2")
    with store.tx() as cur:
        cur.execute("UPDATE jobs SET expires_at = ? WHERE id = ?", (10, "batch_1"))
        cur.execute("UPDATE jobs SET expires_at = ? WHERE id = ?", (10**12, "batch_2"))
    assert store.overdue_jobs(now=1000) == ["batch_1"]
    assert store.expire("batch_1") is True
    assert store.overdue_jobs(now=1000) == []
    assert store.finishable_jobs((JobStatus.IN_PROGRESS,)) == ["batch_1"]  # all skipped
    for seq in (0, 1):
        store.claim("batch_2", seq, "w", 60, 3)
        assert store.finishable_jobs((JobStatus.IN_PROGRESS,)) == ["batch_1"]
        store.complete("batch_2", seq, 2, 0)
    assert sorted(store.finishable_jobs((JobStatus.IN_PROGRESS,))) == ["batch_1", "batch_2"]


def test_feature_window_reads_a_uniform_sample_of_outputs(store: Store) -> None:
    """Micro-batches of 200 and of 4 outputs each keep 4 vectors; a bounded read of the window
    still draws outputs uniformly (98 % from the large batches), in the live window and in its
    pinned copy; reading the newest rows instead would give half from each."""
    random.seed(3)
    sampled = [Feature("m", "embeddings", [[1.0 if big else 0.0]] * 4,
                       weight=(200 if big else 4) / 4) for big in [True, False] * 200]
    with store.tx() as cur:
        store._insert_features(cur, sampled)
    assert store.pin_reference("m", since=0, reason="test") == 400
    for reference in (False, True):
        rows = store.features("m", "embeddings", reference=reference, limit=50)
        vectors = [v[0] for _, data in rows for v in data]
        assert len(rows) == 50 and sum(vectors) / len(vectors) > 0.9, sum(vectors) / len(vectors)


def test_a_jobs_features_count_in_drift_windows_only_once_it_completes(store: Store) -> None:
    """A running job's micro-batches run shortest first: its features wait for its completion
    (then count from that moment, also for pinning); a cancelled job's are deleted."""
    for job_id in ("batch_1", "batch_2"):
        new_job(store, job_id)
        with store.tx() as cur:
            store._insert_features(cur, [Feature("m", "lengths", [3, 3], job_id=job_id)])
    with store.tx() as cur:  # online work (no job) counts at once
        store._insert_features(cur, [Feature("m", "lengths", [5])])
    assert [d for _, d in store.features("m", "lengths", reference=False)] == [[5]]
    assert store.pin_reference("m", since=0, reason="test") == 1

    before = time.time()
    for seq in (0, 1):
        store.complete("batch_1", seq, 2, 0)
    assert store.set_status("batch_1", JobStatus.COMPLETED, only_from=(JobStatus.IN_PROGRESS,))
    assert store.cancel_job("batch_2")
    assert store.set_status("batch_2", JobStatus.CANCELLED, only_from=(JobStatus.CANCELLING,))
    assert sorted(d for _, d in store.features("m", "lengths", reference=False,
                                               since=before)) == [[3, 3]]
    assert store.pin_reference("m", since=before, reason="test") == 1
    with store.tx() as cur:
        left = cur.execute("SELECT job_id FROM features WHERE reference = 0 AND job_id "
                           "IS NOT NULL").fetchall()
    assert [r[0] for r in left] == ["batch_1"]


def test_a_claims_wait_for_the_dispatch_lock_is_not_counted_as_its_hold(postgres_url: str
                                                                        ) -> None:
    """A claim queued behind another transaction that holds the dispatch lock reports that wait
    apart from its own hold: workers export the holds (`bem_dispatch_lock_seconds`), whose sum
    per second is the share of the lock in use, and a wait counted there would be counted twice
    (the holder's hold, and again as the waiter's)."""
    st = open_store(postgres_url, retry_seconds=5)
    try:
        st.migrate()
        new_job(st)
        token = st.add_token(time.time())
        with st.tx() as cur:  # the lock, held for a second by this transaction
            cur.execute("UPDATE dispatch SET value = value + 1 WHERE name = 'turns'")
            got: list[Claims] = []
            claim = threading.Thread(target=lambda: got.append(
                st.claim_next(token, "w", 60, 3, SHARE, WINDOW)), name="test-claim")
            claim.start()
            time.sleep(1.0)
        claim.join(30)
        (claims,) = got
        assert claims.outcome == ClaimOutcome.RUN
        assert claims.lock_wait_seconds > 0.8, claims
        assert claims.locked_seconds < 0.5, claims
    finally:
        st.close()


def test_reclaim_keeps_a_churning_table_from_growing(postgres_url: str) -> None:
    """Rows rewritten again and again take no more room once `reclaim` runs between rounds
    (PostgreSQL keeps dead rows until a VACUUM; the shared server here runs without
    autovacuum)."""
    st = open_store(postgres_url, retry_seconds=5)
    try:
        st.migrate()
        new_job(st, batches=50)

        def churn_and_measure() -> int:
            with st.tx() as cur:
                cur.execute("UPDATE micro_batches SET items = ? WHERE job_id = ?",
                            (json_blob(), "batch_1"))
            st.reclaim(["micro_batches"])
            with st.tx() as cur:
                return int(cur.execute(
                    "SELECT pg_total_relation_size('micro_batches')").fetchone()[0])

        # Without reclaim each round adds the table's whole size again (10 rounds: ~5x); with
        # it, space is reused (a concurrent snapshot elsewhere may hold back one round's).
        sizes = [churn_and_measure() for _ in range(10)]
        assert sizes[-1] <= 1.5 * max(sizes[:2]), sizes
    finally:
        st.close()


def test_reclaim_keeps_the_planner_statistics_from_growing(postgres_url: str) -> None:
    """Each reclaim's ANALYZE replaces `features`' statistics (its `data` histogram is wide
    enough to be stored out of line); the catalog that holds them stays the same size over
    many reclaims instead of growing by a copy each time (the shared server here runs without
    autovacuum, which would otherwise be the one to clean it)."""
    st = open_store(postgres_url, retry_seconds=5)
    try:
        st.migrate()
        rng = random.Random(3)
        with st.tx() as cur:
            for i in range(2000):
                cur.execute("INSERT INTO features (at, model, kind, adapter, reference, "
                            "sample_key, data) VALUES (?, 'm', 'k', '', 0, ?, ?)",
                            (float(i), rng.random(), "".join(rng.choices("abcdef", k=600))))

        def statistics_bytes() -> int:
            st.reclaim(["features"])
            with st.tx() as cur:
                return int(cur.execute(
                    "SELECT pg_total_relation_size('pg_catalog.pg_statistic')").fetchone()[0])

        sizes = [statistics_bytes() for _ in range(12)]
        assert sizes[-1] <= max(sizes[:2]) + 64 * 1024, sizes
    finally:
        st.close()


def test_micro_batches_are_compressed_with_lz4_where_the_server_has_it(postgres_url: str
                                                                        ) -> None:
    """A stored micro-batch's texts and token ids are compressed with lz4 (the session's
    `default_toast_compression`), not with pglz, which cost half a large submit's store time."""
    st = open_store(postgres_url, retry_seconds=5)
    try:
        st.migrate()
        with st.tx() as cur:
            (methods,) = cur.execute("SELECT enumvals FROM pg_settings "
                                     "WHERE name = 'default_toast_compression'").fetchone()
        if "lz4" not in methods:
            require("lz4 compression", f"this PostgreSQL offers only {methods}")
        job = Job(id="batch_z", status=JobStatus.VALIDATING, created_at=1, tenant="t")
        st.create_job(job)
        rng = random.Random(5)
        items = [Item(line=k, custom_id=f"c{k}", texts=[" ".join(
            rng.choices(["alpha", "beta", "gamma", "delta"], k=30))], lengths=[32], model="m")
            for k in range(100)]  # over 10 KB of JSON: past the 2 KB at which TOAST compresses
        tokens = bytes(rng.randrange(256) for _ in range(4000)) * 4  # repeats: it compresses
        st.start_job(job.id, [MicroBatch(job_id=job.id, seq=0, state=MicroBatchState.QUEUED,
                                         items=items, tokens=tokens)], total=100)
        with st.tx() as cur:
            row = cur.execute("SELECT pg_column_compression(items), "
                              "pg_column_compression(tokens) FROM micro_batches "
                              "WHERE job_id = ?", (job.id,)).fetchone()
        assert row == ("lz4", "lz4")
    finally:
        st.close()


def json_blob() -> str:
    """About 8 KB of JSON that does not compress away (so it is stored out of line)."""
    rng = random.Random()
    return "[" + ",".join(str(rng.random()) for _ in range(400)) + "]"


def test_a_caller_string_with_nul_names_nothing(store: Store) -> None:
    """PostgreSQL text cannot hold NUL: an id, page anchor or filter with one finds nothing on
    both back-ends instead of failing the request."""
    new_job(store)
    assert store.get_job("batch\x001", "t") is None
    assert store.get_file("file\x00", "t") is None
    assert store.list_jobs("t", after="batch\x00") == []
    assert store.list_files("t", purpose="batch\x00") == []
    assert store.list_files("t", after="file\x00") == []
