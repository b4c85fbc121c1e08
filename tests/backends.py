"""Where the test Redis and Postgres live, and what to do when one is not running.

Settings: ``REDIS_URL`` (default ``redis://127.0.0.1:6379/15``, a database the
tests flush) and ``DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``;
tests work in a schema of their own and drop it); ``REDIS_CLUSTER_URL``, if set,
adds a Redis Cluster run of the storage suite. When ``CI`` is set, a server
that cannot be reached fails the tests that need it; elsewhere they skip, saying
how to start it. Any ``conftest.py`` may import these helpers.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
import redis
from psycopg import sql

START = {
    "redis": 'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
    "--appendonly no",
    "postgres": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
}


#: Databases apart between pytest-xdist workers (``make test`` runs two): each worker
#: shifts every Redis database number the tests use (15, 14, 11) by this times its
#: number, so three workers fit in Redis's 16 databases.
WORKER_DB_STEP = 5


def worker_db(db: int) -> int:
    """Database ``db`` as this pytest-xdist worker uses it (as is outside xdist and on
    the first worker): tests that flush a database never flush another worker's."""
    shifted = db - WORKER_DB_STEP * _worker()
    if shifted < 0:
        raise RuntimeError(f"xdist worker {_worker()} has no Redis database of its own: 3 at most")
    return shifted


def redis_url() -> str:
    """``REDIS_URL`` with its database number as this xdist worker uses it (0 if none)."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    parts = urlsplit(url)
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise RuntimeError(f"REDIS_URL names no database number: {url}")
    return redis_db_url(worker_db(int(db)), url)


def redis_db_url(db: int, base: str | None = None) -> str:
    """``base`` (default: :func:`redis_url`) pointing at database ``db``."""
    parts = urlsplit(base or redis_url())
    return urlunsplit(parts._replace(path=f"/{db}"))


def redis_cluster_url() -> str | None:
    """``REDIS_CLUSTER_URL`` (``redis+cluster://host:port``), or ``None``: no cluster tests."""
    return os.environ.get("REDIS_CLUSTER_URL") or None


def database_url() -> str:
    """``DATABASE_URL``; for the second xdist worker on, a database of its own next to it
    (``test_gw1``, made if missing): what a test counts or ends by name on the server
    (``pg_stat_activity``), and what it hears by ``NOTIFY``, is its worker's alone."""
    url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    worker = _worker()
    return _worker_database(url, worker) if worker else url


def _worker() -> int:
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)


@functools.cache
def _worker_database(url: str, worker: int) -> str:
    parts = urlsplit(url)
    name = f"{parts.path.lstrip('/') or 'postgres'}_gw{worker}"
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.errors.DuplicateDatabase:
        pass
    except (psycopg.Error, OSError):
        pass  # not reachable: ``require_service`` says so for the worker's URL
    return urlunsplit(parts._replace(path=f"/{name}"))


@functools.cache
def unreachable(name: str, url: str) -> str | None:
    """Return why the ``name`` server at ``url`` cannot be used, or ``None``."""
    try:
        if name == "redis":
            url = url.replace("redis+cluster://", "redis://", 1)
            with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2) as client:
                client.ping()
        else:
            psycopg.connect(url, connect_timeout=2).close()
    except (redis.RedisError, psycopg.Error, OSError) as exc:
        return str(exc).splitlines()[0]
    return None


def require_service(name: str, url: str) -> None:
    """Skip the test (fail it when ``CI`` is set) if ``name`` ("redis"/"postgres") is down."""
    error = unreachable(name, url)
    if error is None:
        return
    message = f"{name} is not reachable at {url} ({error}); start it with: {START[name]}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def with_search_path(url: str, schema: str) -> str:
    """Return ``url`` with libpq ``options`` making ``schema`` the search path."""
    option = quote(f"-csearch_path={schema}", safe="")
    return f"{url}{'&' if '?' in url else '?'}options={option}"


@contextmanager
def postgres_schema(url: str | None = None) -> Iterator[str]:
    """Create a uniquely named schema for one test session, yield its name, drop it."""
    url = url or database_url()
    require_service("postgres", url)
    schema = f"oauth2_test_{os.getpid()}_{secrets.token_hex(3)}"
    name = sql.Identifier(schema)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(name))
    try:
        yield schema
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(name))


def redis_round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count every command batch sent to any Redis (storage and limiter alike)."""
    sent = [0]
    send = redis.connection.AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):  # type: ignore[no-untyped-def]
        sent[0] += 1
        return send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    return sent
