"""Postgres backend: psycopg 3 and one ``psycopg_pool.ConnectionPool`` per process.

The pool opens lazily, after one probe connection, so a server that is down
fails in milliseconds rather than after the pool timeout. A pool that timed out
while the server is unreachable is dropped for the same reason; the next call
probes again and recovers once the server is back. A pool inherited across
``fork()`` is abandoned and a new one opened in the child.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Annotated, Any, cast
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout
from pydantic import ConfigDict, Field

from .. import process
from .base import BackendOptions, Put, Record, StorageConfigError, StorageUnavailable, Table
from .sql import Held, SQLBackend, SQLTable, Statement, row

#: Options (in ``options`` or the URL query) that size the pool; the rest go to libpq.
POOL_OPTIONS: dict[str, type] = {
    "min_size": int,
    "max_size": int,
    "timeout": float,
    "max_idle": float,
    "max_lifetime": float,
    "reconnect_timeout": float,
    "max_waiting": int,
    "num_workers": int,
}
POOL_DEFAULTS: dict[str, Any] = {"min_size": 1, "max_size": 10, "timeout": 5.0}
#: psycopg connection arguments; ``prepare_threshold: null`` suits PgBouncer transaction mode.
CONNECTION_ARGUMENTS = {"prepare_threshold"}
CONNECTION_DEFAULTS: dict[str, Any] = {"connect_timeout": 3, "application_name": "oauth2-server"}

_CREATE_VERSIONS = pgsql.SQL(
    "CREATE TABLE IF NOT EXISTS {} (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION)"
)
_FIND_VERSION = pgsql.SQL("SELECT 1 FROM {} WHERE version = %s")
_ADD_VERSION = pgsql.SQL("INSERT INTO {} VALUES (%s, extract(epoch FROM now()))")

#: Seconds a connection back from a statement counts as alive: the pool checks one on
#: checkout (an empty query, a round trip) only when it was idle longer. One that died
#: sooner fails its statement, which runs again once the pool checked every idle one.
FRESH_SECONDS = 1.0

#: Held writes per statement of a batch: each is a CTE, well under the 65535 parameters.
BATCH_STATEMENT_WRITES = 500

#: Advisory lock key serialising migrations across processes ("oauth" in hex).
MIGRATION_LOCK = 0x6F61757468


def pool_settings(url: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Split URL query and ``options`` into a libpq conninfo string and pool arguments."""
    parts = urlsplit(url)
    params: dict[str, Any] = {**CONNECTION_DEFAULTS, **dict(parse_qsl(parts.query)), **options}
    pool: dict[str, Any] = {**POOL_DEFAULTS, "kwargs": {"autocommit": True}}
    try:
        for name in [n for n in params if n in POOL_OPTIONS]:
            pool[name] = POOL_OPTIONS[name](params.pop(name))
        for name in [n for n in params if n in CONNECTION_ARGUMENTS]:
            pool["kwargs"][name] = params.pop(name)
        conninfo = make_conninfo(urlunsplit(parts._replace(query="")), **params)
    except (ValueError, psycopg.ProgrammingError) as exc:
        raise StorageConfigError(f"postgres: invalid option in {url!r}: {exc}") from exc
    return conninfo, pool


def _check_stale(conn: psycopg.Connection[Any]) -> None:
    """The pool's check on checkout, for a connection idle over :data:`FRESH_SECONDS`."""
    if time.monotonic() - getattr(conn, "oauth2_used", 0.0) >= FRESH_SECONDS:
        ConnectionPool.check_connection(conn)


def _connection_lost(exc: psycopg.OperationalError) -> bool:
    """Whether the connection, not the statement, failed (terminated, restarted, reset)."""
    if isinstance(exc, PoolTimeout | PoolClosed):
        return False
    return exc.sqlstate is None or exc.sqlstate.startswith(("08", "57P"))


class PostgresOptions(BackendOptions):
    """The pool's options, typed; any other key is a libpq keyword, which libpq checks."""

    model_config = ConfigDict(extra="allow", strict=False, frozen=True)

    min_size: Annotated[int, Field(ge=0)] | None = None
    max_size: Annotated[int, Field(gt=0)] | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None
    max_idle: Annotated[float, Field(gt=0)] | None = None
    max_lifetime: Annotated[float, Field(gt=0)] | None = None
    reconnect_timeout: Annotated[float, Field(gt=0)] | None = None
    max_waiting: Annotated[int, Field(ge=0)] | None = None
    num_workers: Annotated[int, Field(gt=0)] | None = None


class PostgresBackend(SQLBackend):
    Options = PostgresOptions
    placeholder = "%s"
    json_count = (
        "jsonb_set({c}::jsonb, '{{count}}',"
        " to_jsonb(COALESCE(({c}::jsonb ->> 'count')::bigint, 0) + ?::bigint))::text"
    )

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.conninfo, self.pool_options = pool_settings(url, self.options)
        self._pool: ConnectionPool | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _probe(self) -> None:
        try:
            psycopg.connect(self.conninfo, **self.pool_options["kwargs"]).close()
        except psycopg.Error as exc:
            raise StorageUnavailable(f"postgres: {exc}") from exc

    def _get_pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None or self._pid != process.pid():
                # A pool inherited across fork() is dropped, never closed: its
                # sockets are the parent's (psycopg only closes them in the owner).
                self._probe()
                pool = ConnectionPool(
                    self.conninfo,
                    check=_check_stale,
                    open=False,
                    name=f"oauth2-{process.pid()}",
                    **self.pool_options,
                )
                pool.open()
                self._pool, self._pid = pool, process.pid()
            return self._pool

    def _drop_if_down(self, pool: ConnectionPool) -> None:
        """After a pool timeout, drop the pool if the server is unreachable."""
        try:
            self._probe()
        except StorageUnavailable:
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.close(timeout=1.0)

    def _run(self, pool: ConnectionPool, sql: str, params: tuple[Any, ...], fetch: bool) -> Any:
        with pool.connection() as conn:
            cursor = conn.execute(sql, params)
            result = cursor.fetchall() if fetch else cursor.rowcount
            conn.oauth2_used = time.monotonic()  # type: ignore[attr-defined]
            return result

    def execute(self, sql: str, params: tuple[Any, ...] = (), fetch: bool = False) -> Any:
        pool = self._get_pool()
        try:
            try:
                return self._run(pool, sql, params, fetch)
            except psycopg.OperationalError as exc:
                if not _connection_lost(exc):
                    raise
                # Every SQLTable statement is an upsert, a select or a delete, so
                # running it again on a fresh connection leaves the same state; an
                # increment may count twice, which errs on the strict side. The idle
                # connections may be as dead (a restarted server): checked first.
                pool.check()
                return self._run(pool, sql, params, fetch)
        except PoolTimeout as exc:
            self._drop_if_down(pool)
            raise StorageUnavailable(f"postgres: {exc}") from exc
        except psycopg.Error as exc:
            raise StorageUnavailable(f"postgres: {exc}") from exc

    def exchange_owned(
        self, take: tuple[SQLTable, str], puts: Sequence[Put], discards: Sequence[tuple[Table, str]]
    ) -> Record | None:
        """One statement, so one round trip: the take is a CTE and every write depends on it."""
        table, key = take
        take_sql, params = table.take_statement(key)
        steps, values = [f"taken AS ({take_sql})"], list(params)
        writes = [cast(SQLTable, p.table).put_statement(p.key, p.record, p.ttl, True) for p in puts]
        writes += [cast(SQLTable, t).delete_statement(k, True) for t, k in discards]
        for number, (statement, args) in enumerate(writes):
            steps.append(f"w{number} AS ({statement})")
            values.extend(args)
        # The steps are SQLTable's fixed statements; every value is a parameter.
        query = f"WITH {', '.join(steps)} SELECT key, expires_at, data FROM taken"  # noqa: S608
        found = self.execute(query, tuple(values), True)
        return row(found[0]) if found else None

    def send(self, held: list[Held]) -> None:
        """A batch's writes as one statement (one round trip, one commit), each write a CTE.

        The writes of one statement run at once on one snapshot, so of several writes to
        a key only the last is kept (every held write replaces the row or deletes it, so
        the last alone decides). A batch too big for one statement (never a request's) is
        sent as several in one transaction.
        """
        last: dict[tuple[str, str], Statement] = {}
        for table, key, statement in held:
            last.pop((table, key), None)  # re-added: the order stays the writes' order
            last[(table, key)] = statement
        writes = list(last.values())
        size = BATCH_STATEMENT_WRITES
        statements = [_joined(writes[at : at + size]) for at in range(0, len(writes), size)]
        if len(statements) == 1:
            self.execute(*statements[0])
            return
        pool = self._get_pool()
        try:
            with pool.connection() as conn, conn.transaction():
                for query, params in statements:
                    conn.execute(query, params)
        except PoolTimeout as exc:
            self._drop_if_down(pool)
            raise StorageUnavailable(f"postgres: {exc}") from exc
        except psycopg.Error as exc:
            raise StorageUnavailable(f"postgres: {exc}") from exc

    def run_migration(self, version: int, statements: list[str]) -> bool:
        versions = pgsql.Identifier(f"{self.table_prefix}schema_version")
        try:
            with self._get_pool().connection() as conn, conn.transaction():
                # Held until commit: a second process waits, then sees the version applied.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                conn.execute(_CREATE_VERSIONS.format(versions))
                if conn.execute(_FIND_VERSION.format(versions), (version,)).fetchone():
                    return False
                for statement in statements:
                    conn.execute(statement)
                conn.execute(_ADD_VERSION.format(versions), (version,))
                return True
        except psycopg.Error as exc:
            raise StorageUnavailable(f"postgres: {exc}") from exc

    def ping(self) -> None:
        self.execute("SELECT 1", fetch=True)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == process.pid():
            pool.close()


def _joined(writes: list[Statement]) -> Statement:
    """Writes on distinct rows as one statement: ``WITH w0 AS (first), ... last``."""
    *before, (last, _) = writes
    steps = [f"w{number} AS ({query})" for number, (query, _) in enumerate(before)]
    query = f"WITH {', '.join(steps)} {last}" if steps else last
    return query, tuple(value for _, params in writes for value in params)
