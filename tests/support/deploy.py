"""Helpers to run a client and real workers for one test deployment environment."""

from __future__ import annotations

from pathlib import Path

from ops.settings import Settings
from producers.client import Client
from producers.local_worker import LocalWorker


def settings_for(env: dict[str, str]) -> Settings:
    """The Settings a process started with `env` would read."""
    return Settings(**{k[5:].lower(): v for k, v in env.items()
                       if k.startswith("BEMQ_") and k != "BEMQ_REQUIRE_SERVICES"})


def start_worker(env: dict[str, str], client: Client, log: Path, **kw: object) -> LocalWorker:
    worker = LocalWorker(env, log, **kw).start()  # type: ignore[arg-type]
    try:
        worker.wait_ready(client.store)
    except Exception:
        worker.kill()
        raise
    return worker


def request_lines(texts: list[str], model: str = "minilm", prefix: str = "r") -> list[dict]:
    return [{"custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/embeddings",
             "body": {"model": model, "input": t}} for i, t in enumerate(texts)]
