"""The storage contract (``app.storage.base.Table``), run against every backend."""

from __future__ import annotations

import itertools
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.storage.base import Backend, Table
from app.storage.redis import LISTED_IN_SCRIPT, RedisBackend
from tests.backends import redis_round_trips
from tests.storage.conftest import empty

TOKEN = {"user_id": "alice", "client_id": "web", "grant_id": "g1", "scope": ["read"]}


def make(table: Table, key: str, ttl: int | None = None, **fields) -> None:
    """Put a token-like record under ``key``, fields overriding the defaults."""
    table.put(key, {**TOKEN, **fields}, ttl=ttl)


def keys(records: list[dict]) -> set[str]:
    return {r["key"] for r in records}


def test_put_get_round_trip(table: Table) -> None:
    record = {**TOKEN, "nested": {"a": [1, 2.5, None, True]}, "key": "ignored"}
    table.put("k1", record, ttl=60)
    got = table.get("k1")
    assert got is not None
    assert got.pop("key") == "k1"
    assert got.pop("expires_at") == pytest.approx(time.time() + 60, abs=2)
    assert got == {k: v for k, v in record.items() if k != "key"}


def test_get_missing_is_none(table: Table) -> None:
    assert table.get("nope") is None


def test_no_ttl_means_no_expiry(table: Table) -> None:
    make(table, "k1")
    assert table.get("k1")["expires_at"] is None


def test_table_default_ttl_and_override(backend: Backend) -> None:
    codes = backend.table("codes", 60)
    codes.put("default", {"a": 1})
    codes.put("never", {"a": 2}, ttl=0)
    assert codes.get("default")["expires_at"] == pytest.approx(time.time() + 60, abs=2)
    assert codes.get("never")["expires_at"] is None


def test_put_upserts(table: Table) -> None:
    make(table, "k1", ttl=60, scope=["read"])
    table.put("k1", {"user_id": "bob", "client_id": "web", "note": "new"})
    assert table.get("k1") == {
        "key": "k1",
        "expires_at": None,
        "user_id": "bob",
        "client_id": "web",
        "note": "new",
    }
    assert table.list_by_user("alice") == []
    assert keys(table.list_by_user("bob")) == {"k1"}
    assert table.revoke_by_grant("g1") == 0
    assert table.get("k1") is not None


def test_put_with_past_expiry_is_absent(table: Table) -> None:
    make(table, "k1", ttl=-1)
    assert table.get("k1") is None
    assert table.take("k1") is None
    assert table.list_by_user("alice") == []


def test_ttl_expiry_and_purge(table: Table) -> None:
    make(table, "short1", ttl=1)
    make(table, "short2", ttl=1)
    make(table, "long", ttl=60)
    time.sleep(1.1)
    assert table.purge() > 0
    assert table.purge() == 0
    assert table.get("short1") is None
    assert table.take("short2") is None
    assert table.delete("short1") is False
    assert keys(table.list_by_user("alice")) == {"long"}
    assert keys(table.list_by_client("web")) == {"long"}
    assert table.revoke_by_grant("g1") == 1


def test_take_returns_the_record_once(table: Table) -> None:
    make(table, "code")
    taken = table.take("code")
    assert taken is not None and taken["key"] == "code" and taken["user_id"] == "alice"
    assert table.take("code") is None
    assert table.get("code") is None
    assert table.list_by_user("alice") == []


def test_delete(table: Table) -> None:
    make(table, "k1")
    assert table.delete("k1") is True
    assert table.delete("k1") is False
    assert table.get("k1") is None
    assert table.list_by_client("web") == []


def test_list_by_user_and_client_return_live_matches_only(table: Table) -> None:
    make(table, "a1")
    make(table, "a2", client_id="mobile")
    make(table, "gone", ttl=-1)
    make(table, "b1", user_id="bob")
    assert keys(table.list_by_user("alice")) == {"a1", "a2"}
    assert keys(table.list_by_user("bob")) == {"b1"}
    assert keys(table.list_by_client("web")) == {"a1", "b1"}
    assert keys(table.list_by_client("mobile")) == {"a2"}
    assert table.list_by_user("nobody") == []


def test_ids_match_as_text(table: Table) -> None:
    make(table, "k1", user_id=5, client_id=7, grant_id=9)
    assert keys(table.list_by_user("5")) == {"k1"}
    assert keys(table.list_by_client(7)) == {"k1"}  # type: ignore[arg-type]
    assert table.revoke_by_grant(9) == 1  # type: ignore[arg-type]


def test_revoke_by_grant(table: Table) -> None:
    make(table, "t1")
    make(table, "t2", client_id="mobile")
    make(table, "other", grant_id="g2")
    assert table.revoke_by_grant("g1") == 2
    assert table.get("t1") is None and table.get("t2") is None
    assert keys(table.list_by_user("alice")) == {"other"}
    assert table.revoke_by_grant("g1") == 0
    assert table.get("other") is not None


def test_append_and_recent_newest_first(backend: Backend) -> None:
    audit = backend.table("audit", None)
    appended = [audit.append({"event": "login", "n": n}) for n in range(5)]
    assert appended == sorted(appended)
    assert [r["n"] for r in audit.recent(3)] == [4, 3, 2]
    assert [r["key"] for r in audit.recent()] == appended[::-1]
    assert audit.get(appended[0])["n"] == 0
    assert audit.recent(0) == []


def test_the_audit_table_is_read_by_time_never_listed(backend: Backend) -> None:
    """The audit trail is not listed by user, client or grant on any backend (it is read
    by time); Redis keeps no index for it, so a busy client's history is no sorted set."""
    audit = backend.table("audit", None)
    key = audit.append({"event": "token_issued", "user_id": "u1", "client_id": "c1"})
    with backend.batch():
        audit.write(audit.entry({"event": "token_refreshed", "user_id": "u1", "client_id": "c1"}))
    for verb in (audit.list_by_user, audit.list_by_client, audit.revoke_by_grant):
        with pytest.raises(TypeError):
            verb("u1")
    assert [r["event"] for r in audit.recent(5)] == ["token_refreshed", "token_issued"]
    assert audit.get(key)["client_id"] == "c1"
    if isinstance(backend, RedisBackend):
        client = backend.link.client
        assert [k for k in client.scan_iter(match=f"{audit.base}:*_id:*")] == []
        old_index = f"{audit.base}:client_id:{{c1}}"  # as an older version kept one
        client.zadd(old_index, {key: float("inf")})
        audit.purge()
        assert client.exists(old_index) == 0 and audit.get(key) is not None
    tokens = backend.table("tokens", None)  # every other table is listed as ever
    make(tokens, "t1")
    assert keys(tokens.list_by_client("web")) == {"t1"}


def test_recent_skips_deleted_rows(backend: Backend) -> None:
    audit = backend.table("audit", None)
    appended = [audit.append({"n": n}) for n in range(4)]
    audit.delete(appended[3])
    assert [r["n"] for r in audit.recent(2)] == [2, 1]


def test_tables_are_isolated(backend: Backend) -> None:
    tokens, codes = backend.table("tokens", None), backend.table("codes", None)
    make(tokens, "same", scope="token")
    make(codes, "same", scope="code")
    assert tokens.get("same")["scope"] == "token"
    assert codes.get("same")["scope"] == "code"
    assert codes.revoke_by_grant("g1") == 1
    assert tokens.get("same")["scope"] == "token"
    assert keys(tokens.list_by_user("alice")) == {"same"}
    assert codes.list_by_user("alice") == []
    assert tokens.take("same") is not None


def test_migrate_is_idempotent(backend: Backend) -> None:
    assert backend.migrate() == []
    backend.ping()


# -- batches: the writes of one token response in one round trip ------------------------
def test_batched_writes_all_land_with_their_indexes(backend: Backend) -> None:
    tokens, audit = backend.table("tokens", 3600), backend.table("audit", None)
    with backend.batch():
        tokens.put("a1", {"user_id": "u1", "client_id": "c1", "grant_id": "g1"})
        tokens.put("a2", {"user_id": "u1", "client_id": "c2", "grant_id": "g2"})
        audit.append({"event": "token_issued", "client_id": "c1"})
    assert {r["key"] for r in tokens.list_by_user("u1")} == {"a1", "a2"}
    assert [r["key"] for r in tokens.list_by_client("c2")] == ["a2"]
    assert [r["event"] for r in audit.recent(5)] == ["token_issued"]


def test_a_batched_overwrite_drops_the_stale_index_entry(backend: Backend) -> None:
    tokens = backend.table("tokens", None)
    tokens.put("k", {"user_id": "u1", "client_id": "c1", "grant_id": "g1"})
    with backend.batch():
        tokens.put("k", {"user_id": "u2", "client_id": "c1", "grant_id": "g1"})
    assert tokens.list_by_user("u1") == []
    assert [r["key"] for r in tokens.list_by_user("u2")] == ["k"]


def test_a_batch_is_sent_when_its_block_raises(backend: Backend) -> None:
    tokens = backend.table("tokens", None)
    with pytest.raises(RuntimeError), backend.batch():
        tokens.put("k", {"user_id": "u1"})
        raise RuntimeError("after the write")
    assert tokens.get("k")["user_id"] == "u1"


def test_batches_nest_into_the_outer_one(backend: Backend) -> None:
    tokens = backend.table("tokens", None)
    with backend.batch():
        with backend.batch():
            tokens.put("inner", {"user_id": "u1"})
        tokens.put("outer", {"user_id": "u1"})
    assert {r["key"] for r in tokens.list_by_user("u1")} == {"inner", "outer"}


def test_a_batched_discard_removes_the_record_and_its_index_entries(backend: Backend) -> None:
    tokens = backend.table("tokens", None)
    tokens.put("gone", {"user_id": "u1", "client_id": "c1", "grant_id": "g1"})
    tokens.put("kept", {"user_id": "u1", "client_id": "c1", "grant_id": "g1"})
    with backend.batch():
        tokens.discard("gone")
        tokens.discard("never-there")
    assert tokens.get("gone") is None
    assert [r["key"] for r in tokens.list_by_user("u1")] == ["kept"]
    assert tokens.revoke_by_grant("g1") == 1


# -- counters --------------------------------------------------------------------------
def test_incr_starts_at_the_amount_and_returns_the_total(table: Table) -> None:
    assert table.incr("n") == 1
    assert table.incr("n", 4) == 5
    assert table.incr("n", -2) == 3
    assert table.get("n")["count"] == 3
    assert table.incr("other", 7) == 7


def test_incr_keeps_the_first_expiry(table: Table) -> None:
    table.incr("n", ttl=60)
    table.incr("n", ttl=3600)
    assert table.get("n")["expires_at"] == pytest.approx(time.time() + 60, abs=2)


def test_incr_without_ttl_uses_the_tables_lifetime(backend: Backend) -> None:
    assert backend.table("tokens", None).incr("forever") == 1
    assert backend.table("tokens", None).get("forever")["expires_at"] is None
    codes = backend.table("codes", 60)
    codes.incr("short")
    assert codes.get("short")["expires_at"] == pytest.approx(time.time() + 60, abs=2)


def test_an_expired_counter_starts_again(table: Table) -> None:
    table.incr("n", 5, ttl=-1)
    assert table.get("n") is None
    assert table.incr("n", ttl=60) == 1
    assert table.get("n")["expires_at"] == pytest.approx(time.time() + 60, abs=2)


def test_delete_resets_a_counter(table: Table) -> None:
    table.incr("n", 3)
    assert table.delete("n") is True
    assert table.incr("n") == 1


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(amounts=st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=8))
def test_incr_returns_the_running_sum(table: Table, amounts: list[int]) -> None:
    key = f"n-{uuid.uuid4().hex}"
    assert [table.incr(key, amount, ttl=60) for amount in amounts] == list(
        itertools.accumulate(amounts)
    )


# -- get_with: a record and its user's, one round trip on one Redis ---------------------
def test_get_with_reads_the_record_and_the_one_its_field_names(backend: Backend) -> None:
    codes, users = backend.table("codes", None), backend.table("users", None)
    make(codes, "c1", ttl=60)
    users.put("alice", {"name": "Alice", "site_token": "t"})
    record, owner = codes.get_with("c1", "user_id", users)
    assert record == codes.get("c1")
    assert owner == users.get("alice")
    assert owner["name"] == "Alice"


def test_get_with_answers_none_for_what_is_missing(backend: Backend) -> None:
    codes, users = backend.table("codes", None), backend.table("users", None)
    assert codes.get_with("nope", "user_id", users) == (None, None)
    make(codes, "c1")  # alice has no users record
    assert codes.get_with("c1", "user_id", users) == (codes.get("c1"), None)
    codes.put("c2", {"client_id": "web"})  # no user_id at all
    assert codes.get_with("c2", "user_id", users) == (codes.get("c2"), None)
    users.put("alice", {"name": "Alice"}, ttl=-1)  # expired already
    assert codes.get_with("c1", "user_id", users)[1] is None


def test_get_with_an_expired_record_answers_none(backend: Backend) -> None:
    codes, users = backend.table("codes", None), backend.table("users", None)
    users.put("alice", {"name": "Alice"})
    make(codes, "c1", ttl=-1)
    assert codes.get_with("c1", "user_id", users) == (None, None)


@pytest.mark.parametrize("user_id", [42, "7", "{odd}", "ünï", "a:b"])
def test_get_with_finds_the_user_as_get_would(backend: Backend, user_id) -> None:
    """A number is looked up by its text (as ``UserStore.get`` does), a string as it is."""
    codes, users = backend.table("codes", None), backend.table("users", None)
    make(codes, "c1", user_id=user_id)
    users.put(str(user_id), {"name": "U"})
    assert codes.get_with("c1", "user_id", users)[1] == users.get(str(user_id))


def test_get_with_on_one_redis_is_one_round_trip(redis_backend: RedisBackend, monkeypatch) -> None:
    """Where the refresh and code grants save a round trip (the other backends read twice)."""
    empty(redis_backend)
    codes, users = redis_backend.table("codes", None), redis_backend.table("users", None)
    make(codes, "c1")
    users.put("alice", {"name": "Alice"})
    sent = redis_round_trips(monkeypatch)
    assert codes.get_with("c1", "user_id", users)[1]["name"] == "Alice"
    assert sent[0] == 1


def test_a_long_index_lists_every_live_record(backend: Backend) -> None:
    """More members than one MGET of the Redis script takes (it reads them by thousands),
    a few of them expired, deleted or now another user's."""
    table = backend.table("tokens", None)
    with backend.batch():
        for n in range(1_545):
            make(table, f"k{n:04d}", user_id="many")
        make(table, "expired", user_id="many", ttl=-1)
    table.delete("k0007")
    make(table, "k0008", user_id="someone else")
    listed = table.list_by_user("many")
    assert keys(listed) == {f"k{n:04d}" for n in range(1_545)} - {"k0007", "k0008"}
    assert all(r["user_id"] == "many" and r["client_id"] == "web" for r in listed)


def test_a_list_on_one_redis_is_one_round_trip(redis_backend: RedisBackend, monkeypatch) -> None:
    """The index's expired members dropped, its members read with their records, at once."""
    empty(redis_backend)
    table = redis_backend.table("factors", None)
    make(table, "a1")
    make(table, "a2")
    make(table, "gone", ttl=1)
    time.sleep(1.05)
    sent = redis_round_trips(monkeypatch)
    assert keys(table.list_by_user("alice")) == {"a1", "a2"}
    assert sent[0] == 1
    assert table.list_by_user("nobody") == []
    assert sent[0] == 2
    client = redis_backend.link.client
    assert client.zrange(table._ikey("user_id", "alice"), 0, -1) == ["a1", "a2"]


def test_a_huge_index_has_its_records_read_apart(redis_backend: RedisBackend, monkeypatch) -> None:
    """Past ``LISTED_IN_SCRIPT`` members the script answers the members only (no script
    holds the server long) and the records are read by one ``MGET``."""
    empty(redis_backend)
    table = redis_backend.table("tokens", None)
    with redis_backend.batch():
        for n in range(LISTED_IN_SCRIPT + 1):
            make(table, f"k{n}", client_id="busy")
    sent = redis_round_trips(monkeypatch)
    listed = table.list_by_client("busy")
    assert keys(listed) == {f"k{n}" for n in range(LISTED_IN_SCRIPT + 1)}
    assert sent[0] == 2


def test_only_a_cluster_writes_a_record_apart_from_its_index_entries(backend: Backend) -> None:
    table = backend.table("factors", None)
    cluster = isinstance(backend, RedisBackend) and backend.url.startswith("redis+cluster://")
    assert table.indexed_at_once is not cluster
