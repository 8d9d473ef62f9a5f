"""The embedded broker's transport delivers each message whole: a message file still being
written (or left by a writer killed mid-write) is never read."""

from __future__ import annotations

from pathlib import Path

import pytest
from kombu import Connection

pytestmark = pytest.mark.timeout(60)


def connection(folder: Path) -> Connection:
    return Connection("filesystem://", transport="ops.fs_broker:Transport", transport_options={
        "data_folder_in": str(folder), "data_folder_out": str(folder),
        "control_folder": str(folder), "store_processed": False})


def test_a_partial_message_file_is_skipped_and_whole_ones_delivered(tmp_path: Path) -> None:
    with connection(tmp_path) as conn:
        simple = conn.SimpleQueue("gpu")
        # What a writer killed mid-write leaves, named before every real message.
        (tmp_path / "0_dead-writer.gpu.msg.partial").write_bytes(b'{"body": "trunc')
        for n in range(3):
            simple.put({"n": n})
        assert [p.name for p in tmp_path.glob("*.partial")] == ["0_dead-writer.gpu.msg.partial"]
        got = []
        for _ in range(3):
            message = simple.get(timeout=5)
            got.append(message.payload["n"])
            message.ack()
        assert sorted(got) == [0, 1, 2]  # names order them to the millisecond only
        with pytest.raises(simple.Empty):
            simple.get(timeout=0.2)
        simple.close()
