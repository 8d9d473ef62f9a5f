"""The embedded broker's transport delivers each message whole: a message file still being
written (or left by a writer killed mid-write) is never read."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from kombu import Connection

pytestmark = pytest.mark.timeout(60)


def connection(folder: Path) -> Connection:
    return Connection("filesystem://", transport="ops.fs_broker:Transport", transport_options={
        "data_folder_in": str(folder), "data_folder_out": str(folder),
        "control_folder": str(folder), "store_processed": False})


def test_a_partial_message_file_is_skipped_and_whole_ones_delivered(tmp_path: Path) -> None:
    # kombu keeps the filesystem transport's bindings per process, not per folder: a queue
    # name no other test used gets its binding written to this folder.
    name = f"q{uuid.uuid4().hex[:8]}"
    with connection(tmp_path) as conn:
        simple = conn.SimpleQueue(name)
        # What a writer killed mid-write leaves, named before every real message.
        (tmp_path / f"0_dead-writer.{name}.msg.partial").write_bytes(b'{"body": "trunc')
        for n in range(3):
            simple.put({"n": n})
        assert [p.name for p in tmp_path.glob("*.partial")] == [f"0_dead-writer.{name}.msg.partial"]
        got = []
        for _ in range(3):
            message = simple.get(timeout=5)
            got.append(message.payload["n"])
            message.ack()
        assert sorted(got) == [0, 1, 2]  # names order them to the millisecond only
        with pytest.raises(simple.Empty):
            simple.get(timeout=0.2)
        simple.close()
