"""Redis scripts: shipped with the package, and reloaded when a server forgot them
(restart, SCRIPT FLUSH)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import redis
from setuptools import find_packages

from app.storage.redis import RedisBackend
from app.storage.redis_link import SCRIPTS, lua


def test_put_and_take_reload_flushed_scripts(own_redis_backend: RedisBackend) -> None:
    redis_backend = own_redis_backend  # SCRIPT FLUSH is the whole server's
    table = redis_backend.table("tokens", 60)
    table.put("k1", {"user_id": "u1", "client_id": "c1", "grant_id": "g1"})
    redis_backend.link.client.script_flush()
    table.put("k2", {"user_id": "u1", "client_id": "c1", "grant_id": "g1"})
    assert {r["key"] for r in table.list_by_user("u1")} == {"k1", "k2"}
    redis_backend.link.client.script_flush()
    assert table.take("k1")["client_id"] == "c1"
    assert [r["key"] for r in table.list_by_client("c1")] == ["k2"]
    # The index entry went with the record: nothing stale is left for k1.
    assert redis_backend.link.client.zscore("oauth2:tokens:user_id:{u1}", "k1") is None
    assert table.revoke_by_grant("g1") == 1


def test_a_batch_is_one_round_trip_and_survives_flushed_scripts(
    own_redis_backend: RedisBackend, monkeypatch
) -> None:
    redis_backend = own_redis_backend  # SCRIPT FLUSH is the whole server's
    tokens, audit = redis_backend.table("tokens", 60), redis_backend.table("audit", None)
    sent: list[int] = []  # the commands of each write to the server, sent at once
    real = redis.connection.AbstractConnection.pack_commands

    def pack_commands(conn, commands):
        sent.append(len(commands))
        return real(conn, commands)

    monkeypatch.setattr(redis.connection.AbstractConnection, "pack_commands", pack_commands)
    redis_backend.link.client.script_flush()
    with redis_backend.batch():
        tokens.put("a", {"user_id": "u1", "client_id": "c1", "grant_id": "g1"})
        tokens.put("r", {"user_id": "u1", "client_id": "c1", "grant_id": "g1"})
        audit.append({"event": "token_issued", "client_id": "c1"})
        assert tokens.get("a") is None  # held until the batch ends
        assert sent == [1]  # that GET alone
    # One put script each (record, its indexes, the audit log); sent twice, as the first
    # try found the scripts flushed.
    assert sent == [1, 3, 3]
    assert {r["key"] for r in tokens.list_by_client("c1")} == {"a", "r"}
    assert len(audit.recent(5)) == 1


def test_an_installed_package_has_every_module_and_script() -> None:
    """pyproject.toml finds every package, and its package data every ``lua/`` script."""
    root = Path(__file__).resolve().parents[2]
    setup = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(p.parent.relative_to(root).parts) for p in (root / "app").rglob("__init__.py")
    }
    include = setup["packages"]["find"]["include"]
    assert set(find_packages(str(root), include=include)) == found
    storage = root / "app" / "storage"
    shipped = {p for pattern in setup["package-data"]["app.storage"] for p in storage.glob(pattern)}
    assert {p.stem for p in shipped} == {*SCRIPTS, "keep"}  # keep.lua: the others' prelude
    assert all(lua(name).startswith("--") for name in SCRIPTS)
