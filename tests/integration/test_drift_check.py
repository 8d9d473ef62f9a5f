"""`drift.check` on a real store: the first full window is pinned as the reference (not before
it is full); a shifted recent window alerts (and, being severe, pauses a running canary), an
unshifted one does not. Features go in exactly as workers write them, with their micro-batch's
completion."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ops.canary import controller
from ops.drift import check
from ops.store import Store
from ops.store.features import Feature
from producers.client import Client
from schemas.canary import CanaryState
from tests.conftest import embedded_env
from tests.support.deploy import settings_for, start_worker
from workers.adapters import make_adapter

pytestmark = pytest.mark.timeout(180)


def feed(store: Store, rng: np.random.Generator, *, batches: int, length_mu: float,
         shift: float) -> None:
    basis = np.random.default_rng(99).normal(size=(8, 384))  # one output space for all windows
    with store.tx() as cur:
        for _ in range(batches):
            lengths = np.round(rng.lognormal(length_mu, 0.4, 32)).astype(int).tolist()
            z = rng.normal(size=(4, 8))
            z[:, 0] += shift
            vectors = (z @ basis).tolist()
            shares = rng.dirichlet(np.array([1 + shift, 1, 1, 1 - shift / 2]) * 4, size=8)
            experts = [rng.multinomial(120, p).tolist() for p in shares]  # per sequence
            store._insert_features(cur, [
                Feature("minilm", "lengths", lengths),
                Feature("minilm", "embeddings", vectors, adapter="support-v1"),
                Feature("minilm", "experts", experts, adapter="support-v1")])


@pytest.mark.parametrize("shifted", [False, True])
def test_drift_check_alerts_only_on_shift(shifted: bool, tmp_path: Path) -> None:
    env = embedded_env(tmp_path / "var") | {"BEMQ_DRIFT_MIN_SAMPLES": "200",
                                             "BEMQ_DRIFT_WINDOW_SECONDS": "1"}
    cfg = settings_for(env)
    rng = np.random.default_rng(7)
    with Client(cfg) as client:
        store = client.store
        for n, name in enumerate(("support-v1", "support-v2")):
            path = tmp_path / f"{name}.safetensors"
            path.write_bytes(make_adapter(client.model, seed=n, experts=4, rank=2))
            client.add_adapter(name, path)
        canary = controller.start(store, cfg, model="minilm", stable="support-v1",
                                  canary="support-v2", steps=[10, 100], min_samples=50)

        assert check.run(store, cfg)["status"].startswith("collecting")
        feed(store, rng, batches=40, length_mu=2.5, shift=0.0)
        early = check.run(store, cfg)["status"]  # enough samples, but not yet a whole window
        assert early.startswith("collecting a reference window (first window):"), early
        time.sleep(1.1)
        first = check.run(store, cfg)
        assert first["status"] == "reference pinned (first window): 120 samples"

        feed(store, rng, batches=40, length_mu=3.3 if shifted else 2.5,
             shift=1.0 if shifted else 0.0)
        report = check.run(store, cfg)
        alerting = {c["component"] for c in report["components"] if c["alert"]}
        state = store.get_canary(canary.id).state
        if shifted:
            assert alerting == {"lengths", "embeddings", "experts"} and report["severe"]
            assert report["paused_canaries"] == [canary.id] and state == CanaryState.PAUSED
        else:
            assert alerting == set() and not report["severe"]
            assert state == CanaryState.RUNNING

    printed = subprocess.run([sys.executable, "-m", "producers.cli", "drift", "report"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert report["id"] in printed.stdout
    assert ("SEVERE" in printed.stdout) == shifted


@pytest.mark.parametrize(("args", "message"), [
    (("canary", "start", "--model", "minilm", "--stable", "nope", "--canary", "x"),
     "error: CanaryError: --stable 'nope': no such adapter"),
    (("canary", "start", "--model", "minilm", "--stable", "a", "--canary", "b", "--steps",
      "50,10"), "--steps"),
    (("canary", "abort"), "error: CanaryError: no canary is rolling out"),
    (("restore", "20260101T000000Z-abcdef"), "no complete backup '20260101T000000Z-abcdef'"),
    (("drift", "report"), "no drift report yet"),
])
def test_ops_commands_fail_with_one_line(args: tuple[str, ...], message: str,
                                         tmp_path: Path) -> None:
    env = embedded_env(tmp_path / "var")
    Client(settings_for(env)).close()
    done = subprocess.run([sys.executable, "-m", "producers.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and message in done.stderr
    assert "Traceback" not in done.stderr


def test_drift_from_real_jobs(tmp_path: Path) -> None:
    """Through the pipeline: a worker samples features with each micro-batch; short support
    questions pin the reference, then long pasted logs alert on their lengths."""
    env = embedded_env(tmp_path / "var") | {"BEMQ_DRIFT_MIN_SAMPLES": "100",
                                             "BEMQ_DRIFT_WINDOW_SECONDS": "3",
                                             "BEMQ_DRIFT_EMBEDDING_RATE": "0.5",
                                             "BEMQ_MAX_BATCH_SIZE": "64"}
    cfg = settings_for(env)
    with Client(cfg) as client:
        worker = start_worker(env, client, tmp_path / "worker.log")
        try:
            def run(texts: list[str]) -> None:
                job = client.wait(client.submit_job(texts).id, timeout=120)
                assert job.request_counts.completed == len(texts)

            run([f"how do I reset password {i}" for i in range(200)])
            time.sleep(3)  # the reference is a whole window
            assert check.run(client.store, cfg)["status"].startswith("reference pinned")
            words = ["error", "timeout", "retry", "connection", "refused", "upstream",
                     "worker", "node"]
            run([" ".join(words[(i + k) % len(words)] for k in range(40 + i % 20))
                 for i in range(200)])
            report = check.run(client.store, cfg)  # within a window of the job's completion
        finally:
            worker.stop()
    lengths = next(c for c in report["components"] if c["component"] == "lengths")
    assert lengths["alert"] and lengths["numbers"]["psi"] > 1, json.dumps(lengths)
    assert report["severe"]
