"""A Sentinel broker URL names every sentinel, and every Redis client bemq opens (Celery,
RedBeat, the online queue, the rate limiter) is told all of them and the master's name."""

from __future__ import annotations

import pytest
import redis.sentinel

import celeryconfig
from ops.redis_clients import SentinelTarget, sync_client, target
from ops.settings import Settings

URL = "sentinel://:pw@198.18.0.5:26379;sentinel://198.18.0.6:26380;sentinel://198.18.0.7/2"


def test_every_sentinel_is_kept_with_the_database_and_password() -> None:
    """Each `;`-separated part is one sentinel (port 26379 unless named); the database and the
    password come from the parts that name them."""
    found = SentinelTarget.parse(URL, "bemq")
    assert found.sentinels == (("198.18.0.5", 26379), ("198.18.0.6", 26380),
                               ("198.18.0.7", 26379))
    assert (found.master, found.db, found.password) == ("bemq", 2, "pw")
    assert target("redis://127.0.0.1:6379/0") is None


@pytest.mark.parametrize(("url", "master", "message"), [
    ("sentinel://198.18.0.5:26379", "", "BEMQ_SENTINEL_MASTER"),
    ("sentinel://198.18.0.5:26379;redis://198.18.0.6:6379", "bemq", "'redis://198.18.0.6:6379'"),
])
def test_a_broken_sentinel_setting_stops_start_up_naming_it(url: str, master: str,
                                                            message: str) -> None:
    """No master name, or a part that is not a sentinel, is refused when settings load."""
    with pytest.raises(ValueError, match=message):
        Settings(broker_url=url, sentinel_master=master)


def test_celery_and_redbeat_get_every_sentinel_and_the_master_name() -> None:
    """kombu reads the master from its transport options (broker and result backend alike);
    RedBeat gets its own Sentinel options with the same sentinels."""
    conf = celeryconfig.build(Settings(broker_url=URL, sentinel_master="bemq"))
    assert conf["broker_url"] == URL
    for options in (conf["broker_transport_options"], conf["result_backend_transport_options"]):
        assert options["master_name"] == "bemq"
    assert conf["redbeat_redis_url"].startswith("redis-sentinel")
    beat = conf["redbeat_redis_options"]
    assert beat["sentinels"] == [("198.18.0.5", 26379), ("198.18.0.6", 26380),
                                 ("198.18.0.7", 26379)]
    assert (beat["service_name"], beat["db"]) == ("bemq", 2)
    assert conf["beat_scheduler"] == "workers.beat:LeaderScheduler"


def test_a_client_of_a_sentinel_url_asks_every_sentinel() -> None:
    """The sync client is Sentinel-managed: its pool asks all three sentinels for the primary
    by the master's name."""
    client = sync_client(URL, "bemq")
    pool = client.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert pool.service_name == "bemq"
    assert len(pool.sentinel_manager.sentinels) == 3
