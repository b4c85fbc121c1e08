"""Backends for the storage contract suite: SQLite (a temp file), Redis and Postgres.

``backend`` is parametrised over all three and hands each test empty tables.
Redis works in the database of ``REDIS_URL`` (flushed); Redis Cluster on
``REDIS_CLUSTER_URL`` or three nodes started for the session; Postgres in a schema
made for this session and dropped at its end (see ``tests/backends.py``).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from app.storage import TABLES
from app.storage.base import Backend, Table
from app.storage.postgres import PostgresBackend
from app.storage.redis import RedisBackend
from app.storage.sqlite import SQLiteBackend
from tests.backends import (
    database_url,
    postgres_schema,
    redis_cluster_url,
    redis_url,
    require_service,
    with_search_path,
)
from tests.redis_cluster import redis_cluster

BACKENDS = ("sqlite", "redis", "postgres", "redis_cluster")


@pytest.fixture(scope="session")
def redis_backend() -> Iterator[RedisBackend]:
    require_service("redis", redis_url())
    backend = RedisBackend(redis_url())
    yield backend
    backend.link.client.flushdb()
    backend.close()


@pytest.fixture
def own_redis_backend(tmp_path: Path) -> Iterator[RedisBackend]:
    """A backend on a ``redis-server`` this test starts: for a test that changes or
    reads what is the whole server's (``SCRIPT FLUSH``, ``commandstats``), which the
    other xdist worker's tests share on the test Redis."""
    from tests.scaleout.conftest import RedisServer

    server = RedisServer(tmp_path / "redis")
    server.start()
    backend = RedisBackend(server.url())
    try:
        yield backend
    finally:
        backend.close()
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisBackend]:
    """``REDIS_CLUSTER_URL`` if set, else a three-node cluster this session starts."""
    with ExitStack() as stack:
        url = redis_cluster_url()
        if url is None:
            try:
                url = stack.enter_context(redis_cluster(tmp_path_factory.mktemp("cluster")))
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                if os.environ.get("CI"):
                    raise
                pytest.skip(f"could not start a Redis Cluster: {exc}")
        require_service("redis", url)
        backend = RedisBackend(url)
        yield backend
        empty(backend)
        backend.close()


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[str]:
    """A schema of this session's own in ``DATABASE_URL``, migrated, dropped at the end."""
    with postgres_schema(database_url()) as schema:
        yield schema


@pytest.fixture(scope="session")
def postgres_backend(pg_schema: str) -> Iterator[PostgresBackend]:
    backend = PostgresBackend(with_search_path(database_url(), pg_schema), {"max_size": 5})
    backend.migrate()
    yield backend
    backend.close()


def empty(backend: Backend) -> None:
    """Remove every record the previous test left."""
    if isinstance(backend, RedisBackend):
        client = backend.link.client
        if isinstance(client, RedisCluster):
            client.flushdb(target_nodes=RedisCluster.PRIMARIES)
        else:
            client.flushdb()
    elif isinstance(backend, PostgresBackend):
        backend.execute("TRUNCATE " + ", ".join(backend.table_prefix + t for t in TABLES))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path) -> Iterator[Backend]:
    """Each backend in turn, with empty tables."""
    if request.param == "sqlite":
        sqlite = SQLiteBackend(f"sqlite:///{tmp_path}/oauth2.db")
        sqlite.migrate()
        yield sqlite
        sqlite.close()
        return
    shared: Backend = request.getfixturevalue(f"{request.param}_backend")
    empty(shared)
    yield shared


@pytest.fixture
def table(backend: Backend) -> Table:
    """The ``tokens`` table with no default lifetime."""
    return backend.table("tokens", None)
