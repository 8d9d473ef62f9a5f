"""The Celery consumer of bemq workers: reconnects to the broker on a short, flat schedule.

Celery's own consumer retries a lost broker connection 2, 4, 6, … up to 30 s apart (kombu's
defaults, which no Celery setting changes). Behind Redis Sentinel the first attempts after a
primary is lost fail while the sentinels elect the replica ("No master found"), so a worker
went on waiting past the failover for as long as the schedule's next step, up to 30 s (4 s in
`test_broker_primary_lost_under_sentinel`, whose sentinels promote in about 2 s). Trying
every `RECONNECT_MAX_SECONDS` at most costs one connection attempt that often per worker, and
a worker keeps trying for as long as the broker is away (`broker_connection_max_retries` is
unset in `celeryconfig`): its work is safe in the store meanwhile.
"""

from __future__ import annotations

import functools
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

RECONNECT_FIRST_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 2.0


class Consumer(CeleryConsumer):
    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = functools.partial(
            conn.ensure_connection, interval_start=RECONNECT_FIRST_SECONDS,
            interval_step=RECONNECT_FIRST_SECONDS, interval_max=RECONNECT_MAX_SECONDS)
        return super().ensure_connected(conn)
