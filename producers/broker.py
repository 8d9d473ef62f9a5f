"""Sending dispatch messages (see `ops.store.dispatch`). Producers only send; they never import
the worker code, so the Celery app here is configured from the same `celeryconfig.build` but
registers no tasks."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from celery import Celery

from ops.settings import Settings
from schemas.constants import QUEUE_GPU, TASK_RUN_NEXT


class BrokerUnavailable(RuntimeError):
    """The broker refused or timed out; the work is safe in the store, and reconcile refills
    the window of dispatch messages."""


@functools.cache
def producer_app(cfg: Settings) -> Celery:
    import celeryconfig

    app = Celery("bemq-producer", set_as_current=False)
    app.conf.update(celeryconfig.build(cfg))
    return app


def send_dispatch(cfg: Settings, tokens: Sequence[str]) -> None:
    """Send the window's new dispatch messages (`Store.top_up`)."""
    app = producer_app(cfg)
    try:
        with app.producer_or_acquire() as producer:
            for token in tokens:
                # Results live in the store: ignore_result keeps Celery from loading a
                # result backend on the first send (0.13 s of imports in a fresh process, a
                # twentieth of a 50,000-line submit).
                app.send_task(TASK_RUN_NEXT, args=[token], queue=QUEUE_GPU,
                              producer=producer, retry=True, ignore_result=True,
                              retry_policy={"max_retries": 3, "interval_start": 0.2,
                                            "interval_step": 0.5, "interval_max": 2})
    except Exception as exc:  # kombu raises a variety of connection errors
        raise BrokerUnavailable(f"broker {app.conf.broker_url!r} unreachable: {exc}") from exc


def ping_broker(cfg: Settings) -> None:
    """Connect to the broker once (raises when it is unreachable)."""
    with producer_app(cfg).connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
