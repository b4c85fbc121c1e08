"""A redemption's audit entry rides in its exchange, on every backend: all or nothing.

``token_refreshed`` / ``token_issued`` lands in the script or statement that takes the
refresh token or code (one round trip and one commit fewer than writing it after), so
a take that finds the token gone, or a write that fails, leaves no entry. An audit
table on another backend gets the entry once the exchange won (in the batch, if any).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.audit import audit_record
from app.oauth2.grant_store import GrantStore
from app.storage import Storage
from app.storage.base import Backend, StorageUnavailable
from tests.storage.test_concurrency import at_once
from tests.storage.test_exchange import fail_writes

FIELDS = {"client_id": "web", "user_id": "alice", "grant_id": "g1"}
CODE = {**FIELDS, "redirect_uri": "https://web.example/cb", "scope": "read"}
#: ``audit_key()``: nanoseconds, then 4 random bytes; ``audit tail`` sorts by it.
AUDIT_KEY = re.compile(r"\d{20}-[0-9a-f]{8}")


def open_store(config: dict[str, Any]) -> GrantStore:
    storage = Storage.from_config(config)
    storage.migrate()
    return GrantStore(storage)


@pytest.fixture
def store(backend: Backend) -> Iterator[GrantStore]:
    """A grant store with every table on ``backend``."""
    store = open_store({"default": backend.url})
    yield store
    store.storage.close()


def pair(name: str) -> dict[str, Any]:
    return {
        "access_token": f"at-{name}-{time.time_ns()}",
        "refresh_token": f"rt-{name}-{time.time_ns()}",
        "expires_in": 3600,
        "scope": "read",
    }


def refreshed() -> dict[str, Any]:
    return audit_record("token_refreshed", client_id="web", user_id="alice")


def issued() -> dict[str, Any]:
    return audit_record(
        "token_issued", client_id="web", user_id="alice", grant="authorization_code"
    )


def entries(store: GrantStore) -> list[dict[str, Any]]:
    """The audit table as ``audit tail`` reads it, each record as it was given."""
    found = store.storage.audit.recent(50)
    assert all(AUDIT_KEY.fullmatch(record["key"]) for record in found)
    return [{k: v for k, v in r.items() if k not in ("key", "expires_at")} for r in found]


def first_pair(store: GrantStore) -> tuple[dict[str, Any], Any]:
    """A stored token pair and its refresh token, as a refresh request finds it."""
    first = pair("first")
    store.save_token(first, FIELDS)
    return first, store.find_refresh(first["refresh_token"])


def test_a_rotation_writes_its_entry_with_the_new_pair(store: GrantStore) -> None:
    first, old = first_pair(store)
    second, entry = pair("second"), refreshed()
    assert store.rotate_refresh(old, second, FIELDS, entry=entry)
    assert entries(store) == [entry]
    assert store.find_refresh(second["refresh_token"]) is not None
    assert store.rotated_refresh(first["refresh_token"]) is not None


def test_a_redemption_writes_its_entry_with_the_tokens(store: GrantStore) -> None:
    store.save_code("the-code", CODE)
    token, entry = pair("code"), issued()
    assert store.redeem_code(store.find_code("the-code"), token, FIELDS, entry=entry)
    assert entries(store) == [entry]
    assert store.find_access(token["access_token"]) is not None


def test_a_rotation_that_lost_the_race_writes_nothing(store: GrantStore) -> None:
    first, old = first_pair(store)
    assert store.storage.refresh_tokens.take(old.key) is not None  # another request won
    second = pair("second")
    assert not store.rotate_refresh(old, second, FIELDS, entry=refreshed())
    assert entries(store) == []
    assert store.find_refresh(second["refresh_token"]) is None
    assert store.find_access(second["access_token"]) is None
    assert store.rotated_refresh(first["refresh_token"]) is None
    assert store.find_access(first["access_token"]) is not None  # the winner's to end


def test_a_redemption_that_lost_the_race_writes_nothing(store: GrantStore) -> None:
    store.save_code("the-code", CODE)
    code = store.find_code("the-code")
    assert store.storage.codes.take(code.key) is not None  # another request won
    token = pair("code")
    assert not store.redeem_code(code, token, FIELDS, entry=issued())
    assert entries(store) == []
    assert store.find_access(token["access_token"]) is None
    assert store.replayed_code("the-code") is None


def test_concurrent_rotations_write_the_winners_entry_once(store: GrantStore) -> None:
    _, old = first_pair(store)
    made = [refreshed() | {"attempt": i} for i in range(8)]
    won = at_once(8, lambda i: store.rotate_refresh(old, pair(str(i)), FIELDS, entry=made[i]))
    assert won.count(True) == 1
    assert entries(store) == [made[won.index(True)]]


def test_a_failing_write_writes_no_entry(store: GrantStore, backend, monkeypatch) -> None:
    store.save_code("the-code", CODE)
    code = store.find_code("the-code")
    fail_writes(backend, store.storage.tokens, monkeypatch)
    with pytest.raises(StorageUnavailable):
        store.redeem_code(code, pair("code"), FIELDS, entry=issued())
    monkeypatch.undo()
    assert entries(store) == []
    assert store.find_code("the-code") is not None


@pytest.mark.parametrize("apart", ["audit", "grants"])
def test_an_audit_table_on_another_backend_gets_the_entry(backend, tmp_path, apart) -> None:
    """``audit``: the audit table on SQLite; ``grants``: it on ``backend``, the rest not."""
    other = f"sqlite:///{tmp_path}/other.db"
    config = {"default": backend.url, "audit": other}
    store = open_store(config if apart == "audit" else {"default": other, "audit": backend.url})
    try:
        _, old = first_pair(store)
        entry = refreshed()
        with store.storage.batch():
            assert store.rotate_refresh(old, pair("second"), FIELDS, entry=entry)
            if apart == "audit":  # held by the batch, as before
                assert entries(store) == []
        assert entries(store) == [entry]
        assert not store.rotate_refresh(old, pair("third"), FIELDS, entry=refreshed())
        assert entries(store) == [entry]
    finally:
        store.storage.close()


def test_across_backends_the_entry_is_one_of_the_ordered_writes(backend, tmp_path) -> None:
    """Codes on SQLite, the rest (the audit table too) on ``backend``: take, then write."""
    store = open_store({"default": backend.url, "codes": f"sqlite:///{tmp_path}/codes.db"})
    try:
        store.save_code("the-code", CODE)
        code, entry = store.find_code("the-code"), issued()
        with store.storage.batch():
            assert store.redeem_code(code, pair("code"), FIELDS, entry=entry)
            assert entries(store) == [entry]  # at once, as the exchange's other writes
        assert not store.redeem_code(code, pair("again"), FIELDS, entry=issued())
        assert entries(store) == [entry]
    finally:
        store.storage.close()


def test_a_script_failing_part_way_has_ended_the_old_access_token(redis_backend) -> None:
    """Redis does not roll a script back: a write failing part-way (here the audit log
    key holds a string, so its ZADD fails) must leave the old access token ended, never
    alive beside tokens nobody received."""
    store = open_store({"default": redis_backend.url})
    client = redis_backend.link.client
    try:
        first, old = first_pair(store)
        assert store.find_access(first["access_token"]) is not None
        client.set(store.storage.audit.log, "not a sorted set")
        with pytest.raises(StorageUnavailable):
            store.rotate_refresh(old, pair("second"), FIELDS, entry=refreshed())
        assert store.find_access(first["access_token"]) is None
    finally:
        client.delete(store.storage.audit.log)
        store.storage.close()
