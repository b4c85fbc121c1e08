"""SQLite backend: the embedded default, one connection per thread, WAL journal."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, cast

from pydantic import Field

from .. import process
from .base import BackendOptions, Put, Record, StorageConfigError, StorageUnavailable, Table
from .sql import Held, SQLBackend, SQLTable, row


def sqlite_path(url: str) -> str:
    """Map ``sqlite:///relative.db`` and ``sqlite:////abs.db`` to a file path."""
    if not url.startswith("sqlite:///"):
        raise StorageConfigError(f"SQLite URL must look like sqlite:///path/to/file.db: {url!r}")
    path = url[len("sqlite:///") :].split("?", 1)[0]
    if not path:
        raise StorageConfigError(f"SQLite URL has no file path: {url!r}")
    return path


class SQLiteOptions(BackendOptions):
    #: Seconds a write waits for another process's lock before failing.
    timeout: Annotated[float, Field(gt=0)] = 5.0


class SQLiteBackend(SQLBackend):
    placeholder = "?"
    Options = SQLiteOptions

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.path = sqlite_path(url)
        self.timeout = float(self.options.get("timeout", 5.0))
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != process.pid():
            directory = os.path.dirname(self.path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            self._local.conn, self._local.pid = conn, process.pid()
            with self._lock:
                self._all.append(conn)
        return conn

    def execute(self, sql: str, params: tuple[Any, ...] = (), fetch: bool = False) -> Any:
        try:
            cursor = self._connect().execute(sql, params)
            return cursor.fetchall() if fetch else cursor.rowcount
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"sqlite: {exc}") from exc

    def exchange_owned(
        self, take: tuple[SQLTable, str], puts: Sequence[Put], discards: Sequence[tuple[Table, str]]
    ) -> Record | None:
        """One transaction: the take, the puts and the deletes commit together."""
        table, key = take
        writes = [cast(SQLTable, p.table).put_statement(p.key, p.record, p.ttl) for p in puts]
        writes += [cast(SQLTable, t).delete_statement(k) for t, k in discards]
        with self._transaction() as conn:
            found = conn.execute(*table.take_statement(key)).fetchall()
            if not found:
                return None
            for statement, params in writes:
                conn.execute(statement, params)
        return row(found[0])

    def send(self, held: list[Held]) -> None:
        """A batch's writes in order in one transaction: one commit."""
        with self._transaction() as conn:
            for _, _, (statement, params) in held:
                conn.execute(statement, params)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock at once: no other writer slips in between.
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"sqlite: {exc}") from exc

    def run_migration(self, version: int, statements: list[str]) -> bool:
        try:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS oauth2_schema_version"
                    " (version INTEGER PRIMARY KEY, applied_at REAL)"
                )
                done = conn.execute(
                    "SELECT 1 FROM oauth2_schema_version WHERE version = ?", (version,)
                ).fetchone()
                if not done:
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO oauth2_schema_version VALUES (?, strftime('%s','now'))",
                        (version,),
                    )
                conn.execute("COMMIT")
                return not done
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"sqlite: {exc}") from exc

    def ping(self) -> None:
        self.execute("SELECT 1", fetch=True)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
