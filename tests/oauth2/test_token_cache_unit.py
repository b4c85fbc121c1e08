"""The token cache's rules on an in-memory channel the test controls.

The channel delivers in order, like Redis or Postgres, but the test decides when (or
whether) messages arrive and when the connection fails, so the races the real
backends make rare happen here every time (``tests/storage/test_token_cache.py`` runs
the same cache on the real servers).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator

import pytest

from app.oauth2.grant_store import GrantStore
from app.oauth2.token_cache import (
    FLUSH,
    MAX_NAMES,
    PUBLISH_RETRIES,
    Channel,
    Subscription,
    TokenCache,
)
from app.secrets_hash import token_digest
from app.storage import Storage

STALENESS = 0.05


class Broken(Exception):
    pass


class FakeSubscription(Subscription):
    def __init__(self, channel: FakeChannel, name: str) -> None:
        self.channel, self.name = channel, f"hb:{name}"
        self.inbox: queue.Queue[tuple[bool, str]] = queue.Queue()

    def heartbeat(self, payload: str) -> None:
        if not self.channel.heartbeats.is_set():
            return  # lost on the way: a silent connection
        self.inbox.put((True, payload))

    def receive(self, timeout: float) -> list[tuple[bool, str]]:
        if self.channel.broken.is_set():
            raise Broken("connection reset")
        try:
            return [self.inbox.get(timeout=timeout)]
        except queue.Empty:
            return []

    def close(self) -> None:
        self.channel.subscriptions.remove(self)


class FakeChannel(Channel):
    def __init__(self) -> None:
        self.subscriptions: list[FakeSubscription] = []
        self.published: list[str] = []
        self.heartbeats = threading.Event()
        self.heartbeats.set()
        self.broken = threading.Event()
        self.deliver = True

    def publish(self, payload: str) -> None:
        self.published.append(payload)
        if self.deliver:
            for subscription in self.subscriptions:
                subscription.inbox.put((False, payload))

    def subscribe(self, heartbeat: str) -> Subscription:
        if self.broken.is_set():
            raise Broken("connection refused")
        subscription = FakeSubscription(self, heartbeat)
        self.subscriptions.append(subscription)
        return subscription


@pytest.fixture
def channel() -> FakeChannel:
    return FakeChannel()


@pytest.fixture
def cache(channel: FakeChannel) -> Iterator[TokenCache]:
    made = TokenCache(channel, max_staleness=STALENESS, max_entries=3, max_age=60)
    yield made
    made.close()


def confirmed(cache: TokenCache, timeout: float = 2.0) -> None:
    cache.get("start")
    deadline = time.monotonic() + timeout
    while not (cache.subscribed and time.monotonic() - cache._confirmed < STALENESS / 2):
        assert time.monotonic() < deadline
        time.sleep(0.005)


def record(grant: str = "g", expires_in: float = 3600) -> dict:
    return {"client_id": "c", "grant_id": grant, "expires_at": time.time() + expires_in}


def test_hits_once_confirmed_and_a_copy_each_time(cache: TokenCache) -> None:
    confirmed(cache)
    cache.put("k", record(), cache.generation())
    first = cache.get("k")
    assert first is not None and first["grant_id"] == "g"
    first["grant_id"] = "changed"
    assert cache.get("k")["grant_id"] == "g"  # type: ignore[index]


def test_nothing_is_served_before_the_first_heartbeat(channel: FakeChannel) -> None:
    channel.heartbeats.clear()
    cache = TokenCache(channel, max_staleness=STALENESS)
    try:
        cache.get("start")
        time.sleep(0.05)
        cache.put("k", record(), cache.generation())
        assert cache.get("k") is None
    finally:
        cache.close()


def test_a_silent_connection_stops_hits_within_the_bound(
    cache: TokenCache, channel: FakeChannel
) -> None:
    confirmed(cache)
    cache.put("k", record(), cache.generation())
    assert cache.get("k") is not None
    channel.heartbeats.clear()  # no error, nothing arrives any more
    time.sleep(STALENESS * 1.2)
    assert cache.get("k") is None
    channel.heartbeats.set()
    time.sleep(STALENESS)
    assert cache.get("k") is not None  # same subscription, proof again: it was never stale


def test_an_invalidation_between_the_read_and_the_fill_is_not_undone(
    cache: TokenCache, channel: FakeChannel
) -> None:
    confirmed(cache)
    generation = cache.generation()  # the lookup notes it, then reads storage...
    channel.publish('{"k":["other"],"g":[]}')  # ...while anything is invalidated
    deadline = time.monotonic() + 1
    while cache.generation() == generation:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    cache.put("k", record(), generation)  # what it read may be stale: not kept
    assert cache.get("k") is None
    cache.put("k", record(), cache.generation())
    assert cache.get("k") is not None


@pytest.mark.parametrize(
    "payload", ['{"k":["k"],"g":[]}', '{"k":[],"g":["g"]}', FLUSH, "not json", '{"k":1}']
)
def test_what_an_invalidation_drops(cache: TokenCache, channel: FakeChannel, payload: str) -> None:
    confirmed(cache)
    cache.put("k", record("g"), cache.generation())
    cache.put("other", record("h"), cache.generation())
    channel.publish(payload)
    time.sleep(STALENESS)
    assert cache.get("k") is None
    # Only what it names; what it cannot read drops everything.
    kept = payload.startswith('{"k":[') and '"k":1' not in payload
    assert (cache.get("other") is not None) is kept


def test_a_lost_connection_flushes_and_resubscribes(
    cache: TokenCache, channel: FakeChannel
) -> None:
    confirmed(cache)
    cache.put("k", record(), cache.generation())
    channel.broken.set()
    deadline = time.monotonic() + 1
    while cache.subscribed:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert cache._entries == {}
    assert cache.get("k") is None
    channel.broken.clear()
    confirmed(cache, timeout=3)  # back, empty, and filling again
    assert cache.get("k") is None
    cache.put("k", record(), cache.generation())
    assert cache.get("k") is not None


def test_an_entry_never_outlives_its_token_nor_max_age(channel: FakeChannel) -> None:
    cache = TokenCache(channel, max_staleness=STALENESS, max_age=1)
    try:
        confirmed(cache)
        cache.put("short", record(expires_in=0.2), cache.generation())
        cache.put("long", record(expires_in=3600), cache.generation())
        assert cache.get("short") is not None
        time.sleep(0.25)
        assert cache.get("short") is None
        assert cache.get("long") is not None
        time.sleep(0.8)
        assert cache.get("long") is None  # max_age
    finally:
        cache.close()


def test_full_drops_the_oldest(cache: TokenCache) -> None:
    confirmed(cache)
    for key in "abcd":
        cache.put(key, record(), cache.generation())
    assert cache.get("a") is None
    assert all(cache.get(key) is not None for key in "bcd")


def test_revoking_waits_the_bound_and_many_names_flush(
    cache: TokenCache, channel: FakeChannel
) -> None:
    started = time.monotonic()
    cache.ended(keys=["k"])
    assert time.monotonic() - started >= STALENESS
    assert channel.published == ['{"k":["k"],"g":[]}']
    cache.ended(keys=[f"k{n}" for n in range(MAX_NAMES + 1)])
    assert channel.published[-1] == FLUSH


def test_ending_collects_and_announces_once_even_when_it_raises(
    cache: TokenCache, channel: FakeChannel
) -> None:
    with pytest.raises(RuntimeError), cache.ending():
        cache.ended(keys=["a"])
        with cache.ending():
            cache.ended(grants=["g"])
        assert channel.published == []
        raise RuntimeError
    assert channel.published == ['{"k":["a"],"g":["g"]}']


def test_a_failed_publish_raises_and_does_not_wait(cache: TokenCache) -> None:
    def down(payload: str) -> None:
        raise Broken("publish failed")

    cache.channel.publish = down  # type: ignore[method-assign]
    with pytest.raises(Broken):
        cache.ended(keys=["k"])


def test_a_publish_that_fails_once_is_tried_again(cache: TokenCache, channel: FakeChannel) -> None:
    publish, failures = channel.publish, [Broken("blip")]

    def flaky(payload: str) -> None:
        if failures:
            raise failures.pop()
        publish(payload)

    channel.publish = flaky  # type: ignore[method-assign]
    cache.ended(keys=["k"])
    assert channel.published == ['{"k":["k"],"g":[]}']


class Outage:
    """Every publish fails while ``down``; the cache tries PUBLISH_RETRIES + 1 times."""

    def __init__(self, channel: FakeChannel) -> None:
        self.down, self.tries, self.publish = True, 0, channel.publish
        channel.publish = self  # type: ignore[method-assign]

    def __call__(self, payload: str) -> None:
        self.tries += 1
        if self.down:
            raise Broken("publish failed")
        self.publish(payload)


@pytest.fixture
def grants(tmp_path, cache: TokenCache) -> Iterator[GrantStore]:
    storage = Storage.from_config({"default": f"sqlite:///{tmp_path}/grants.db"})
    storage.migrate()
    yield GrantStore(storage, cache=cache)
    storage.close()


def _issue(grants: GrantStore) -> dict:
    token = {"access_token": "at-1", "refresh_token": "rt-1", "expires_in": 3600, "scope": "a"}
    grants.save_token(token, {"client_id": "c", "user_id": "u", "grant_id": "g"})
    return token


def _presented(grants: GrantStore, token: str) -> None:
    """What RFC 7009's endpoint does with a presented token."""
    found = grants.find_access(token) or grants.find_refresh(token)
    if found is None:
        grants.revoke_unknown(token)
    else:
        grants.revoke_token(found)


@pytest.mark.parametrize("which", ["access_token", "refresh_token"])
def test_a_revocation_retried_after_a_failed_publish_publishes_again(
    grants: GrantStore, channel: FakeChannel, which: str
) -> None:
    token = _issue(grants)
    access = token_digest(token["access_token"])
    outage = Outage(channel)
    with pytest.raises(Broken):  # the first try: written, not announced, a 5xx
        _presented(grants, token[which])
    assert outage.tries == len(PUBLISH_RETRIES) + 1
    assert grants.find_access(token["access_token"]) is None  # gone from storage
    assert channel.published == []
    outage.down = False
    _presented(grants, token[which])  # the client's retry finds nothing, and says so
    assert len(channel.published) == 1
    assert access in json.loads(channel.published[0])["k"]


def test_an_unknown_token_is_announced_only_with_the_cache_on(tmp_path) -> None:
    storage = Storage.from_config({"default": f"sqlite:///{tmp_path}/off.db"})
    GrantStore(storage).revoke_unknown("never-issued")  # no cache: nothing to do, no error
    storage.close()


def test_a_grant_retried_after_a_failed_publish_publishes_again(
    grants: GrantStore, channel: FakeChannel
) -> None:
    _issue(grants)
    outage = Outage(channel)
    with pytest.raises(Broken):
        grants.revoke_grant("g")
    outage.down = False
    assert grants.revoke_grant("g") == 0
    assert channel.published == ['{"k":[],"g":["g"]}']


def test_ended_unknown_flushes_everything(grants: GrantStore, channel: FakeChannel) -> None:
    with grants.ending():
        grants.ended_unknown()
        grants.revoke_grant("g")
    assert channel.published == [FLUSH]
