"""A Kronecker-factored adapter is registered like any other (its factors' shapes checked) and
served by a real worker in one job beside a low-rank adapter and the base model: each row
gets what the runtime computes for it alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ops.settings import Settings
from producers.client import Client
from tests.conftest import embedded_env
from tests.support.adapters import install
from tests.support.deploy import settings_for, start_worker
from workers.adapters import make_adapter
from workers.runtime import Runtime

pytestmark = pytest.mark.timeout(300)
TEXTS = ["a question about invoices", "routing through experts in a smaller space",
         "the third line", "and a fourth, somewhat longer, line of text"]


def test_a_kronecker_adapter_in_a_mixed_job(tmp_path: Path) -> None:
    env = embedded_env(tmp_path / "var")
    cfg = settings_for(env)
    with Client(cfg) as client:
        files = {"kron": make_adapter(client.model, seed=1, b_std=0.05, kron_shape=(16, 32),
                                      kron_rank=4),
                 "low": make_adapter(client.model, seed=2, b_std=0.05)}
        for name, data in files.items():
            (tmp_path / name).write_bytes(data)
            client.add_adapter(name, tmp_path / name)
        assert {a.name: (a.experts, a.rank) for a in client.adapters()} == \
            {"kron": (1, 0), "low": (4, 8)}
        worker = start_worker(env, client, tmp_path / "worker.log")
        try:
            names = ["kron", "low", None, "kron"]
            lines = [{"custom_id": str(i), "input": t,
                      "model": "minilm" + (f":{n}" if n else "")}
                     for i, (t, n) in enumerate(zip(TEXTS, names, strict=True))]
            job = client.wait(client.submit_job(lines).id, timeout=120)
            assert job.request_counts.completed == len(TEXTS), job
            got = {int(r["custom_id"]): np.array(r["response"]["body"]["data"][0]["embedding"])
                   for r in client.results(job.id)}
        finally:
            worker.stop()
    rt = Runtime(Settings(home=tmp_path / "local", device="cpu"))
    install(rt, **files)
    for i, (text, name) in enumerate(zip(TEXTS, names, strict=True)):
        assert np.allclose(got[i], rt.embed([text], [name])[0].numpy(), atol=1e-5), name
    base = rt.embed([TEXTS[0]])[0].numpy()
    assert np.abs(got[0] - base).max() > 1e-3
