"""The SQL side of the storage contract, shared by SQLite and Postgres.

Each logical table is one SQL table: the indexed fields as columns and the whole
record as JSON in ``data``. Expiry is an ``expires_at`` column that every read
filters on and :meth:`SQLTable.purge` deletes by.
"""

from __future__ import annotations

import abc
import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Any, cast

from . import codec
from .base import INDEXED_FIELDS, Backend, Probe, Put, Record, Table

#: One SQL statement and its parameters.
Statement = tuple[str, tuple[Any, ...]]
#: A write held by a batch: its table's name, its key and its statement.
Held = tuple[str, str, Statement]

#: Every logical table's SQL table and indexes; idempotent, so a later migration that adds
#: tables to ``TABLES`` runs it again.
CREATE_TABLES = [
    "CREATE TABLE IF NOT EXISTS {t} (key TEXT PRIMARY KEY, user_id TEXT,"
    " client_id TEXT, grant_id TEXT, expires_at DOUBLE PRECISION, data TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS {t}_user_client ON {t} (user_id, client_id)",
    "CREATE INDEX IF NOT EXISTS {t}_client ON {t} (client_id)",
    "CREATE INDEX IF NOT EXISTS {t}_grant ON {t} (grant_id)",
    "CREATE INDEX IF NOT EXISTS {t}_expires ON {t} (expires_at)",
]

#: Versioned migrations: (version, description, statements); ``{t}`` is each table name.
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "create tables", CREATE_TABLES),
    (2, "create the keys and consents tables (OpenID Connect)", CREATE_TABLES),
    (3, "create the factors table (two-step sign-in)", CREATE_TABLES),
]


def row(values: tuple[Any, ...]) -> Record:
    """A record from a (key, expires_at, data) row."""
    key, expires_at, data = values
    record = json.loads(data)
    record["key"] = key
    record["expires_at"] = expires_at
    return record


class SQLBackend(Backend):
    """A backend speaking SQL; subclasses provide connections and the placeholder."""

    placeholder = "?"
    table_prefix = "oauth2_"
    #: ``column``'s JSON text with ``count`` raised by one parameter (dialects differ).
    json_count = "json_set({c}, '$.count', COALESCE(json_extract({c}, '$.count'), 0) + ?)"

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(url, options)
        #: The writes the current context's batch holds (``None``: no batch).
        self._held: ContextVar[list[Held] | None] = ContextVar(f"sql-batch-{id(self)}")

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Hold the puts and discards made inside; send them in one transaction at the end.

        As Redis's batch: only :meth:`SQLTable.put` (so ``append``) and ``discard`` are
        held; reads, takes, deletes, counters and exchanges go at once and see the
        store, not the writes held. The held writes are sent when the block ends, also
        when it raised, before the caller answers; all or nothing, a failure raises
        :class:`StorageUnavailable`. A batch inside a batch adds to the outer one.
        """
        if self._held.get(None) is not None:
            yield
            return
        held: list[Held] = []
        token = self._held.set(held)
        try:
            yield
        finally:
            self._held.reset(token)
            if held:
                self.send(held)

    @contextlib.contextmanager
    def unbatched(self) -> Iterator[None]:
        """Write at once inside, even within a batch (a write whose failure must be seen)."""
        token = self._held.set(None)
        try:
            yield
        finally:
            self._held.reset(token)

    def hold(self, table: str, key: str, statement: Statement) -> bool:
        """Add a write to the current batch; ``False``: there is none, run it now."""
        held = self._held.get(None)
        if held is None:
            return False
        held.append((table, key, statement))
        return True

    @abc.abstractmethod
    def send(self, held: list[Held]) -> None:
        """Apply a batch's held writes in order, in one transaction: all or nothing."""

    @abc.abstractmethod
    def execute(self, sql: str, params: tuple[Any, ...] = (), fetch: bool = False) -> Any:
        """Run one statement in its own transaction; return rows if ``fetch`` else rowcount."""

    @abc.abstractmethod
    def run_migration(self, version: int, statements: list[str]) -> bool:
        """Apply one migration unless already applied; return whether it ran."""

    def sql(self, text: str) -> str:
        return text.replace("?", self.placeholder)

    def owns(self, tables: list[Table]) -> bool:
        """Whether every table is one of this backend's (so one transaction spans them)."""
        return all(isinstance(t, SQLTable) and t.backend is self for t in tables)

    def table(self, name: str, ttl: int | None) -> SQLTable:
        return SQLTable(self, name, ttl)

    def exchange(
        self,
        take: tuple[Table, str],
        puts: Sequence[Put],
        discards: Sequence[tuple[Table, str]],
        probe: Probe | None = None,
    ) -> Record | None:
        """Atomic when every table is this backend's; else the base class's best effort
        (``probe``: left to the caller)."""
        table, key = take
        if not self.owns([table, *(p.table for p in puts), *(t for t, _ in discards)]):
            return super().exchange(take, puts, discards)
        return self.exchange_owned((cast(SQLTable, table), key), puts, discards)

    @abc.abstractmethod
    def exchange_owned(
        self, take: tuple[SQLTable, str], puts: Sequence[Put], discards: Sequence[tuple[Table, str]]
    ) -> Record | None:
        """:meth:`exchange` over this backend's own tables: one transaction or statement."""

    def migrate(self) -> list[str]:
        from . import TABLES

        applied = []
        for version, description, statements in MIGRATIONS:
            expanded = [s.format(t=self.table_prefix + t) for t in TABLES for s in statements]
            if self.run_migration(version, expanded):
                applied.append(f"{version}: {description}")
        return applied


class SQLTable(Table):
    """One logical table stored as one SQL table."""

    def __init__(self, backend: SQLBackend, name: str, ttl: int | None) -> None:
        super().__init__(name, ttl)
        self.backend = backend
        t = backend.table_prefix + name
        live = "(expires_at IS NULL OR expires_at > ?)"
        sql = backend.sql
        insert = f"INSERT INTO {t} (key, user_id, client_id, grant_id, expires_at, data)"
        upsert = (
            " ON CONFLICT (key) DO UPDATE SET user_id = excluded.user_id,"
            " client_id = excluded.client_id, grant_id = excluded.grant_id,"
            " expires_at = excluded.expires_at, data = excluded.data"
        )
        self._put = sql(f"{insert} VALUES (?, ?, ?, ?, ?, ?){upsert}")
        # The same writes made only if an exchange's take (the CTE ``taken``) found a record.
        self._put_if_taken = sql(f"{insert} SELECT ?, ?, ?, ?, ?, ? FROM taken{upsert}")
        self._delete_if_taken = sql(f"DELETE FROM {t} WHERE key = ? AND EXISTS (TABLE taken)")
        self._get = sql(f"SELECT key, expires_at, data FROM {t} WHERE key = ? AND {live}")
        self._take = sql(
            f"DELETE FROM {t} WHERE key = ? AND {live} RETURNING key, expires_at, data"
        )
        self._delete = sql(f"DELETE FROM {t} WHERE key = ? AND {live}")
        self._delete_any = sql(f"DELETE FROM {t} WHERE key = ?")
        self._by = {
            field: sql(f"SELECT key, expires_at, data FROM {t} WHERE {field} = ? AND {live}")
            for field in ("user_id", "client_id")
        }
        self._revoke = sql(f"DELETE FROM {t} WHERE grant_id = ? AND {live}")
        self._revoke_any = sql(f"DELETE FROM {t} WHERE grant_id = ?")
        self._purge = sql(f"DELETE FROM {t} WHERE expires_at IS NOT NULL AND expires_at <= ?")
        # A counter: created if absent, else raised in place (restarted if expired); one
        # statement, so the row lock makes concurrent increments add up on both engines.
        was_live = f"({t}.expires_at IS NULL OR {t}.expires_at > ?)"
        self._incr = sql(
            f"{insert} VALUES (?, NULL, NULL, NULL, ?, ?) ON CONFLICT (key) DO UPDATE SET"
            f" data = CASE WHEN {was_live} THEN {backend.json_count.format(c=t + '.data')}"
            f" ELSE excluded.data END, expires_at = CASE WHEN {was_live}"
            f" THEN {t}.expires_at ELSE excluded.expires_at END RETURNING data"
        )
        self._recent = sql(
            f"SELECT key, expires_at, data FROM {t} WHERE {live} ORDER BY key DESC LIMIT ?"
        )

    def put_statement(
        self, key: str, record: Record, ttl: int | None, if_taken: bool = False
    ) -> Statement:
        """The upsert of one put, as (SQL, parameters)."""
        data = {k: v for k, v in record.items() if k not in ("key", "expires_at")}
        indexed = tuple(data.get(f) for f in INDEXED_FIELDS)
        params = (key, *indexed, self.expiry(ttl), codec.dumps(data))
        return (self._put_if_taken if if_taken else self._put), params

    def take_statement(self, key: str) -> Statement:
        return self._take, (key, time.time())

    def delete_statement(self, key: str, if_taken: bool = False) -> Statement:
        return (self._delete_if_taken if if_taken else self._delete_any), (key,)

    def put(self, key: str, record: Record, ttl: int | None = None) -> None:
        statement = self.put_statement(key, record, ttl)
        if not self.backend.hold(self.name, key, statement):
            self.backend.execute(*statement)

    def get(self, key: str) -> Record | None:
        rows = self.backend.execute(self._get, (key, time.time()), fetch=True)
        return row(rows[0]) if rows else None

    def take(self, key: str) -> Record | None:
        rows = self.backend.execute(*self.take_statement(key), fetch=True)
        return row(rows[0]) if rows else None

    def delete(self, key: str) -> bool:
        live = self.backend.execute(self._delete, (key, time.time())) > 0
        if not live:
            self.backend.execute(self._delete_any, (key,))
        return live

    def discard(self, key: str) -> None:
        statement = self.delete_statement(key)
        if not self.backend.hold(self.name, key, statement):
            self.backend.execute(*statement)

    def incr(self, key: str, amount: int = 1, ttl: int | None = None) -> int:
        fresh = json.dumps({"count": amount}, separators=(",", ":"))
        now = time.time()
        params = (key, self.expiry(ttl), fresh, now, amount, now)
        return int(json.loads(self.backend.execute(self._incr, params, fetch=True)[0][0])["count"])

    def _list(self, field: str, value: str) -> list[Record]:
        self.listed(field)
        # str(): Postgres will not compare a TEXT column with an integer parameter.
        rows = self.backend.execute(self._by[field], (str(value), time.time()), fetch=True)
        return [row(r) for r in rows]

    def list_by_user(self, user_id: str) -> list[Record]:
        return self._list("user_id", user_id)

    def list_by_client(self, client_id: str) -> list[Record]:
        return self._list("client_id", client_id)

    def revoke_by_grant(self, grant_id: str) -> int:
        self.listed("grant_id")
        count = self.backend.execute(self._revoke, (str(grant_id), time.time()))
        self.backend.execute(self._revoke_any, (str(grant_id),))
        return count

    def purge(self) -> int:
        return self.backend.execute(self._purge, (time.time(),))

    def recent(self, limit: int = 50) -> list[Record]:
        rows = self.backend.execute(self._recent, (time.time(), limit), fetch=True)
        return [row(r) for r in rows]
