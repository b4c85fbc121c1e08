"""``exchange``: take one record and write what it buys, all or nothing, on every backend."""

from __future__ import annotations

import logging
import time

import pytest

from app.storage import Put, Storage, StorageSpec
from app.storage.base import Backend, StorageUnavailable, Table
from app.storage.redis import RedisBackend, RedisTable
from app.storage.sql import SQLTable
from tests.backends import redis_url, require_service
from tests.storage.conftest import empty
from tests.storage.test_concurrency import at_once

CODE = {"user_id": "alice", "client_id": "web", "grant_id": "g1"}


def tables(backend: Backend) -> tuple[Table, Table, Table]:
    return (
        backend.table("codes", 60),
        backend.table("tokens", None),
        backend.table("refresh_tokens", None),
    )


def issue(codes: Table, tokens: Table, refresh: Table, suffix: str = "") -> list[Put]:
    """The writes of one redemption: a token pair and a tombstone."""
    token = {"user_id": "alice", "client_id": "web", "grant_id": "g1"}
    return [
        Put(tokens, "access" + suffix, token, 3600),
        Put(refresh, "refresh" + suffix, token),
        Put(codes, "used:code", {"family": "g1"}, 120),
    ]


def test_exchange_takes_writes_and_deletes_together(backend: Backend) -> None:
    codes, tokens, refresh = tables(backend)
    codes.put("code", CODE)
    tokens.put("old-access", {"user_id": "alice", "grant_id": "g1"})
    taken = backend.exchange(
        (codes, "code"), issue(codes, tokens, refresh), [(tokens, "old-access")]
    )
    assert taken is not None and taken["grant_id"] == "g1" and taken["key"] == "code"
    assert codes.get("code") is None
    assert tokens.get("access")["expires_at"] == pytest.approx(time.time() + 3600, abs=2)
    assert refresh.get("refresh")["expires_at"] is None
    assert codes.get("used:code")["family"] == "g1"
    assert tokens.get("old-access") is None
    assert {r["key"] for r in tokens.list_by_user("alice")} == {"access"}
    assert codes.list_by_user("alice") == []
    assert refresh.revoke_by_grant("g1") == 1


def test_an_exchange_overwriting_a_record_drops_its_stale_index_entries(backend: Backend) -> None:
    codes, tokens, refresh = tables(backend)
    codes.put("code", CODE)
    tokens.put("access", {"user_id": "bob", "client_id": "other", "grant_id": "g0"})
    assert backend.exchange((codes, "code"), issue(codes, tokens, refresh), []) is not None
    assert tokens.list_by_user("bob") == [] and tokens.list_by_client("other") == []
    assert tokens.revoke_by_grant("g0") == 0
    assert [r["key"] for r in tokens.list_by_user("alice")] == ["access"]


def test_exchange_of_a_missing_record_writes_nothing(backend: Backend) -> None:
    codes, tokens, refresh = tables(backend)
    tokens.put("old-access", {"user_id": "alice"})
    assert (
        backend.exchange((codes, "code"), issue(codes, tokens, refresh), [(tokens, "old-access")])
        is None
    )
    assert tokens.get("access") is None and refresh.get("refresh") is None
    assert codes.get("used:code") is None
    assert tokens.get("old-access") is not None


def test_exchange_of_an_expired_record_writes_nothing(backend: Backend) -> None:
    codes, tokens, refresh = tables(backend)
    codes.put("code", CODE, ttl=-1)
    assert backend.exchange((codes, "code"), issue(codes, tokens, refresh), []) is None
    assert tokens.get("access") is None and codes.get("used:code") is None


def test_concurrent_exchanges_of_one_record_write_once(backend: Backend) -> None:
    codes, tokens, refresh = tables(backend)
    codes.put("code", CODE)
    results = at_once(
        12, lambda i: backend.exchange((codes, "code"), issue(codes, tokens, refresh, str(i)), [])
    )
    winners = [i for i, r in enumerate(results) if r is not None]
    assert len(winners) == 1
    assert {r["key"] for r in tokens.list_by_user("alice")} == {f"access{winners[0]}"}
    assert {r["key"] for r in refresh.list_by_user("alice")} == {f"refresh{winners[0]}"}


def fail_writes(backend: Backend, table: Table, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every write to ``table`` fail inside an exchange, the way each backend can."""
    if isinstance(table, SQLTable):  # a statement the server refuses, after the take
        for statement in ("_put", "_put_if_taken"):
            monkeypatch.setattr(table, statement, "INSERT INTO oauth2_no_such_table VALUES (1)")
    elif isinstance(backend, RedisBackend) and backend.url.startswith("redis+cluster://"):
        monkeypatch.setattr(table, "put", _down)
    else:  # an argument the script refuses; it must check before its first write
        planned = RedisTable.planned_put
        monkeypatch.setattr(table, "planned_put", lambda put: _expiring_soon(planned(table, put)))


def test_a_failing_write_takes_nothing_and_writes_nothing(backend: Backend, monkeypatch) -> None:
    codes, tokens, refresh = tables(backend)
    codes.put("code", CODE)
    fail_writes(backend, refresh, monkeypatch)
    with pytest.raises(StorageUnavailable):
        backend.exchange((codes, "code"), issue(codes, tokens, refresh), [])
    monkeypatch.undo()
    assert codes.get("code") is not None
    assert tokens.get("access") is None and codes.get("used:code") is None
    assert {r["key"] for r in codes.list_by_user("alice")} == {"code"}
    assert backend.exchange((codes, "code"), issue(codes, tokens, refresh), []) is not None


@pytest.fixture
def mixed(tmp_path, caplog) -> Storage:
    """Codes on SQLite, the rest on Redis: no transaction spans them."""
    require_service("redis", redis_url())
    sqlite = StorageSpec(url=f"sqlite:///{tmp_path}/oauth2.db", ttl=60)
    specs = {name: StorageSpec(url=redis_url()) for name in ("tokens", "refresh_tokens", "audit")}
    with caplog.at_level(logging.WARNING, logger="app.storage"):
        storage = Storage({"codes": sqlite, **specs})
    storage.migrate()
    storage.backends[redis_url()].link.client.flushdb()  # type: ignore[attr-defined]
    yield storage
    storage.close()


def test_tables_on_different_backends_are_named_at_start(mixed: Storage, caplog) -> None:
    text = " ".join(record.getMessage() for record in caplog.get_records("setup"))
    assert "codes (sqlite), tokens (redis), refresh_tokens (redis)" in text
    assert "cannot commit atomically" in text


def test_across_backends_a_failing_write_puts_the_taken_record_back(mixed, monkeypatch) -> None:
    mixed.codes.put("code", CODE)
    monkeypatch.setattr(mixed.refresh_tokens, "put", _down)
    with pytest.raises(StorageUnavailable):
        mixed.exchange(
            (mixed.codes, "code"), issue(mixed.codes, mixed.tokens, mixed.refresh_tokens)
        )
    monkeypatch.undo()
    assert mixed.codes.get("code")["grant_id"] == "g1"
    assert mixed.codes.get("code")["expires_at"] == pytest.approx(time.time() + 60, abs=2)
    assert mixed.tokens.get("access") is None
    taken = mixed.exchange(
        (mixed.codes, "code"), issue(mixed.codes, mixed.tokens, mixed.refresh_tokens)
    )
    assert taken is not None and mixed.refresh_tokens.get("refresh") is not None


def _down(*args, **kwargs):
    raise StorageUnavailable("redis: injected")


def _expiring_soon(planned: list) -> list:
    """A planned put whose expiry is not a number."""
    return [*planned[:2], "soon", *planned[3:]]


@pytest.mark.parametrize(
    "spoil",
    [
        lambda plan: [*plan[:5], "-9", *plan[6:]],  # a negative count of discards
        lambda plan: [*plan[:5], "0.5", *plan[6:]],  # not a whole count
        lambda plan: [*plan[:-1]],  # the plan cut short
        lambda plan: [*plan, "extra"],  # and too long
        lambda plan: [p if p != "inf" else "nan" for p in plan],  # a score that is NaN
        lambda plan: ["nan", *plan[1:]],  # a clock that is NaN
    ],
)
def test_a_malformed_plan_is_refused_before_the_first_write(redis_backend, spoil) -> None:
    """The script checks the whole plan before it takes anything (Redis rolls nothing
    back): a count, a score or a length wrong leaves every record as it was. (The script
    runs on one Redis server; a Cluster's exchange is the base class's.)"""
    backend = redis_backend
    empty(backend)
    codes, tokens, refresh = tables(backend)
    codes.put("code", CODE)
    tokens.put("old", CODE)
    link = backend.link
    run = link.run

    def spoiled(name, keys, args):
        return run(name, keys, spoil(list(args)) if name == "exchange" else args)

    link.run = spoiled  # type: ignore[method-assign]
    try:
        with pytest.raises(StorageUnavailable):
            backend.exchange((codes, "code"), issue(codes, tokens, refresh), [(tokens, "old")])
    finally:
        link.run = run  # type: ignore[method-assign]
    assert codes.get("code") is not None and tokens.get("old") is not None
    assert tokens.get("access") is None and refresh.get("refresh") is None
    assert backend.exchange((codes, "code"), issue(codes, tokens, refresh), []) is not None
