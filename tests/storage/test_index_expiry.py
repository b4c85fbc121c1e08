"""Redis index keys live at least as long as their longest-lived member (``lua/keep.lua``),
on one server (``put.lua``, ``exchange.lua``) and on a Cluster (``index.lua``), and not
much longer: the member's expiry plus a minute of slack."""

from __future__ import annotations

import pytest

from app.storage.base import Put
from app.storage.redis import RedisBackend
from tests.storage.conftest import empty

SLACK = 60
INDEX = "oauth2:tokens:client_id:{web}"


@pytest.fixture(params=["redis", "redis_cluster"])
def redis_like(request: pytest.FixtureRequest) -> RedisBackend:
    backend = request.getfixturevalue(f"{request.param}_backend")
    empty(backend)
    return backend


def expires_in(backend: RedisBackend, key: str = INDEX) -> float:
    """Seconds until ``key`` expires (-1: never)."""
    ms = backend.link.client.pttl(key)
    return ms / 1000 if ms >= 0 else ms


def put(backend: RedisBackend, key: str, ttl: int) -> None:
    record = {"user_id": "alice", "client_id": "web", "grant_id": "g-" + key}
    backend.table("tokens", None).put(key, record, ttl=ttl)


def test_a_new_index_lives_as_long_as_its_member_and_the_slack(redis_like) -> None:
    put(redis_like, "a", 100)
    assert 100 + SLACK - 2 <= expires_in(redis_like) <= 100 + SLACK + 1


def test_a_member_that_outlives_the_index_extends_it(redis_like) -> None:
    put(redis_like, "a", 100)
    put(redis_like, "b", 100 + SLACK + 50)
    assert 2 * SLACK + 150 - 2 <= expires_in(redis_like) <= 2 * SLACK + 150 + 1


def test_members_within_the_slack_or_shorter_leave_it_as_it_is(redis_like) -> None:
    put(redis_like, "a", 100)
    before = redis_like.link.client.pexpiretime(INDEX)
    put(redis_like, "b", 100 + SLACK - 5)  # longer, but the slack covers it
    put(redis_like, "c", 10)  # shorter: never shortens the index
    assert redis_like.link.client.pexpiretime(INDEX) == before
    assert expires_in(redis_like) >= 100 + SLACK - 5 - 2


def test_a_member_that_never_expires_keeps_the_index_for_good(redis_like) -> None:
    put(redis_like, "a", 100)
    put(redis_like, "forever", 0)
    assert expires_in(redis_like) == -1
    put(redis_like, "b", 500)
    assert expires_in(redis_like) == -1


def test_an_index_whose_lasting_member_left_expires_with_the_rest(redis_like) -> None:
    put(redis_like, "forever", 0)
    put(redis_like, "a", 100)
    redis_like.table("tokens", None).delete("forever")
    put(redis_like, "b", 50)  # the index had no expiry: its longest member sets it
    assert 100 + SLACK - 2 <= expires_in(redis_like) <= 100 + SLACK + 1


def test_an_exchange_keeps_the_indexes_of_what_it_writes(redis_backend: RedisBackend) -> None:
    empty(redis_backend)
    tokens = redis_backend.table("tokens", None)
    refresh = redis_backend.table("refresh_tokens", None)
    put(redis_backend, "old", 100)
    record = {"user_id": "alice", "client_id": "web", "grant_id": "g1"}
    taken = redis_backend.exchange(
        (tokens, "old"),
        [Put(tokens, "new", record, 1000), Put(refresh, "r", record, 5000)],
        [],
    )
    assert taken is not None
    assert 1000 + SLACK - 2 <= expires_in(redis_backend) <= 1000 + SLACK + 1
    r_index = "oauth2:refresh_tokens:grant_id:{g1}"
    assert 5000 + SLACK - 2 <= expires_in(redis_backend, r_index) <= 5000 + SLACK + 1


def test_a_busy_index_is_extended_once_a_slack(own_redis_backend: RedisBackend) -> None:
    """Members issued one after the other, each expiring a moment later: one PEXPIREAT
    for all of them while the slack lasts (the point of the slack)."""
    redis_backend = own_redis_backend  # commandstats are the whole server's
    client = redis_backend.link.client
    client.config_resetstat()
    for n in range(20):
        put(redis_backend, f"k{n}", 3600)
    stats = client.info("commandstats")
    # A new index: one PEXPIREAT (the first member) per index: client, user and grant
    # indexes, and each key's grant index is its own (20 of them). The PTTL before the
    # ZADD said each was new: no ZRANGE for its longest-lived member.
    assert stats["cmdstat_pexpireat"]["calls"] == 1 + 1 + 20
    assert "cmdstat_zrange" not in stats
    assert stats["cmdstat_pttl"]["calls"] == 20 * 3
    assert 3600 + SLACK - 2 <= expires_in(redis_backend) <= 3600 + SLACK + 1
