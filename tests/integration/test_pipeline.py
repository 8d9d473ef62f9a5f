"""The batch pipeline end to end with real worker processes, on the embedded default and on
Redis + PostgreSQL + S3: every item exactly once, idempotent redelivery, per-item errors,
cancellation."""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path

import pytest

from producers.broker import send_dispatch
from producers.client import Client
from producers.corpus import sentences
from schemas.batch import JobStatus, OutputLine
from tests.support.deploy import request_lines, settings_for, start_worker
from workers import runner
from workers.runtime import Runtime

pytestmark = pytest.mark.timeout(300)


def test_job_completes_every_item_exactly_once(deployment_env: dict[str, str],
                                               tmp_path: Path) -> None:
    """A 400-item job of varied lengths (and a multi-input item) completes; each custom_id
    appears once with 384-d unit embeddings; a redelivered message changes nothing."""
    cfg = settings_for(deployment_env)
    with Client(cfg) as client:
        worker = start_worker(deployment_env, client, tmp_path / "worker.log")
        try:
            lines = request_lines(sentences(client.model, 400, seed=11))
            lines[5]["body"]["input"] = ["first text", "second text", "third"]
            job = client.submit_job(lines, metadata={"suite": "pipeline"})
            assert job.status == JobStatus.IN_PROGRESS and job.micro_batches > 1
            job = client.wait(job.id, timeout=240)
            assert job.status == JobStatus.COMPLETED
            assert (job.request_counts.total, job.request_counts.completed,
                    job.request_counts.failed) == (400, 400, 0)
            assert job.metadata == {"suite": "pipeline"}
            assert job.completed_at and job.finalizing_at and job.in_progress_at
            output = list(client.results(job.id))
            counts = Counter(line["custom_id"] for line in output)
            assert set(counts) == {f"r-{i}" for i in range(400)} and max(counts.values()) == 1
            for raw in output:
                line = OutputLine.model_validate(raw)
                assert line.error is None and line.response is not None
                for entry in line.response.body["data"]:
                    vec = entry["embedding"]
                    assert len(vec) == 384
                    assert math.isclose(math.fsum(v * v for v in vec), 1.0, rel_tol=1e-4)
            multi = next(r for r in output if r["custom_id"] == "r-5")
            assert [d["index"] for d in multi["response"]["body"]["data"]] == [0, 1, 2]
            assert list(client.errors(job.id)) == []
            before = client.file_content(job.output_file_id)  # type: ignore[arg-type]

            # Messages with nothing left to run, each delivered twice, and one never issued;
            # then a marker job behind them: the worker consumes in order, so once the marker
            # completes they are all used.
            spare = [client.store.add_token(time.time()) for _ in range(3)]
            send_dispatch(cfg, spare + spare + ["never-issued"])
            marker = client.wait(client.submit_job(["marker"]).id, timeout=120)
            assert marker.status == JobStatus.COMPLETED
            again = client.status(job.id)
            assert again.request_counts == job.request_counts
            assert client.file_content(job.output_file_id) == before  # type: ignore[arg-type]
        finally:
            assert worker.stop() == 0


def test_poison_item_lands_in_error_file(tmp_path: Path) -> None:
    """A model error on one item fails that item only, with its reason; the rest complete."""
    from tests.conftest import embedded_env

    env = embedded_env(tmp_path / "var")
    env["BEMQ_MODEL_CLASS"] = "tests.support.poison:PoisonEncoder"
    cfg = settings_for(env)
    with Client(cfg) as client:
        worker = start_worker(env, client, tmp_path / "worker.log")
        try:
            texts = sentences(client.model, 120, seed=5)
            texts[77] = "this one carries the poison word"
            job = client.wait(client.submit_job(texts).id, timeout=120)
        finally:
            worker.stop()
        assert job.status == JobStatus.COMPLETED
        assert (job.request_counts.completed, job.request_counts.failed) == (119, 1)
        errors = list(client.errors(job.id))
        assert [e["custom_id"] for e in errors] == ["item-77"]
        assert errors[0]["error"]["code"] == "inference_error"
        assert "poison" in errors[0]["error"]["message"]
        assert len(list(client.results(job.id))) == 119


def test_cancel_keeps_finished_lines_and_skips_the_rest(tmp_path: Path) -> None:
    """Cancelling after one micro-batch ran ends `cancelled` with exactly that batch's lines;
    the dispatch messages sent for it are later used without running anything."""
    from tests.conftest import embedded_env

    env = embedded_env(tmp_path / "var")
    env["BEMQ_MAX_BATCH_SIZE"] = "16"
    cfg = settings_for(env)
    with Client(cfg) as client:
        job = client.submit_job(sentences(client.model, 64, seed=2))
        assert job.micro_batches >= 4
        # One micro-batch runs through the real runner code in this process.
        token = client.store.add_token(time.time())
        ran = runner.run(Runtime(cfg), token, lambda tokens, _: send_dispatch(cfg, tokens))
        assert ran == f"run {job.id}/0"
        done = client.status(job.id).request_counts.completed
        assert done > 0
        job = client.cancel(job.id)
        assert job.status == JobStatus.CANCELLED and job.cancelled_at and job.cancelling_at
        assert job.request_counts.completed == done
        assert len(list(client.results(job.id))) == done
        worker = start_worker(env, client, tmp_path / "worker.log")
        try:
            marker = client.wait(client.submit_job(["marker"]).id, timeout=120)
            assert marker.status == JobStatus.COMPLETED
        finally:
            worker.stop()
        assert client.status(job.id).request_counts.completed == done
        assert client.store.micro_batch_summary(job.id) == {"done": 1,
                                                            "skipped": job.micro_batches - 1}


def test_job_submitted_while_no_worker_runs_completes_later(tmp_path: Path) -> None:
    """Messages wait in the broker: a job submitted with every worker down completes once one
    starts."""
    from tests.conftest import embedded_env

    env = embedded_env(tmp_path / "var")
    cfg = settings_for(env)
    with Client(cfg) as client:
        job = client.submit_job(["one", "two", "three"])
        assert client.status(job.id).status == JobStatus.IN_PROGRESS
        worker = start_worker(env, client, tmp_path / "worker.log")
        try:
            assert client.wait(job.id, timeout=120).status == JobStatus.COMPLETED
        finally:
            worker.stop()
