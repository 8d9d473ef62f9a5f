"""Adapters through the whole pipeline: `bemq adapters add`, a job mixing adapter and base
items in shared micro-batches, and unknown adapter names refused at submit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from producers.client import Client, InvalidBatch
from schemas.batch import JobStatus
from tests.support.deploy import request_lines, settings_for, start_worker
from workers.adapters import make_adapter

pytestmark = pytest.mark.timeout(300)


def test_job_mixing_adapters_and_base(deployment_env: dict[str, str], tmp_path: Path) -> None:
    """Items for minilm, minilm:support-v1 and minilm:support-v2 complete in one job; the
    adapter rows differ from the base rows for the same text; an unknown name fails at submit."""
    cfg = settings_for(deployment_env)
    with Client(cfg) as client:
        for n, name in enumerate(("support-v1", "support-v2")):
            path = tmp_path / f"{name}.safetensors"
            path.write_bytes(make_adapter(client.model, seed=n, experts=4, rank=4, b_std=0.05))
            added = subprocess.run(
                [sys.executable, "-m", "producers.cli", "adapters", "add", name, str(path)],
                env=deployment_env, capture_output=True, text=True, timeout=120,
            )
            assert added.returncode == 0, added.stderr
        listed = subprocess.run([sys.executable, "-m", "producers.cli", "adapters", "list"],
                                env=deployment_env, capture_output=True, text=True, timeout=60)
        assert "support-v1" in listed.stdout and "support-v2" in listed.stdout

        models = ["minilm", "minilm:support-v1", "minilm:support-v2"]
        lines = []
        for i in range(60):
            line = request_lines([f"same text number {i // 3}"], model=models[i % 3])[0]
            line["custom_id"] = f"r-{i}"
            lines.append(line)
        with pytest.raises(InvalidBatch, match="unknown adapter 'support-v9'"):
            client.submit_job([*lines, request_lines(["x"], model="minilm:support-v9",
                                                     prefix="bad")[0]])

        worker = start_worker(deployment_env, client, tmp_path / "worker.log")
        try:
            job = client.submit_job(lines)
            assert job.micro_batches == 1  # all three kinds share one micro-batch
            job = client.wait(job.id, timeout=240)
        finally:
            worker.stop()
        assert job.status == JobStatus.COMPLETED and job.request_counts.completed == 60
        out = {r["custom_id"]: r["response"]["body"] for r in client.results(job.id)}
        for k in range(20):
            base, v1, v2 = (out[f"r-{3 * k + j}"] for j in range(3))
            assert (base["model"], v1["model"], v2["model"]) == tuple(models)
            vb, va, vc = (b["data"][0]["embedding"] for b in (base, v1, v2))
            assert max(abs(x - y) for x, y in zip(vb, va, strict=True)) > 1e-3
            assert max(abs(x - y) for x, y in zip(va, vc, strict=True)) > 1e-3
