"""The bench's bulk loads wait for Redis to finish rehashing before anything is measured."""

from __future__ import annotations

import pytest
import redis

from bench import loader
from tests.backends import redis_url, require_service


@pytest.mark.parametrize(
    ("slots", "state"),
    [(0, True), (4, True), (1 << 23, True), (3 << 22, False), (3 << 2, False), (5 << 20, None)],
)
def test_a_table_is_single_at_a_power_of_two_and_moving_at_two_of_them(
    slots: int, state: bool | None
) -> None:
    assert loader._settled(slots) is state


def test_settle_returns_once_both_tables_of_the_database_are_single() -> None:
    url = redis_url()
    require_service("redis", url)
    db = int(url.rsplit("/", 1)[1])
    with redis.Redis.from_url(url) as client:
        client.flushdb()
        try:
            with client.pipeline(transaction=False) as pipe:
                for i in range(20_000):  # past 2^14: both tables grow to 2^15 slots
                    pipe.set(f"settle:{i}", "x", px=600_000)
                pipe.execute()
            assert loader.settle(url, timeout=60) < 60
            assert loader._slots(client, db) == (1 << 15, 1 << 15)
        finally:
            client.flushdb()
