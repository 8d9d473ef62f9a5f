"""One contract for both blob stores: a local directory and S3 through a real moto_server."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.blobs import BlobNotFound, Blobs, open_blobs
from ops.blobs.s3 import PART_SIZE


@pytest.fixture(params=["local", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Blobs:
    if request.param == "local":
        return open_blobs(f"file://{tmp_path}/blobs")
    moto = request.getfixturevalue("moto")
    return open_blobs(request.getfixturevalue("s3_url"), endpoint_url=moto.url)


def test_put_get_exists_size_delete(blobs: Blobs) -> None:
    """Round trip of one object, and deleting twice is fine."""
    blobs.put("a/b.jsonl", b"one\ntwo\n")
    assert blobs.get("a/b.jsonl") == b"one\ntwo\n"
    assert blobs.exists("a/b.jsonl") and blobs.size("a/b.jsonl") == 8
    assert list(blobs.iter_lines("a/b.jsonl")) == [b"one", b"two"]
    blobs.delete("a/b.jsonl")
    blobs.delete("a/b.jsonl")
    assert not blobs.exists("a/b.jsonl")
    with pytest.raises(BlobNotFound):
        blobs.get("a/b.jsonl")


def test_list_by_prefix_sorted(blobs: Blobs) -> None:
    """list returns keys under a prefix, sorted, and nothing else."""
    for key in ("jobs/x/out/000002.jsonl", "jobs/x/out/000001.jsonl", "jobs/y/out/000001.jsonl"):
        blobs.put(key, b"-")
    assert blobs.list("jobs/x/") == ["jobs/x/out/000001.jsonl", "jobs/x/out/000002.jsonl"]
    assert blobs.list("nothing/") == []


@pytest.mark.timeout(120)
def test_put_chunks_large_object(blobs: Blobs) -> None:
    """A concatenation larger than one S3 part (multipart upload) arrives whole."""
    chunk = b"x" * (1024 * 1024)
    total = blobs.put_chunks("big", (chunk for _ in range(PART_SIZE // len(chunk) + 2)))
    assert total == blobs.size("big") == PART_SIZE + 2 * len(chunk)


def test_failed_put_chunks_publishes_nothing(blobs: Blobs) -> None:
    """If the chunk source fails midway, no object appears under the key."""
    def chunks():
        yield b"a" * (PART_SIZE + 10)
        raise OSError("source died")

    with pytest.raises(OSError, match="source died"):
        blobs.put_chunks("partial", chunks())
    assert not blobs.exists("partial")
