"""Redis: the index scripts survive a server that forgot them (restart, SCRIPT FLUSH)."""

from __future__ import annotations

from app.storage.redis import RedisBackend


def test_put_and_take_reload_flushed_scripts(redis_backend: RedisBackend) -> None:
    redis_backend.link.client.flushdb()
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
