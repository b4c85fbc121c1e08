"""The SQL backends' batches: held writes sent at the end, all or nothing, in one statement.

Alike on SQLite and Postgres: reads inside see the store, not the held writes (as in a
Redis batch); the outer batch of nested ones sends; a failure anywhere in the held writes
lands none of them and raises ``StorageUnavailable``. Postgres: one statement, so one
round trip and one commit, and a server lost at the batch's end answers 503.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest
from flask import Flask

from app import create_app
from app.storage import Put, Storage, StorageSpec, StorageUnavailable
from app.storage import postgres as postgres_module
from app.storage.postgres import PostgresBackend
from app.storage.sql import SQLBackend
from app.storage.sqlite import SQLiteBackend
from tests.backends import database_url, with_search_path
from tests.conftest import base_config, basic, close_app
from tests.storage.conftest import empty
from tests.storage.test_availability import proxy_to, via  # noqa: F401 - a fixture


@pytest.fixture(params=("sqlite", "postgres"))
def sql(request: pytest.FixtureRequest, tmp_path) -> Iterator[SQLBackend]:
    """SQLite (a temp file) and Postgres (the session's schema), with empty tables."""
    if request.param == "sqlite":
        backend = SQLiteBackend(f"sqlite:///{tmp_path}/oauth2.db")
        backend.migrate()
        yield backend
        backend.close()
        return
    shared: PostgresBackend = request.getfixturevalue("postgres_backend")
    empty(shared)
    yield shared


def test_reads_inside_see_the_store_and_the_writes_land_at_the_end(sql: SQLBackend) -> None:
    tokens, audit = sql.table("tokens", None), sql.table("audit", None)
    tokens.put("old", {"user_id": "u1"})
    with sql.batch():
        tokens.put("new", {"user_id": "u1"})
        tokens.discard("old")
        audit.append({"event": "token_issued"})
        assert tokens.get("new") is None  # held, as in a Redis batch
        assert tokens.get("old") is not None
        assert audit.recent(5) == []
    assert [r["key"] for r in tokens.list_by_user("u1")] == ["new"]
    assert [r["event"] for r in audit.recent(5)] == ["token_issued"]


def test_the_outermost_batch_sends(sql: SQLBackend) -> None:
    tokens = sql.table("tokens", None)
    with sql.batch():
        with sql.batch():
            tokens.put("inner", {"user_id": "u1"})
        assert tokens.get("inner") is None  # the inner batch's end sent nothing
        tokens.put("outer", {"user_id": "u1"})
    assert {r["key"] for r in tokens.list_by_user("u1")} == {"inner", "outer"}


@pytest.mark.parametrize(
    ("steps", "left"),
    [
        ([("put", "a"), ("discard", "a")], None),
        ([("discard", "a"), ("put", "b")], "b"),
        ([("put", "a"), ("put", "b")], "b"),
        ([("put", "a"), ("discard", "a"), ("put", "c")], "c"),
    ],
)
def test_of_several_writes_to_one_key_the_last_decides(sql: SQLBackend, steps, left) -> None:
    tokens = sql.table("tokens", None)
    tokens.put("k", {"user_id": "before", "version": "before"})
    with sql.batch():
        for verb, version in steps:
            if verb == "put":
                tokens.put("k", {"user_id": version, "version": version})
            else:
                tokens.discard("k")
        tokens.put("other", {"user_id": "x"})
    found = tokens.get("k")
    assert (found and found["version"]) == left
    assert [r["key"] for r in tokens.list_by_user(left)] == (["k"] if left else [])
    assert tokens.get("other") is not None


def test_a_failing_write_lands_none_of_the_batch(sql: SQLBackend) -> None:
    tokens, audit = sql.table("tokens", None), sql.table("audit", None)
    missing = sql.table("no_such_table", None)  # the server refuses this write
    tokens.put("kept", {"user_id": "u1"})
    with pytest.raises(StorageUnavailable), sql.batch():
        tokens.put("first", {"user_id": "u1"})
        tokens.discard("kept")
        missing.put("refused", {"user_id": "u1"})
        audit.append({"event": "token_issued"})
    assert tokens.get("first") is None
    assert tokens.get("kept") is not None
    assert audit.recent(5) == []
    with sql.batch():  # the backend works on
        tokens.put("after", {"user_id": "u1"})
    assert tokens.get("after") is not None


def test_a_batch_too_big_for_one_statement_is_still_all_or_nothing(
    sql: SQLBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_module, "BATCH_STATEMENT_WRITES", 2)
    tokens = sql.table("tokens", None)
    with sql.batch():
        for n in range(5):
            tokens.put(f"k{n}", {"user_id": "u1"})
    assert len(tokens.list_by_user("u1")) == 5
    with pytest.raises(StorageUnavailable), sql.batch():
        for n in range(5):
            tokens.put(f"m{n}", {"user_id": "u2"})
        sql.table("no_such_table", None).put("refused", {})  # in the last statement
    assert tokens.list_by_user("u2") == []


def test_postgres_sends_a_batch_as_one_statement(postgres_backend: PostgresBackend) -> None:
    empty(postgres_backend)
    sent: list[str] = []
    run = postgres_backend._run

    def counting(pool, query, params, fetch):
        sent.append(query)
        return run(pool, query, params, fetch)

    postgres_backend._run = counting  # type: ignore[method-assign]
    try:
        tokens, audit = postgres_backend.table("tokens", 60), postgres_backend.table("audit", None)
        refresh = postgres_backend.table("refresh_tokens", 3600)
        with postgres_backend.batch():
            refresh.put("r", {"user_id": "u1", "grant_id": "g"})
            tokens.put("a", {"user_id": "u1", "grant_id": "g"})
            tokens.discard("gone")
            audit.append({"event": "token_issued"})
        assert len(sent) == 1
        assert sent[0].startswith("WITH w0 AS (INSERT")
    finally:
        del postgres_backend._run
    assert tokens.revoke_by_grant("g") == 1
    assert refresh.get("r")["expires_at"] is not None
    assert len(audit.recent(5)) == 1


def test_postgres_lost_at_the_batchs_end_raises_and_lands_nothing(
    postgres_backend: PostgresBackend,
    pg_schema: str,
    proxy_to,  # noqa: F811
) -> None:
    empty(postgres_backend)
    proxy = proxy_to(database_url())
    backend = PostgresBackend(with_search_path(via(database_url(), proxy.port), pg_schema))
    try:
        tokens = backend.table("tokens", None)
        tokens.put("warm", {"user_id": "u1"})
        with pytest.raises(StorageUnavailable), backend.batch():
            tokens.put("held", {"user_id": "u1"})
            proxy.stop()
        proxy.start()
        assert tokens.get("held") is None
        with backend.batch():
            tokens.put("held", {"user_id": "u1"})
        assert tokens.get("held") is not None
    finally:
        backend.close()


def test_a_cross_backend_exchange_in_a_batch_writes_at_once(tmp_path) -> None:
    """Its writes are not held: a failing one puts the taken code back at once."""
    codes_url, tokens_url = f"sqlite:///{tmp_path}/codes.db", f"sqlite:///{tmp_path}/tokens.db"
    storage = Storage(
        {
            "codes": StorageSpec(codes_url, 60),
            "tokens": StorageSpec(tokens_url, 60),
            "refresh_tokens": StorageSpec(tokens_url, 60),
        }
    )
    try:
        storage.migrate()
        storage.codes.put("code", {"client_id": "c"})
        with sqlite3.connect(f"{tmp_path}/tokens.db") as db:
            db.execute("DROP TABLE oauth2_refresh_tokens")
        puts = [
            Put(storage.tokens, "access", {"client_id": "c"}),
            Put(storage.refresh_tokens, "refresh", {"client_id": "c"}),
        ]
        with pytest.raises(StorageUnavailable), storage.batch():
            storage.exchange((storage.codes, "code"), puts)
        assert storage.codes.get("code") is not None
        assert storage.tokens.get("access") is None
    finally:
        storage.close()


# -- the token endpoint on Postgres ---------------------------------------------------------
@pytest.fixture
def pg_app(postgres_backend, pg_schema: str, proxy_to, tmp_path, dummy_site):  # noqa: F811
    empty(postgres_backend)
    proxy = proxy_to(database_url())
    url = with_search_path(via(database_url(), proxy.port), pg_schema)
    storage = {"default": url, "auto_migrate": False}
    app = create_app(base_config(tmp_path, dummy_site, storage=storage))
    app.config["TESTING"] = True
    yield app, proxy
    close_app(app)


def test_a_token_response_lost_at_the_batchs_end_answers_503(
    pg_app: tuple[Flask, object], postgres_backend: PostgresBackend, monkeypatch
) -> None:
    app, proxy = pg_app
    client = app.test_client()
    storage = app.extensions["oauth2"].storage
    (backend,) = storage.backends.values()
    tokens, audit = postgres_backend.table("tokens", None), postgres_backend.table("audit", None)
    issued = client.post("/token", data={"grant_type": "client_credentials"}, headers=basic())
    assert issued.status_code == 200, issued.get_json()
    assert len(tokens.list_by_client("test")) == 1
    events = len(audit.recent(50))
    assert events > 0

    send = backend.send

    def lost_then_send(held):  # the server goes away just as the batch is sent
        proxy.stop()
        try:
            send(held)
        finally:
            proxy.start()

    monkeypatch.setattr(backend, "send", lost_then_send)
    failed = client.post("/token", data={"grant_type": "client_credentials"}, headers=basic())
    assert failed.status_code == 503
    assert len(tokens.list_by_client("test")) == 1  # nothing of the failed response landed
    assert len(audit.recent(50)) == events
    monkeypatch.undo()
    again = client.post("/token", data={"grant_type": "client_credentials"}, headers=basic())
    assert again.status_code == 200
    assert len(tokens.list_by_client("test")) == 2


def test_a_cross_backend_exchange_writes_to_redis_at_once_too(tmp_path) -> None:
    """The same with the tokens on Redis: a put that fails (its server is down) is seen
    by the exchange, which puts the code back, not later at the batch's end."""
    from bench import procs
    from tests.backends import redis_url, require_service

    require_service("redis", redis_url())
    dead = f"redis://127.0.0.1:{procs.free_port()}/0"
    storage = Storage(
        {
            "codes": StorageSpec(f"sqlite:///{tmp_path}/codes.db", 60),
            "tokens": StorageSpec(redis_url(), 60),
            "refresh_tokens": StorageSpec(dead, 60),
        }
    )
    try:
        storage.migrate()
        storage.codes.put("code", {"client_id": "c"})
        puts = [
            Put(storage.tokens, "access-x", {"client_id": "c"}),
            Put(storage.refresh_tokens, "refresh-x", {"client_id": "c"}),
        ]
        with pytest.raises(StorageUnavailable), storage.batch():
            storage.exchange((storage.codes, "code"), puts)
        assert storage.codes.get("code") is not None
        assert storage.tokens.get("access-x") is None  # put back: the order undone
    finally:
        storage.close()
