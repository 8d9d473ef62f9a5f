"""Property-based: whatever bytes arrive, submission ends in a clear error or a valid job —
never a crash, a hang, or a half-enqueued job."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ops.models import model_files
from ops.settings import Settings
from producers.client import Client, InvalidBatch
from producers.validate import validate_jsonl
from schemas.batch import JobStatus

MODEL = model_files("minilm")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                      children, max_size=4),
    max_leaves=12,
)


def good_line(cid: str, text: str) -> bytes:
    return json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/embeddings",
                       "body": {"model": "minilm", "input": text}}).encode()


line_strategy = st.one_of(
    st.binary(max_size=64),  # arbitrary bytes, bad UTF-8, NUL bytes
    json_values.map(lambda v: json.dumps(v).encode()),  # valid JSON, wrong shape
    st.builds(good_line, st.sampled_from(["a", "b", "c"]), st.text(min_size=1, max_size=30)),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
    st.builds(lambda cid, v: json.dumps({"custom_id": cid, "method": "POST",
                                         "url": "/v1/embeddings", "body": v}).encode(),
              st.text(max_size=5), json_values),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(line_strategy, max_size=12))
def test_validation_never_crashes(lines: list[bytes]) -> None:
    """Every generated file yields errors with a code and a message, or only valid items."""
    result = validate_jsonl(b"\n".join(lines), model=MODEL, served="minilm", max_lines=10,
                            max_bytes=4096)
    for err in result.errors:
        assert err.code and err.message
    if not result.errors:
        assert result.items and all(item.lengths for item in result.items)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Client:
    return Client(Settings(home=tmp_path_factory.mktemp("var"), max_lines=10, max_file_bytes=4096))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(line_strategy, max_size=8))
def test_submission_is_all_or_nothing(client: Client, lines: list[bytes]) -> None:
    """A submission is either a job in progress with every item in stored micro-batches, or a
    failed job with errors and no micro-batch at all."""
    try:
        job = client.submit_job(b"\n".join(lines))
    except InvalidBatch as exc:
        job = exc.job
        assert job.status == JobStatus.FAILED and job.errors and job.errors.data
        assert client.store.micro_batch_summary(job.id) == {}
        return
    assert job.status == JobStatus.IN_PROGRESS
    stored = sum(client.store.micro_batch_summary(job.id).values())
    assert stored == job.micro_batches > 0


def test_huge_inputs_fail_fast(tmp_path: Path) -> None:
    """A million short lines, or one huge line, are refused by the limits in well under a
    second of validation, not parsed."""
    million = b"x\n" * 1_000_000
    start = time.perf_counter()
    result = validate_jsonl(million, model=MODEL, served="minilm", max_lines=50_000,
                            max_bytes=200 * 1024 * 1024)
    assert [e.code for e in result.errors] == ["too_many_lines"]
    huge = good_line("a", "word " * 10_000_000)
    result = validate_jsonl(huge, model=MODEL, served="minilm", max_lines=50_000,
                            max_bytes=10 * 1024 * 1024)
    assert [e.code for e in result.errors] == ["file_too_large"]
    assert time.perf_counter() - start < 5
