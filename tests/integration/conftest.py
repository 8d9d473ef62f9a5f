"""The store under contract: SQLite and a fresh PostgreSQL database, each migrated."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.store import Store, open_store


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/store.sqlite3"
    else:
        url = request.getfixturevalue("postgres_url")
    st = open_store(url, retry_seconds=5)
    st.migrate()
    assert st.migrate() == []  # idempotent
    st.ensure_schema(migrate=False)
    yield st
    st.close()
