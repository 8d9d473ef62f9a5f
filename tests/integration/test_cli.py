"""The `bemq` CLI as a user runs it: real subprocesses against a real worker (embedded)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from producers.client import Client, InvalidBatch
from tests.conftest import embedded_env
from tests.support.deploy import request_lines, settings_for, start_worker

pytestmark = pytest.mark.timeout(300)
BEMQ = [sys.executable, "-m", "producers.cli"]


def bemq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BEMQ, *args], env=env, capture_output=True, text=True, timeout=180)


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_submit_wait_status_results_jobs(tmp_path: Path) -> None:
    """submit --wait shows progress and completes; status, results -o and jobs show the job."""
    env = embedded_env(tmp_path / "var")
    with Client(settings_for(env)) as client:
        worker = start_worker(env, client, tmp_path / "worker.log")
        try:
            rows = request_lines([f"sentence number {i}" for i in range(30)])
            done = bemq(env, "submit", str(write_jsonl(tmp_path / "in.jsonl", rows)), "--wait",
                        "-m", "team=search", "--expires-after", "7200",
                        "--output-expires-after", "3600")
            assert done.returncode == 0, done.stderr
            job_id = done.stdout.split()[0]
            assert f"{job_id} completed: 30 completed, 0 failed of 30" in done.stdout
            assert "30/30" in done.stderr  # the progress bar
            status = bemq(env, "status", job_id, "--json")
            obj = json.loads(status.stdout)
            assert obj["status"] == "completed" and obj["metadata"] == {"team": "search"}
            upload = client.store.get_file(obj["input_file_id"])
            assert upload is not None
            assert upload[0].expires_at == upload[0].created_at + 7200
            output = client.store.get_file(obj["output_file_id"])
            assert output is not None and output[0].expires_at is not None
            assert 0 < output[0].expires_at - obj["completed_at"] <= 3600 + 1
            out = tmp_path / "out.jsonl"
            assert bemq(env, "results", job_id, "-o", str(out)).returncode == 0
            ids = [json.loads(line)["custom_id"] for line in out.read_text().splitlines()]
            assert sorted(ids) == sorted(f"r-{i}" for i in range(30))
            assert job_id in bemq(env, "jobs").stdout
            assert bemq(env, "wait", job_id).returncode == 0
        finally:
            worker.stop()


def test_bad_input_fails_with_line_and_field_and_enqueues_nothing(tmp_path: Path) -> None:
    """A file with bad lines exits 1 naming each line and field; the job is failed, no
    micro-batch is stored and no message reaches the broker."""
    env = embedded_env(tmp_path / "var")
    rows = request_lines(["fine", "also fine"])
    rows.append('{"custom_id": "x", "method": "POST"')
    bad = dict(request_lines(["z"])[0], custom_id="r-0")
    rows.append(bad)
    result = bemq(env, "submit", str(write_jsonl(tmp_path / "bad.jsonl", rows)))
    assert result.returncode == 1
    assert "line 3: malformed JSON" in result.stderr
    assert "line 4: custom_id 'r-0' already used on line 1" in result.stderr
    assert "Traceback" not in result.stderr
    job_id = result.stderr.split("batch ")[1].split()[0]
    with Client(settings_for(env)) as client:
        job = client.status(job_id)
        assert job.status.value == "failed" and len(job.errors.data) == 2  # type: ignore[union-attr]
        assert client.store.micro_batch_summary(job_id) == {}
    queue = tmp_path / "var" / "broker" / "queue"
    assert not queue.exists() or list(queue.iterdir()) == []


def test_a_tenants_queued_tokens_are_bounded(tmp_path: Path) -> None:
    """Past BEMQ_TENANT_MAX_QUEUED_TOKENS a job fails validation, naming the limit and what is
    queued, with no micro-batch stored; another tenant is not held back by it."""
    env = embedded_env(tmp_path / "var") | {"BEMQ_TENANT_MAX_QUEUED_TOKENS": "100"}
    cfg = settings_for(env)
    with Client(cfg, tenant="acme") as acme, Client(cfg, tenant="beta") as beta:
        first = acme.submit_job([f"text {i}" for i in range(10)])  # 40 tokens, no worker
        assert acme.store.queued_tokens("acme") == 40
        with pytest.raises(InvalidBatch) as refused:
            acme.submit_job([f"more {i}" for i in range(20)])  # 80 more would pass 100
        job = refused.value.job
        assert [e.code for e in job.errors.data] == ["token_limit_exceeded"]  # type: ignore[union-attr]
        assert ("tenant 'acme' has 40 tokens queued; this job's 80 would pass "
                "BEMQ_TENANT_MAX_QUEUED_TOKENS (100)") in job.errors.data[0].message  # type: ignore[union-attr]
        assert acme.store.micro_batch_summary(job.id) == {}
        assert beta.submit_job([f"beta {i}" for i in range(20)]).request_counts.total == 20
        acme.cancel(first.id)


def test_truncate_for_a_whole_job_and_in_short_form(tmp_path: Path) -> None:
    """An over-long line is refused by default; `bemq submit --truncate` and
    `submit_job(truncate=True)` cut it, and so does `truncate` given in a short-form item,
    whose other keys are carried too. An unknown short-form key is refused by name and index."""
    env = embedded_env(tmp_path / "var")
    long_text = "word " * 400
    path = write_jsonl(tmp_path / "long.jsonl", request_lines(["short one", long_text]))
    refused = bemq(env, "submit", str(path))
    assert refused.returncode == 1 and "line 2: body.input has 402 tokens" in refused.stderr
    cut = bemq(env, "submit", str(path), "--truncate")
    assert cut.returncode == 0, cut.stderr
    with Client(settings_for(env)) as client:
        assert client.status(cut.stdout.split()[0]).request_counts.total == 2
        job = client.submit_job([{"custom_id": "a", "input": long_text, "truncate": True},
                                 {"custom_id": "b", "input": "fine", "model": "minilm"}])
        assert job.request_counts.total == 2
        assert client.submit_job([long_text], truncate=True).request_counts.total == 1
        with pytest.raises(ValueError, match=r"items\[1\]: unknown key 'truncat'"):
            client.submit_job([{"input": "x"}, {"input": "y", "truncat": True}])


@pytest.mark.parametrize(
    "args",
    [("status", "batch_nope"), ("wait", "batch_nope"), ("results", "batch_nope"),
     ("cancel", "batch_nope")],
)
def test_unknown_job_is_one_readable_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Every job command given an unknown id exits 1 with a single line and no traceback."""
    result = bemq(embedded_env(tmp_path / "var"), *args)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: NotFound: no job 'batch_nope'"


def test_bad_setting_is_one_readable_line(tmp_path: Path) -> None:
    """A bad BEMQ_* value stops the CLI with the variable's name; --debug shows the traceback."""
    env = embedded_env(tmp_path / "var") | {"BEMQ_DATABASE_URL": "mysql://nope"}
    result = bemq(env, "jobs")
    assert result.returncode == 1
    assert result.stderr.startswith("error: SettingsError: BEMQ_DATABASE_URL:")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" in bemq(env, "--debug", "jobs").stderr


def test_unreachable_store_is_one_readable_line(tmp_path: Path) -> None:
    """An unreachable PostgreSQL gives one line after the bounded retry, not a hang."""
    from tests.support.services import free_port

    env = embedded_env(tmp_path / "var") | {
        "BEMQ_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x",
        "BEMQ_DB_RETRY_SECONDS": "1",
    }
    result = bemq(env, "status", "batch_x")
    assert result.returncode == 1
    assert result.stderr.startswith("error: StoreUnavailable: PostgreSQL unreachable")


def test_tenant_weights_priority_and_every_tenants_jobs(tmp_path: Path) -> None:
    """An operator sets a weight and lists tenants; a submitted --priority reaches the job and
    `jobs --all-tenants` shows every tenant's jobs with tenant and priority (no worker runs:
    the work stays queued and the queue shows in `tenants list`); bad values are refused with
    one line naming the argument."""
    env = embedded_env(tmp_path / "var") | {"COLUMNS": "200"}
    rows = write_jsonl(tmp_path / "in.jsonl", request_lines(["one", "two", "three"]))
    set_weight = bemq(env, "tenants", "set-weight", "search", "3")
    assert set_weight.returncode == 0 and "search: weight 3" in set_weight.stdout
    first = bemq(env, "--tenant", "search", "submit", str(rows), "--priority", "7")
    second = bemq(env, "--tenant", "ads", "submit", str(rows))
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    with Client(settings_for(env)) as client:
        job = client.store.get_job(first.stdout.split()[0])
    assert job is not None and job.priority == 7 and job.metadata == {"priority": "7"}
    listed = bemq(env, "tenants", "list").stdout
    assert any(line.split("│")[1:3] == [" search ", " 3      "] and " 3 " in line
               for line in listed.splitlines() if "search" in line), listed
    everyone = bemq(env, "jobs", "--all-tenants").stdout
    assert first.stdout.split()[0] in everyone and second.stdout.split()[0] in everyone
    assert "ads" in everyone and "search" in everyone
    assert second.stdout.split()[0] not in bemq(env, "--tenant", "search", "jobs").stdout
    bad = bemq(env, "tenants", "set-weight", "search", "0")
    assert bad.returncode != 0 and "WEIGHT" in bad.stderr
    bad = bemq(env, "submit", str(rows), "--priority", "101")
    assert bad.returncode != 0 and "--priority" in bad.stderr
