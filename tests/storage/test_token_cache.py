"""The per-process token cache (``app.oauth2.token_cache``) on every backend.

Two ``GrantStore`` objects on one storage URL, each with its own ``Storage`` and cache
(so its own channel, connection and subscriber thread) play two processes. A hit is
shown by deleting the record behind the cache's back (no invalidation): a cache that
serves it then is serving from memory.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from redis.cluster import RedisCluster

from app.oauth2.grant_store import GrantStore
from app.oauth2.token_cache import (
    APPLICATION_NAME,
    RedisChannel,
    TokenCache,
    build,
    channel_for,
)
from app.settings import Settings
from app.storage import Storage
from app.storage.base import Backend, Probe, StorageUnavailable
from app.storage.postgres import PostgresBackend
from app.storage.redis import RedisBackend

from .conftest import empty

STALENESS = 0.2


Store = Callable[[], GrantStore]


@pytest.fixture(params=["redis", "postgres", "redis_cluster"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each backend with a channel (SQLite has none: test_sqlite_is_never_cached)."""
    shared: Backend = request.getfixturevalue(f"{request.param}_backend")
    empty(shared)
    return shared


@pytest.fixture
def stores(backend: Backend) -> Iterator[Store]:
    """Make grant stores with caches on ``backend``'s URL; close them all afterwards.
    On Redis their channels are the test's own: pub/sub ignores database numbers, and
    the other xdist worker's tests revoke the same grants (``g1``) on the same server."""
    made: list[GrantStore] = []
    tag = f"{{oauth2:token-cache:{secrets.token_hex(4)}}}"

    def make() -> GrantStore:
        storage = Storage.from_config({"default": backend.url})
        channel = channel_for(storage)
        assert channel is not None
        if isinstance(channel, RedisChannel):
            channel.tag, channel.name = tag, f"{tag}:invalidate"
        store = GrantStore(storage, cache=TokenCache(channel, max_staleness=STALENESS))
        made.append(store)
        return store

    yield make
    for store in made:
        assert store.cache is not None
        store.cache.close()
        store.storage.close()


def live(store: GrantStore, timeout: float = 5.0) -> None:
    """Wait until ``store``'s subscriber is up and its heartbeats come back."""
    cache = store.cache
    assert cache is not None
    cache.get("warm-up")  # starts the thread
    deadline = time.monotonic() + timeout
    while time.monotonic() - cache._confirmed >= STALENESS / 2:
        assert time.monotonic() < deadline, "the subscriber never confirmed a heartbeat"
        time.sleep(0.01)


def issue(store: GrantStore, name: str, grant: str = "g1", expires_in: int = 3600) -> dict:
    token = {
        "access_token": f"at-{name}-{time.time_ns()}",
        "refresh_token": f"rt-{name}-{time.time_ns()}",
        "expires_in": expires_in,
        "scope": "read",
    }
    store.save_token(token, {"client_id": "c1", "user_id": "u1", "grant_id": grant})
    return token


def cached(store: GrantStore, access: str) -> bool:
    """Whether ``store`` holds ``access`` in its cache and would serve it (its heartbeats
    coming back first: a subscriber thread kept waiting on a busy machine is not what
    the tests ask about)."""
    assert store.cache is not None
    live(store)
    found = store.find_access(access)
    key = found.key if found else None
    return key is not None and store.cache.get(key) is not None


def behind_the_back(store: GrantStore, access: str) -> None:
    """Delete the record without telling any cache."""
    from app.secrets_hash import token_digest

    store.storage.tokens.delete(token_digest(access))


def test_a_hit_is_served_from_memory(stores: Store) -> None:
    a = stores()
    live(a)
    token = issue(a, "hit")
    assert a.find_access(token["access_token"]) is not None  # a miss fills
    behind_the_back(a, token["access_token"])
    found = a.find_access(token["access_token"])
    assert found is not None and found.record["grant_id"] == "g1"


@pytest.mark.parametrize("how", ["revoke_access", "revoke_refresh", "grant", "rotate", "user"])
def test_what_ends_a_token_on_one_process_ends_it_on_the_other_at_once(
    stores: Store, how: str
) -> None:
    a, b = stores(), stores()
    live(a), live(b)
    token = issue(a, how)
    access = token["access_token"]
    assert cached(b, access)
    found = a.find_access(access)
    assert found is not None
    if how == "revoke_access":
        a.revoke_token(found)
    elif how == "revoke_refresh":
        refresh = a.find_refresh(token["refresh_token"])
        assert refresh is not None
        a.revoke_token(refresh)
    elif how == "grant":
        assert a.revoke_grant("g1") >= 1
    elif how == "rotate":
        old = a.find_refresh(token["refresh_token"])
        assert old is not None
        new = {"access_token": "at-new-" + access, "refresh_token": "rt-new-" + access}
        assert a.rotate_refresh(old, new, {"client_id": "c1", "user_id": "u1", "grant_id": "g1"})
    else:
        assert a.revoke_client_for_user("u1", "c1") >= 1
    # Returned: no process may serve it any more, not even for one request.
    assert b.find_access(access) is None
    assert a.find_access(access) is None


def rotate(store: GrantStore, token: dict) -> None:
    old = store.find_refresh(token["refresh_token"])
    assert old is not None
    access = token["access_token"]
    new = {"access_token": "at-new-" + access, "refresh_token": "rt-new-" + access}
    assert store.rotate_refresh(old, new, {"client_id": "c1", "user_id": "u1", "grant_id": "g1"})


def spy_publish(store: GrantStore) -> list[str]:
    published: list[str] = []
    channel = store.cache.channel  # type: ignore[union-attr]
    publish = channel.publish

    def spy(payload: str) -> None:
        published.append(payload)
        publish(payload)

    channel.publish = spy  # type: ignore[method-assign]
    return published


def test_a_refresh_of_a_token_no_process_holds_neither_announces_nor_waits(
    stores: Store,
) -> None:
    """Point 5: no held mark (the token was never kept by any cache), no wait."""
    a, b = stores(), stores()
    live(a), live(b)
    token = issue(a, "unheld")
    published = spy_publish(a)
    rotate(a, token)
    assert published == []  # nothing announced: _announce is the only wait
    assert b.find_access(token["access_token"]) is None
    assert a.find_access(token["access_token"]) is None


def test_a_refresh_of_a_token_another_process_held_announces_and_waits(stores: Store) -> None:
    a, b = stores(), stores()
    live(a), live(b)
    token = issue(a, "held")
    assert cached(b, token["access_token"])  # b wrote the held mark, then kept it
    published = spy_publish(a)
    started = time.monotonic()
    rotate(a, token)
    assert time.monotonic() - started >= STALENESS
    assert len(published) == 1
    assert b.find_access(token["access_token"]) is None


def test_a_held_mark_outlives_the_token_it_marks(stores: Store) -> None:
    """The mark lives past the token's expiry by max_age + 5 s, in storage's time: so
    past every entry kept on its strength (point 5)."""
    from app.oauth2.grant_store import HELD
    from app.secrets_hash import token_digest

    a = stores()
    live(a)
    cache = a.cache
    assert cache is not None
    token = issue(a, "lifetime", expires_in=120)
    assert cached(a, token["access_token"])
    key = token_digest(token["access_token"])
    record = a.storage.tokens.get(key)
    mark = a.storage.tokens.get(HELD + key)
    assert record is not None and mark is not None
    beyond = mark["expires_at"] - record["expires_at"]
    assert cache.max_age + 5 <= beyond <= cache.max_age + 7
    assert cache._entries[key][1] <= record["expires_at"]


def test_a_refresh_reads_the_mark_within_its_exchange_where_storage_can(
    stores: Store, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One Redis server answers the probe inside the exchange's script (no round trip
    of its own); elsewhere the refresh reads the mark after the exchange."""
    from app.oauth2 import grant_store

    a, b = stores(), stores()
    live(a), live(b)
    reads: list[str] = []
    held = grant_store.GrantStore._held

    def counting(self: GrantStore, probe: Probe) -> bool:
        if probe.found is None:
            reads.append(probe.key)
        return held(self, probe)

    monkeypatch.setattr(grant_store.GrantStore, "_held", counting)
    unheld, kept = issue(a, "probe-unheld"), issue(a, "probe-kept")
    assert cached(b, kept["access_token"])
    published = spy_publish(a)
    rotate(a, unheld)
    assert published == []
    rotate(a, kept)
    assert len(published) == 1
    assert b.find_access(kept["access_token"]) is None
    one_server = isinstance(backend, RedisBackend) and not backend.url.startswith("redis+")
    assert len(reads) == (0 if one_server else 2)


def test_an_exchange_whose_answer_was_lost_still_announces_a_held_token(
    stores: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver sends a script again when its reply is lost: the second run finds
    nothing, though the first ended the old access token. The mark decides then too."""
    a, b = stores(), stores()
    live(a), live(b)
    token = issue(a, "lost-reply")
    assert cached(b, token["access_token"])
    exchange = a.storage.exchange

    def reply_lost(*args: Any) -> None:
        exchange(*args)  # it happened; the answer never came back
        return None

    monkeypatch.setattr(a.storage, "exchange", reply_lost)
    with pytest.raises(AssertionError):  # rotate_refresh says False: nothing taken
        rotate(a, token)
    assert b.find_access(token["access_token"]) is None


def test_an_unknown_token_writes_no_mark(stores: Store) -> None:
    from app.oauth2.grant_store import HELD
    from app.secrets_hash import token_digest

    a = stores()
    live(a)
    assert a.find_access("no-such-token") is None
    assert a.storage.tokens.get(HELD + token_digest("no-such-token")) is None


def test_revocation_waits_out_the_staleness_bound(stores: Store) -> None:
    a = stores()
    token = issue(a, "wait")
    found = a.find_access(token["access_token"])
    assert found is not None
    started = time.monotonic()
    a.revoke_token(found)
    assert time.monotonic() - started >= STALENESS


def test_a_batch_announces_once_after_its_writes(stores: Store) -> None:
    a, b = stores(), stores()
    live(a), live(b)
    tokens = [issue(a, f"batch{n}", grant=f"g{n}") for n in range(3)]
    for token in tokens:
        assert cached(b, token["access_token"])
    published = spy_publish(a)
    with a.storage.batch():
        for token in tokens:
            found = a.find_access(token["access_token"])
            assert found is not None
            a.revoke_token(found)
        assert published == []  # held with the batch's writes
    assert len(published) == 1
    for token in tokens:
        assert b.find_access(token["access_token"]) is None


def test_many_grants_ended_in_one_block_wait_once(stores: Store) -> None:
    """Deleting a client ends all its grants: one announcement, one wait."""
    a, b = stores(), stores()
    live(a), live(b)
    tokens = [issue(a, f"grant{n}", grant=f"grant{n}") for n in range(5)]
    for token in tokens:
        assert cached(b, token["access_token"])
    published = spy_publish(a)
    started = time.monotonic()
    with a.ending():
        for n in range(5):
            a.revoke_grant(f"grant{n}")
    assert time.monotonic() - started >= STALENESS
    # One announcement naming the five grants: one wait, not five (counted, not timed).
    assert len(published) == 1
    assert sorted(json.loads(published[0])["g"]) == [f"grant{n}" for n in range(5)]
    for token in tokens:
        assert b.find_access(token["access_token"]) is None


def test_lost_subscriber_connection_flushes_and_serves_nothing_stale(stores: Store) -> None:
    a, b = stores(), stores()
    live(a), live(b)
    token = issue(a, "cut")
    access = token["access_token"]
    assert cached(b, access)
    assert b.cache is not None
    cut_subscriber(b.storage)
    found = a.find_access(access)
    assert found is not None
    a.revoke_token(found)  # published while B's subscriber may be down: B may miss it
    assert b.find_access(access) is None
    # It comes back, flushed, and caches again.
    live(b)
    again = issue(a, "again")
    assert cached(b, again["access_token"])


def cut_subscriber(storage: Storage) -> None:
    """Kill the server side of every subscriber connection of the token cache on this
    storage's database (another xdist worker's, on a database of its own, are left)."""
    backend = storage.tokens.backend  # type: ignore[attr-defined]
    if isinstance(backend, PostgresBackend):
        with psycopg.connect(backend.conninfo, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND datname = current_database()",
                (APPLICATION_NAME,),
            ).fetchall()
        assert killed
        return
    assert isinstance(backend, RedisBackend)
    client = backend.link.client
    nodes = client.get_primaries() if isinstance(client, RedisCluster) else [None]
    db = str(client.get_connection_kwargs().get("db", 0))
    killed = 0
    for node in nodes:
        target = client if node is None else node.redis_connection
        for entry in target.client_list():
            if entry.get("name") == APPLICATION_NAME and str(entry.get("db")) == db:
                target.client_kill_filter(_id=entry["id"])
                killed += 1
    assert killed


def test_an_entry_never_outlives_its_token(stores: Store) -> None:
    a = stores()
    live(a)
    token = issue(a, "exp", expires_in=1)
    assert cached(a, token["access_token"])
    behind_the_back(a, token["access_token"])
    time.sleep(1.1)
    assert a.find_access(token["access_token"]) is None


def test_a_forged_heartbeat_is_not_believed(stores: Store, backend: Backend) -> None:
    """Whoever publishes "far in the future" on a heartbeat channel is ignored."""
    a = stores()
    live(a)
    cache = a.cache
    assert cache is not None
    before = cache._confirmed
    forged = repr(time.monotonic() + 3600)
    name = cache.heartbeat_channel
    assert name
    if isinstance(backend, PostgresBackend):
        backend.execute("SELECT pg_notify(%s, %s)", (name, forged), True)
    else:
        client: Any = a.storage.tokens.backend.link.client  # type: ignore[attr-defined]
        assert client.execute_command("SPUBLISH", name, forged) == 1
    time.sleep(STALENESS)
    assert cache._confirmed < before + 3600
    assert cache._confirmed <= time.monotonic()


def test_sqlite_is_never_cached(tmp_path) -> None:
    storage = Storage.from_config({"default": f"sqlite:///{tmp_path}/x.db"})
    settings = Settings.load({"token_cache": {"enabled": True}})
    assert build(settings.token_cache, storage) is None
    storage.close()


def test_on_by_default(redis_backend: RedisBackend) -> None:
    storage = Storage.from_config({"default": redis_backend.url})
    cache = build(Settings.load({}).token_cache, storage)
    assert isinstance(cache, TokenCache)
    assert build(Settings.load({"token_cache": {"enabled": False}}).token_cache, storage) is None
    storage.close()


def test_a_redis_without_sharded_pub_sub_gets_the_plain_one(redis_backend: RedisBackend) -> None:
    """Redis older than 7.0 answers SPUBLISH/SSUBSCRIBE with "unknown command": plain
    PUBLISH/SUBSCRIBE then, heartbeats and messages alike; other errors are not hidden."""
    import redis

    from app.oauth2 import token_cache

    redis_url = redis_backend.url
    sent: list[tuple[str, ...]] = []

    class OldConnection:
        """A raw connection to a server without SPUBLISH (``ssubscribe``: SSUBSCRIBE)."""

        def __init__(self, ssubscribe: bool) -> None:
            self.ssubscribe = ssubscribe

        def connect(self) -> None: ...

        def disconnect(self) -> None: ...

        def send_command(self, *args: str) -> None:
            sent.append(args)

        def read_response(self) -> Any:
            return [None, ["ssubscribe", -2] if self.ssubscribe else None]

    class Old:
        """A server without SPUBLISH; ``ssubscribe`` says whether it has SSUBSCRIBE."""

        def __init__(self, ssubscribe: bool = False) -> None:
            self.connection_pool = self
            self.ssubscribe = ssubscribe

        def make_connection(self) -> OldConnection:
            return OldConnection(self.ssubscribe)

        def execute_command(self, *args: str) -> Any:
            sent.append(args)
            if args[0] == "SPUBLISH":
                raise redis.ResponseError("unknown command 'SPUBLISH', with args beginning with:")
            return 1

    token_cache._publish(Old(), "c", "p")
    info = ("COMMAND", "INFO", *token_cache.SHARDED)
    assert sent == [("SPUBLISH", "c", "p"), info, ("PUBLISH", "c", "p")]
    # Only one of the two (renamed away, a partial clone): the sides would not meet.
    sent.clear()
    with pytest.raises(StorageUnavailable):
        token_cache._publish(Old(ssubscribe=True), "c", "p")
    assert ("PUBLISH", "c", "p") not in sent

    class Refusing:
        def execute_command(self, *args: str) -> int:
            raise redis.ResponseError("NOPERM this user has no permissions")

    with pytest.raises(redis.ResponseError):
        token_cache._publish(Refusing(), "c", "p")

    replies: list[Any] = [
        redis.ResponseError("unknown command 'SSUBSCRIBE'"),
        ["subscribe", "inv", 1],
        ["subscribe", "hb", 2],
    ]

    class Connection:
        def send_command(self, *args: str) -> None:
            sent.append(args)

        def read_response(self) -> Any:
            reply = replies.pop(0)
            if isinstance(reply, Exception):
                raise reply
            return reply

    # The real server's answer, read the same raw way (it has both: no fallback).
    with redis.Redis.from_url(redis_url) as real:
        connection = real.connection_pool.make_connection()
        connection.connect()
        try:
            with pytest.raises(StorageUnavailable):  # both known: "neither" is refused
                token_cache._require_no_sharded_pub_sub(token_cache._command_info(connection))
        finally:
            connection.disconnect()

    subscription = object.__new__(token_cache._RedisSubscription)
    subscription.connection = Connection()  # type: ignore[assignment]
    sent.clear()
    assert subscription._subscribe("SSUBSCRIBE", "inv", "hb") is False
    assert subscription._subscribe("SUBSCRIBE", "inv", "hb") is True
    assert sent == [("SSUBSCRIBE", "inv", "hb"), ("SUBSCRIBE", "inv", "hb")]


@pytest.mark.parametrize("which", ["access_token", "refresh_token"])
def test_a_revocation_retried_after_a_failed_publish_ends_the_token_everywhere(
    stores: Store, which: str
) -> None:
    """Review M3: the first try writes and fails to publish (a 5xx); the client's retry
    finds nothing in storage, yet still announces what the first one ended."""
    a, b = stores(), stores()
    live(a), live(b)
    token = issue(a, "retry-" + which)
    access = token["access_token"]
    assert cached(b, access)
    channel = a.cache.channel  # type: ignore[union-attr]
    publish = channel.publish

    def down(payload: str) -> None:
        raise RuntimeError("publish failed")

    channel.publish = down  # type: ignore[method-assign]
    found = a.find_access(access) if which == "access_token" else a.find_refresh(token[which])
    assert found is not None
    with pytest.raises(RuntimeError):
        a.revoke_token(found)
    assert a.find_access(access) is None  # its own cache dropped it all the same
    assert b.find_access(access) is not None  # the stale entry the retry must end
    channel.publish = publish  # type: ignore[method-assign]
    assert a.find_access(token[which]) is None and a.find_refresh(token[which]) is None
    a.revoke_unknown(token[which])  # RFC 7009: the token is unknown now; 200, announced
    assert b.find_access(access) is None
