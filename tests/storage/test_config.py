"""Backends built from configuration: the original object form, URLs and options."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest
from psycopg.conninfo import conninfo_to_dict

from app.storage import Storage
from app.storage.base import StorageConfigError
from app.storage.postgres import PostgresBackend, pool_settings
from app.storage.redis import RedisBackend, RedisTable
from app.storage.sql import SQLTable
from tests.backends import database_url, redis_url


def round_trip(storage: Storage, name: str) -> None:
    table = getattr(storage, name)
    table.put("k", {"user_id": "alice"})
    assert table.get("k")["user_id"] == "alice"
    assert [r["key"] for r in table.list_by_user("alice")] == ["k"]
    assert table.take("k") is not None


def test_original_redis_form(redis_backend: RedisBackend, tmp_path) -> None:
    url = urlsplit(redis_url())
    entry = {"type": "Redis", "host": url.hostname, "port": url.port, "ttl": 60}
    entry["db"] = int(url.path.strip("/") or 0)
    storage = Storage.from_config({"default": f"sqlite:///{tmp_path}/o.db", "codes": entry})
    try:
        storage.migrate()
        assert isinstance(storage.codes, RedisTable) and storage.codes.ttl == 60
        round_trip(storage, "codes")
        storage.codes.put("k", {})
        assert storage.codes.get("k")["expires_at"] == pytest.approx(time.time() + 60, abs=2)
    finally:
        storage.close()


def test_original_postgres_form(postgres_backend, pg_schema: str, monkeypatch) -> None:
    dsn = conninfo_to_dict(database_url())
    options = {"host": dsn.get("host"), "port": int(dsn.get("port") or 5432)}
    options.update(user=dsn.get("user"), database=dsn.get("dbname"))
    if dsn.get("password"):
        options["password"] = dsn["password"]
    # The object form has no schema setting; libpq's PGOPTIONS points it at the test schema.
    monkeypatch.setenv("PGOPTIONS", f"-csearch_path={pg_schema}")
    storage = Storage.from_config({"default": {"type": "Postgres", "options": options}})
    try:
        assert list(storage.migrate().values()) == [[]]
        assert isinstance(storage.tokens, SQLTable) and storage.tokens.ttl == 7200
        round_trip(storage, "tokens")
    finally:
        storage.close()


def test_postgres_options_from_url_and_config() -> None:
    url = "postgresql://u@db.example:5433/oauth?sslmode=require&max_size=3"
    options = {"min_size": "2", "application_name": "mine", "prepare_threshold": None}
    conninfo, pool = pool_settings(url, options)
    params = conninfo_to_dict(conninfo)
    assert params["sslmode"] == "require" and params["application_name"] == "mine"
    assert params["connect_timeout"] == "3" and params["host"] == "db.example"
    assert pool == {
        "min_size": 2,
        "max_size": 3,
        "timeout": 5.0,
        "kwargs": {"autocommit": True, "prepare_threshold": None},
    }


@pytest.mark.parametrize(
    "build",
    [
        lambda: PostgresBackend("postgresql://u@h/db", {"no_such_libpq_option": 1}),
        lambda: PostgresBackend("postgresql://u@h/db", {"max_size": "many"}),
        lambda: RedisBackend("redis://127.0.0.1:6379/0", {"no_such_option": 1}),
    ],
)
def test_bad_options_are_config_errors(build) -> None:
    with pytest.raises(StorageConfigError):
        build()
