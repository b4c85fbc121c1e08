"""Outages: every driver error is ``StorageUnavailable``; lost connections recover."""

from __future__ import annotations

import json
import os
import secrets
import select
import threading
import warnings
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from psycopg_pool import PoolTimeout
from redis._parsers import _RESP2Parser

from app.storage import Storage
from app.storage.base import Backend, StorageUnavailable, Table
from app.storage.postgres import PostgresBackend
from app.storage.redis import RedisBackend
from tests import backends
from tests.backends import database_url, redis_url, with_search_path
from tests.storage.proxy import Proxy

#: What a call fails with when it waited out a timeout (a store known down must not).
WAITED = (PoolTimeout, redis.TimeoutError, psycopg.errors.ConnectionTimeout, TimeoutError)
CLOSED = {
    "redis": lambda: RedisBackend("redis://127.0.0.1:1/0"),
    "postgres": lambda: PostgresBackend("postgresql://postgres@127.0.0.1:1/test"),
}
VERBS = {
    "put": lambda t: t.put("k", {"user_id": "u"}),
    "get": lambda t: t.get("k"),
    "take": lambda t: t.take("k"),
    "delete": lambda t: t.delete("k"),
    "list_by_user": lambda t: t.list_by_user("u"),
    "list_by_client": lambda t: t.list_by_client("c"),
    "revoke_by_grant": lambda t: t.revoke_by_grant("g"),
    "purge": lambda t: t.purge(),
    "append": lambda t: t.append({"event": "x"}),
    "recent": lambda t: t.recent(),
}


@pytest.fixture(params=sorted(CLOSED))
def closed(request: pytest.FixtureRequest):
    backend = CLOSED[request.param]()
    yield backend
    backend.close()


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_closed_port_raises_storage_unavailable(closed: Backend, verb: str) -> None:
    with pytest.raises(StorageUnavailable):
        VERBS[verb](closed.table("codes", 60))


def test_closed_port_ping_and_migrate(closed: Backend) -> None:
    with pytest.raises(StorageUnavailable):
        closed.ping()
    if isinstance(closed, PostgresBackend):
        with pytest.raises(StorageUnavailable):
            closed.migrate()


@pytest.mark.parametrize(
    "entry",
    [
        {"type": "Redis", "host": "127.0.0.1", "port": 1, "db": 0},
        {"type": "Postgres", "options": {"host": "127.0.0.1", "port": 1, "database": "test"}},
    ],
)
def test_original_form_on_closed_port(entry: dict, tmp_path) -> None:
    storage = Storage.from_config({"default": f"sqlite:///{tmp_path}/o.db", "codes": entry})
    try:
        with pytest.raises(StorageUnavailable):
            storage.codes.take("k")
    finally:
        storage.close()


def test_postgres_recovers_after_terminate(pg_schema: str) -> None:
    name = f"oauth2-test-{secrets.token_hex(4)}"
    url = with_search_path(database_url(), pg_schema) + f"&application_name={name}"
    backend = PostgresBackend(url, {"min_size": 2})
    try:
        backend.migrate()
        table = backend.table("tokens", None)
        table.put("k", {"user_id": "u"})
        with psycopg.connect(database_url(), autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (name,),
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        assert table.get("k") is not None
        assert table.take("k") is not None
    finally:
        backend.close()


def test_redis_recovers_after_client_kill(redis_backend: RedisBackend) -> None:
    name = f"oauth2-test-{secrets.token_hex(4)}"
    backend = RedisBackend(redis_url(), {"client_name": name})
    try:
        table = backend.table("tokens", None)
        table.put("k", {"user_id": "u"})
        with redis.Redis.from_url(redis_url()) as admin:
            ids = [c["id"] for c in admin.client_list() if c.get("name") == name]
            assert ids
            for client_id in ids:
                admin.client_kill_filter(_id=client_id)
        assert table.get("k") is not None
        assert [r["key"] for r in table.list_by_user("u")] == ["k"]
        kill_clients(name)
        table.put("k2", {"user_id": "u"})  # a write (one send, its replies read) re-dials too
        with backend.batch():
            table.put("k3", {"user_id": "u"})
        kill_clients(name)
        with backend.batch():
            table.put("k4", {"user_id": "u"})
        assert sorted(r["key"] for r in table.list_by_user("u")) == ["k", "k2", "k3", "k4"]
    finally:
        backend.close()


def named_clients(name: str) -> int:
    with redis.Redis.from_url(redis_url()) as admin:
        return sum(1 for client in admin.client_list() if client.get("name") == name)


def test_sends_keep_their_connections(redis_backend: RedisBackend) -> None:
    """A send takes a connection off the link's own stack and puts it back: threads at
    once open at most one each, and later sends open none."""
    name = f"oauth2-test-{secrets.token_hex(4)}"
    backend = RedisBackend(redis_url(), {"client_name": name})
    try:
        table = backend.table("tokens", None)
        barrier = threading.Barrier(6)

        def work(n: int) -> None:
            barrier.wait()
            for i in range(40):
                table.put(f"t{n}-{i}", {"user_id": "u"})
                assert table.get(f"t{n}-{i}") is not None

        threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        opened = named_clients(name)
        assert 1 <= opened <= 6
        assert len(backend.link.idle) == opened  # every one back on the stack
        for i in range(50):
            assert table.get(f"t0-{i % 40}") is not None
        assert named_clients(name) == opened
    finally:
        backend.close()


def test_a_connection_with_a_reply_nobody_asked_for_is_dialled_again(
    redis_backend: RedisBackend,
) -> None:
    """Out of step (a reply waiting that no send of ours asked for): the next send goes
    on a fresh connection and reads its own reply."""
    table = redis_backend.table("tokens", None)
    table.put("k", {"user_id": "u"})
    link = redis_backend.link
    stray = link.idle[-1]
    stray.send_command("PING")  # its reply is never read
    waiting = select.poll()
    waiting.register(stray._sock, select.POLLIN)
    assert waiting.poll(2000)  # the reply came (left unread on the socket)
    assert table.get("k")["user_id"] == "u"
    assert table.get("k")["user_id"] == "u"


@pytest.mark.parametrize("parser", [None, _RESP2Parser], ids=["hiredis", "python"])
def test_a_reply_read_ahead_into_the_parser_is_out_of_step_too(redis_backend, parser) -> None:
    """Two replies arrived and one was read: the other waits in the reply parser's
    buffer, not on the socket. The next send must not take it for its own (another
    user's record), whichever parser reads the replies."""
    backend = RedisBackend(redis_url())
    if parser is not None:  # before the first connection is made
        backend.link.client.connection_pool.connection_kwargs["parser_class"] = parser
    try:
        table = backend.table("tokens", None)
        table.put("alice", {"user_id": "alice"})
        table.put("bob", {"user_id": "bob"})
        conn = backend.link.idle[-1]
        conn.send_packed_command(conn.pack_commands([("GET", table.rkey("alice"))] * 2))
        assert json.loads(conn.read_response())["user_id"] == "alice"
        waiting = select.poll()
        waiting.register(conn._sock, select.POLLIN)
        assert not waiting.poll(50)  # nothing left on the socket: the second reply is buffered
        assert table.get("bob")["user_id"] == "bob"
    finally:
        backend.close()


def kill_clients(name: str) -> None:
    with redis.Redis.from_url(redis_url()) as admin:
        for client in admin.client_list():
            if client.get("name") == name:
                admin.client_kill_filter(_id=client["id"])


def test_a_redis_reply_error_leaves_the_connection_in_step(redis_backend: RedisBackend) -> None:
    """A batch whose script fails (an index key of the wrong type) is refused as a whole
    (its other writes were sent with it and landed); the next write gets its own reply."""
    client = redis_backend.link.client
    client.flushdb()
    table = redis_backend.table("tokens", None)
    client.set("oauth2:tokens:user_id:{wrong}", "not a sorted set")
    with pytest.raises(StorageUnavailable, match="WRONGTYPE"), redis_backend.batch():
        table.put("a", {"user_id": "u"})
        table.put("b", {"user_id": "wrong"})
        table.put("c", {"user_id": "u"})
    assert table.get("a") is not None and table.get("c") is not None  # sent with it
    table.put("d", {"user_id": "u"})
    assert sorted(r["key"] for r in table.list_by_user("u")) == ["a", "c", "d"]


def test_forked_child_uses_its_own_connections(table: Table) -> None:
    table.put("k", {"user_id": "u"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads, 3.12+
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            ok = table.get("k") is not None and table.list_by_user("u") != []
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert table.get("k") is not None  # the parent's connections survived the child


@pytest.mark.parametrize("ci, outcome", [("1", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_require_service_fails_on_ci_and_skips_elsewhere(monkeypatch, ci, outcome) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="redis-server --daemonize yes"):
        backends.require_service("redis", "redis://127.0.0.1:1/0")


def via(url: str, port: int) -> str:
    """Return ``url`` pointed at ``127.0.0.1:port``, keeping its credentials."""
    parts = urlsplit(url)
    auth, at, _ = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{auth}{at}127.0.0.1:{port}").geturl()


@pytest.fixture
def proxy_to():
    """Return a started, stoppable proxy to a server URL; stopped after the test."""
    proxies: list[Proxy] = []

    def start(url: str) -> Proxy:
        parts = urlsplit(url)
        proxies.append(Proxy(parts.hostname or "127.0.0.1", parts.port or 0))
        proxies[-1].start()
        return proxies[-1]

    yield start
    for proxy in proxies:
        proxy.stop()


def outage_then_recovery(proxy: Proxy, backend: Backend) -> None:
    """Calls fail with StorageUnavailable (soon fast) while down, and work once back."""
    try:
        table = backend.table("tokens", None)
        table.put("k", {"user_id": "u"})
        proxy.stop()
        for _ in range(2):
            with pytest.raises(StorageUnavailable):
                table.get("k")
        with pytest.raises(StorageUnavailable):
            table.put("k2", {"user_id": "u"})
        with pytest.raises(StorageUnavailable) as error:
            table.get("k")
        # Fast: refused at once, not after waiting out a pool or socket timeout.
        assert not isinstance(error.value.__cause__, WAITED), repr(error.value.__cause__)
        proxy.start()
        assert table.get("k") is not None
    finally:
        backend.close()


def test_redis_outage_fails_fast_then_recovers(redis_backend, proxy_to) -> None:
    proxy = proxy_to(redis_url())
    outage_then_recovery(proxy, RedisBackend(via(redis_url(), proxy.port)))


def test_postgres_outage_fails_fast_then_recovers(
    postgres_backend, pg_schema: str, proxy_to
) -> None:
    proxy = proxy_to(database_url())
    url = with_search_path(via(database_url(), proxy.port), pg_schema)
    outage_then_recovery(proxy, PostgresBackend(url, {"timeout": 1}))


def lose_first_reply(monkeypatch) -> list[int]:
    """The first reply read from any Redis connection is lost (a read timeout); returns
    the count of command batches sent."""
    sent = [0]
    pack = redis.connection.AbstractConnection.pack_commands
    read = redis.connection.AbstractConnection.read_response
    lost = [False]

    def packing(conn, commands):
        sent[0] += 1
        return pack(conn, commands)

    def reading(conn, *args, **kwargs):
        if not lost[0]:
            lost[0] = True
            raise redis.exceptions.TimeoutError("Timeout reading from socket")
        return read(conn, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "pack_commands", packing)
    monkeypatch.setattr(redis.connection.AbstractConnection, "read_response", reading)
    return sent


def test_a_write_whose_reply_was_lost_is_not_made_twice(redis_backend, monkeypatch) -> None:
    """The server may have counted it: a storage fault, never a second count."""
    redis_backend.link.client.flushdb()
    counters = redis_backend.table("sessions", None)
    sent = lose_first_reply(monkeypatch)
    with pytest.raises(StorageUnavailable, match="no reply"):
        counters.incr("hits")
    assert sent[0] == 1
    monkeypatch.undo()
    assert counters.incr("hits") == 2  # the lost one was counted, once


def test_a_read_whose_reply_was_lost_is_sent_again(redis_backend, monkeypatch) -> None:
    redis_backend.link.client.flushdb()
    tokens, users = redis_backend.table("tokens", None), redis_backend.table("users", None)
    tokens.put("k", {"user_id": "u"})
    users.put("u", {"name": "U"})
    sent = lose_first_reply(monkeypatch)
    assert tokens.get("k")["user_id"] == "u"
    assert sent[0] == 2
    sent = lose_first_reply(monkeypatch)
    assert tokens.get_with("k", "user_id", users)[1]["name"] == "U"  # a read-only script
    assert sent[0] == 2
