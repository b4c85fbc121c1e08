"""The storage contract: one table of records, addressed by key, with TTL and indexes.

Every backend (SQLite, Redis, Postgres) implements :class:`Table` with the same
behaviour; ``tests/storage/`` runs one suite against all of them.
"""

from __future__ import annotations

import abc
import contextlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

Record = dict[str, Any]

#: Record fields every backend indexes, so that list and revoke verbs are one lookup.
INDEXED_FIELDS = ("user_id", "client_id", "grant_id")
#: Tables never listed by user, client or grant: the audit trail, read by time
#: (``recent``). A backend may keep no index for them (Redis keeps none: two sorted-set
#: members less for each token issued, and no index of a busy client's whole history),
#: and their list and revoke verbs refuse (:meth:`Table.listed`).
UNLISTED = frozenset({"audit"})


class StorageUnavailable(Exception):
    """The backing store could not be reached; the request should be answered 503."""


class StorageConfigError(ValueError):
    """A storage entry in the configuration is invalid."""


def audit_key(now: float | None = None) -> str:
    """Return a key that sorts by time, so audit rows read back newest first."""
    ns = int((now if now is not None else time.time()) * 1e9)
    return f"{ns:020d}-{os.urandom(4).hex()}"


@dataclass(frozen=True)
class Put:
    """One write of an exchange: ``record`` under ``key`` in ``table``.

    ``log``: an :meth:`Table.append`'s time, so the write lists the key in the table's
    log as ``append`` does (0: a plain put).
    """

    table: Table
    key: str
    record: Record
    ttl: int | None = None
    log: float = 0


@dataclass
class Probe:
    """Whether a record lives under ``key`` in ``table`` once an exchange's writes are
    done: a backend that can tell within the exchange's own round trip sets ``found``;
    ``None`` (every other): the caller reads it itself, after the exchange."""

    table: Table
    key: str
    found: bool | None = None


class Table(abc.ABC):
    """One logical table (``codes``, ``tokens``, ...) on one backend.

    Implementations MUST:

    * treat a record whose TTL has passed as absent in every verb, whether or not
      it has been purged yet;
    * make :meth:`take` atomic: when several callers take the same key at once,
      exactly one receives the record;
    * index ``user_id``, ``client_id`` and ``grant_id`` so that the list and
      revoke verbs do not scan the table (but for an :data:`UNLISTED` table);
    * raise :class:`StorageUnavailable` (and nothing else) for any driver error.

    Records are JSON-serialisable dicts. Returned records are copies carrying
    ``key`` and ``expires_at`` (a UNIX time, or ``None`` for no expiry).
    """

    def __init__(self, name: str, ttl: int | None) -> None:
        self.name = name
        #: Default lifetime in seconds of records put into this table; 0/None: no expiry.
        self.ttl = ttl or None
        #: The fields its records are listed by: none for an :data:`UNLISTED` table.
        self.indexed: tuple[str, ...] = () if name in UNLISTED else INDEXED_FIELDS

    def listed(self, field: str) -> None:
        """Refuse a list or revoke verb by ``field`` on a table not listed by it."""
        if field not in self.indexed:
            raise TypeError(f"the {self.name} table is not listed by {field}")

    def expiry(self, ttl: int | None) -> float | None:
        """Return the absolute expiry for a put with ``ttl`` (table default if None)."""
        seconds = self.ttl if ttl is None else ttl
        return time.time() + seconds if seconds else None

    @abc.abstractmethod
    def put(self, key: str, record: Record, ttl: int | None = None) -> None:
        """Insert or replace ``record`` under ``key``; ``ttl`` overrides the table's."""

    @abc.abstractmethod
    def get(self, key: str) -> Record | None:
        """Return the live record under ``key``, or ``None``."""

    @property
    def indexed_at_once(self) -> bool:
        """Whether a record and its index entries are written in one step, so a list
        never misses a live record even after a failed write (SQL: indexed columns of
        the row; one Redis: a script). A Redis Cluster writes the record, then its
        entries: a list there may miss a record whose entries were not written."""
        return True

    def joins(self, other: Table) -> bool:
        """Whether :meth:`get_with` reads from ``other`` in the same round trip (else a
        caller reads the two when it needs them, each through its own table)."""
        return False

    def get_with(self, key: str, field: str, other: Table) -> tuple[Record | None, Record | None]:
        """The live record under ``key``, and ``other``'s live record under the record's
        ``field`` (``None`` when it has none): one round trip where :meth:`joins` says so
        (:class:`~.redis.RedisTable` on one server), else two reads."""
        record = self.get(key)
        value = record.get(field) if record is not None else None
        return record, (other.get(str(value)) if value is not None else None)

    @abc.abstractmethod
    def take(self, key: str) -> Record | None:
        """Atomically return and delete the live record under ``key``."""

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Delete ``key``; return whether a live record was there."""

    def discard(self, key: str) -> None:
        """Delete ``key`` when nothing needs to know whether it was there.

        Inside a batch a backend may hold it and send it with the batch's writes.
        """
        self.delete(key)

    @abc.abstractmethod
    def list_by_user(self, user_id: str) -> list[Record]:
        """Return every live record whose ``user_id`` matches."""

    @abc.abstractmethod
    def list_by_client(self, client_id: str) -> list[Record]:
        """Return every live record whose ``client_id`` matches."""

    @abc.abstractmethod
    def revoke_by_grant(self, grant_id: str) -> int:
        """Delete every record whose ``grant_id`` matches; return how many were live."""

    @abc.abstractmethod
    def purge(self) -> int:
        """Delete expired records; return how many were removed."""

    def append(self, record: Record) -> str:
        """Add a record under a new time-ordered key (the audit log); return the key."""
        put = self.entry(record)
        self.write(put)
        return put.key

    def entry(self, record: Record) -> Put:
        """The write :meth:`append` makes, for an exchange to make it with its own."""
        now = time.time()
        return Put(self, audit_key(now), record, log=now)

    def write(self, put: Put) -> None:
        """Make one :class:`Put` of this table's: :meth:`put`, logged if ``put.log`` says.

        The time-ordered key is the log here; a backend that keeps one besides (Redis's
        sorted set) overrides this to add the key to it.
        """
        self.put(put.key, put.record, put.ttl)

    @abc.abstractmethod
    def recent(self, limit: int = 50) -> list[Record]:
        """Return up to ``limit`` records put by :meth:`append`, newest first."""

    @abc.abstractmethod
    def incr(self, key: str, amount: int = 1, ttl: int | None = None) -> int:
        """Atomically add ``amount`` to the counter under ``key``; return the new count.

        An absent or expired counter starts at ``amount`` and lives ``ttl`` seconds
        (the table's default if None); later increments keep that expiry. The counter
        is a record ``{"count": n}``: :meth:`get` reads it, :meth:`delete` resets it.
        Concurrent increments are never lost, on every backend.
        """


class BackendOptions(BaseModel):
    """A backend's options: strict types, unknown keys refused (``app.config_model``'s way)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Backend(abc.ABC):
    """A connection (pool) to one store, shared by every table configured on it.

    Built from a URL by the scheme registry ``BACKENDS`` in :mod:`app.storage`.
    Driver imports MUST be lazy so that an unused backend's driver need not be
    installed.
    """

    #: The model of the ``options`` a table entry may give this backend (``None``: any).
    Options: ClassVar[type[BaseModel] | None] = None

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.options = dict(options or {})
        problems = self.option_problems(self.options, "options")
        if problems:
            raise StorageConfigError("\n".join(problems))

    @classmethod
    def option_problems(cls, options: dict[str, Any], where: str) -> list[str]:
        """What :attr:`Options` finds wrong with ``options``, one line per key under ``where``."""
        if cls.Options is None:
            return []
        from ..config_model import problem_lines

        try:
            cls.Options.model_validate(options)
        except ValidationError as error:
            return problem_lines(error, where)
        return []

    @abc.abstractmethod
    def table(self, name: str, ttl: int | None) -> Table:
        """Return the table ``name`` on this backend, creating it if needed."""

    def migrate(self) -> list[str]:
        """Create or upgrade the schema; return the names of applied steps."""
        return []

    def ping(self) -> None:
        """Raise :class:`StorageUnavailable` if the store cannot be reached."""

    def exchange(
        self,
        take: tuple[Table, str],
        puts: Sequence[Put],
        discards: Sequence[tuple[Table, str]],
        probe: Probe | None = None,
    ) -> Record | None:
        """Take ``take``'s record and, only if it was live, write ``puts`` and delete ``discards``.

        Implementations MUST make it all-or-nothing and atomic towards concurrent
        callers: one transaction, or one server-side script. This default (for a
        store without them) is the ordered best effort of :func:`ordered_exchange`.
        """
        return ordered_exchange(take, puts, discards)

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Hold this backend's writes made inside and send them together at the end.

        A backend without batching writes at once (the default).
        """
        return contextlib.nullcontext()

    def unbatched(self) -> contextlib.AbstractContextManager[None]:
        """Write at once inside, even within a batch (the default holds nothing anyway)."""
        return contextlib.nullcontext()

    def close(self) -> None:
        """Release connections."""


def ordered_exchange(
    take: tuple[Table, str], puts: Sequence[Put], discards: Sequence[tuple[Table, str]]
) -> Record | None:
    """Take, then write; if a write fails, put the taken record back and undo the writes.

    The best effort where no transaction spans the tables (a Redis Cluster, tables
    on different backends): a failing write is undone, but a process killed between
    the take and the writes still loses the taken record.
    """
    table, key = take
    record = table.take(key)
    if record is None:
        return None
    try:
        for put in puts:
            put.table.write(put)
    except StorageUnavailable:
        with contextlib.suppress(StorageUnavailable):
            _restore(table, key, record)
            for put in puts:
                put.table.delete(put.key)
        raise
    for other, gone in discards:
        other.discard(gone)
    return record


def _restore(table: Table, key: str, record: Record) -> None:
    """Put a taken record back with the lifetime it had left."""
    expires_at = record.get("expires_at")
    if expires_at is None:
        table.put(key, record, ttl=0)
    elif expires_at > time.time():
        table.put(key, record, ttl=max(1, math.ceil(expires_at - time.time())))
