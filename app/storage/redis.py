"""Redis backend: records as JSON strings with native TTL, indexes as sorted sets.

Key layout (``oauth2`` is the ``key_prefix`` option, ``<t>`` the table):

* ``oauth2:<t>:{<key>}``: the record as JSON (with ``expires_at``), expiring
  natively at that time (``SET ... PXAT``).
* ``oauth2:<t>:<field>:{<value>}`` for ``user_id``, ``client_id``, ``grant_id``:
  a sorted set of record keys scored by their expiry (``inf`` for none); the set
  itself expires with its longest-lived member, so it outlives each record. Not for
  the audit table (``base.UNLISTED``), read by time only: an index there would hold a
  busy client's whole history (``purge`` unlinks those an older version made).
* ``oauth2:<t>:log``: the audit log, record keys scored by append time.

Redis Cluster: each atomic step touches one key (``GETDEL`` for take, a one-key
Lua script for index upkeep and for revoke's compare-and-delete), so no command
is ever cross-slot; the hash tag pins each record and each index to the slot of
its own key or value, spreading a table over the cluster, and keeps any future
companion key of a record in that record's slot. Instead of multi-key
transactions, writes are ordered: a put writes the record before its index
entries, and whoever removes an index entry re-reads the record afterwards and
re-indexes it if it was put again meanwhile, so a live record is never unindexed.

``exchange`` (a redemption, its audit entry and the entry's log member included) is
one script on a single server. A cluster puts the records of one redemption in
different slots, so there it is the base class's take-then-write, which puts the
taken record back if a write fails.

What differs between one server and a Cluster lives in :mod:`.redis_link`, chosen at
connect time; the Lua scripts are the files in ``lua/``.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Annotated, Any, cast

from pydantic import Field

from .. import process
from . import codec
from .base import (
    INDEXED_FIELDS,
    Backend,
    BackendOptions,
    Probe,
    Put,
    Record,
    Table,
)
from .redis_link import Batch, Link, connect, guarded


class RedisOptions(BackendOptions):
    """What a table entry's ``options`` may set: the key prefix and redis-py's client options."""

    key_prefix: str = "oauth2"
    max_connections: Annotated[int, Field(gt=0)] | None = None
    socket_timeout: Annotated[float, Field(gt=0)] | None = None
    socket_connect_timeout: Annotated[float, Field(gt=0)] | None = None
    health_check_interval: Annotated[int, Field(ge=0)] | None = None
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    client_name: str | None = None
    ssl_cert_reqs: str | None = None
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None


class RedisBackend(Backend):
    """One Redis server, or a Cluster (``redis+cluster://``), shared by its tables."""

    Options = RedisOptions

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.prefix = str(self.options.pop("key_prefix", "oauth2"))
        self._link: Link | None = None
        self._lock = threading.Lock()
        self._batch: ContextVar[Batch | None] = ContextVar(f"redis-batch-{id(self)}", default=None)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        batch = None if self._batch.get() is not None else self.link.batch()
        if batch is None:
            yield  # nested: the outer batch sends; a cluster holds nothing
            return
        token = self._batch.set(batch)
        try:
            yield
        finally:
            self._batch.reset(token)
            batch.send()

    @contextlib.contextmanager
    def unbatched(self) -> Iterator[None]:
        """Write at once inside, even within a batch (a cross-backend exchange: a write
        whose failure must be seen before the taken record is kept)."""
        token = self._batch.set(None)
        try:
            yield
        finally:
            self._batch.reset(token)

    def current_batch(self) -> Batch | None:
        return self._batch.get()

    @property
    @guarded  # a Cluster client asks for the slot map as it is made
    def link(self) -> Link:
        """Return this process's link, (re)creating it lazily and after fork()."""
        link = self._link
        if link is not None and link.pid == process.pid():
            return link  # (no lock: what it guards is making one)
        with self._lock:
            if self._link is None or self._link.pid != process.pid():
                self._link = connect(self.url, self.options)
            return self._link

    def table(self, name: str, ttl: int | None) -> RedisTable:
        return RedisTable(self, name, ttl)

    @guarded
    def exchange(
        self,
        take: tuple[Table, str],
        puts: Sequence[Put],
        discards: Sequence[tuple[Table, str]],
        probe: Probe | None = None,
    ) -> Record | None:
        """One script on one server; a cluster spreads the keys over slots, so there
        (and for tables elsewhere) the ordered best effort of the base class. The script
        answers ``probe`` too when its table is here (a live record's key ``EXISTS``:
        an expired one is gone from Redis at its ``PXAT``)."""
        table, key = take
        tables = [table, *(p.table for p in puts), *(t for t, _ in discards)]
        link = self.link
        if not link.spans_keys or not all(
            isinstance(t, RedisTable) and t.backend is self for t in tables
        ):
            return super().exchange(take, puts, discards)
        probe_key = ""
        if probe is not None and isinstance(probe.table, RedisTable):
            probe_key = probe.table.rkey(probe.key) if probe.table.backend is self else ""
        # ``lua/exchange.lua``'s flat plan (decoding it as JSON cost the script a tenth
        # of its time: the records inside, escaped).
        plan: list[Any] = [repr(time.time()), probe_key]
        plan += cast(RedisTable, table).locator(key)
        plan.append(len(discards))
        for gone, gone_key in discards:
            plan += cast(RedisTable, gone).locator(gone_key)
        plan.append(len(puts))
        for put in puts:
            plan += cast(RedisTable, put.table).planned_put(put)
        answer = link.run("exchange", [], plan)
        if not answer:
            return None
        raw, found = answer
        if probe is not None and probe_key:
            probe.found = bool(found)
        return cast(RedisTable, table)._decode(key, raw, time.time())

    @guarded
    def ping(self) -> None:
        self.link.client.ping()

    def close(self) -> None:
        with self._lock:
            link, self._link = self._link, None
        if link is not None and link.pid == process.pid():
            link.close()


#: The most records ``lua/list.lua`` reads with an index (more: a second round trip,
#: so that no script holds the server for long).
LISTED_IN_SCRIPT = 2_000


def _stored(record: Record, expires_at: float | None) -> Record:
    """What is stored of ``record``: its fields but its key, then its expiry, last."""
    data = dict(record)
    data.pop("key", None)
    data.pop("expires_at", None)
    data["expires_at"] = expires_at
    return data


def _expired(record: Record, now: float) -> bool:
    expires_at = record.get("expires_at")
    return expires_at is not None and expires_at <= now


def _matches(record: Record, field: str, value: str) -> bool:
    found = record.get(field)
    return found is not None and str(found) == str(value)


class RedisTable(Table):
    """One logical table as keys under ``<prefix>:<table>:``."""

    def __init__(self, backend: RedisBackend, name: str, ttl: int | None) -> None:
        super().__init__(name, ttl)
        self.backend = backend
        self.base = f"{backend.prefix}:{name}"
        self.log = f"{self.base}:log"

    def rkey(self, key: str) -> str:
        """The Redis key of the record under ``key``."""
        return f"{self.base}:{{{key}}}"

    def _ikey(self, field: str, value: Any) -> str:
        return f"{self.base}:{field}:{{{value}}}"

    def locator(self, key: str) -> list[str]:
        """The record's Redis key, the table's key base and the index member, for scripts."""
        return [self.rkey(key), self.base, key]

    def planned_put(self, put: Put) -> list[Any]:
        """One put of ``lua/exchange.lua``'s plan: rkey, json, pxat|'', member, score, base,
        log key|'', log score|'' (the log: an :meth:`~.base.Table.entry`'s, as ``append``),
        the number of index keys, then those keys."""
        expires_at = self.expiry(put.ttl)
        data = _stored(put.record, expires_at)
        if expires_at is None:
            at, score = "", "inf"
        else:
            at, score = str(math.ceil(expires_at * 1000)), repr(float(expires_at))
        ikeys = self.index_keys(data)
        log, log_score = (self.log, repr(put.log)) if put.log else ("", "")
        raw = codec.dumps(data)
        return [
            self.rkey(put.key),
            raw,
            at,
            put.key,
            score,
            self.base,
            log,
            log_score,
            len(ikeys),
            *ikeys,
        ]

    def _decode(self, key: str, raw: str | None, now: float) -> Record | None:
        if raw is None:
            return None
        record = json.loads(raw)
        return None if _expired(record, now) else {**record, "key": key}

    def _load(self, link: Link, keys: list[str]) -> list[Record | None]:
        raws = link.mget([self.rkey(k) for k in keys]) if keys else []
        now = time.time()
        return [self._decode(k, raw, now) for k, raw in zip(keys, raws, strict=True)]

    def index_keys(self, record: Record) -> list[str]:
        """The keys of the indexes ``record`` belongs to (the listed fields it has)."""
        return [
            self._ikey(field, value)
            for field in self.indexed
            if (value := record.get(field)) is not None
        ]

    def entries(self, key: str, record: Record) -> list[tuple[str, str]]:
        """The (index key, member) pairs of ``record`` under ``key``."""
        return [(ikey, key) for ikey in self.index_keys(record)]

    def index(self, link: Link, key: str, record: Record) -> None:
        """Add the record to its indexes, one one-key script each (Cluster-safe)."""
        expires_at = record.get("expires_at")
        score = "inf" if expires_at is None else repr(float(expires_at))
        for ikey, _ in self.entries(key, record):
            link.run("index", [ikey], [key, score])

    def unindex(self, link: Link, entries: list[tuple[str, str]]) -> None:
        """Drop index entries, then re-index any of their records put again meanwhile."""
        if not entries:
            return
        pipe = link.client.pipeline(transaction=False)
        for ikey, key in entries:
            pipe.zrem(ikey, key)
        pipe.execute()
        keys = sorted({key for _, key in entries})
        for key, record in zip(keys, self._load(link, keys), strict=True):
            if record is not None:
                self.index(link, key, record)

    def _replaced(self, link: Link, key: str, data: Record, old: Any) -> None:
        """Drop the index entries the replaced record had and the new one has not."""
        if isinstance(old, str):
            stale = set(self.entries(key, json.loads(old))) - set(self.entries(key, data))
            self.unindex(link, sorted(stale))

    @guarded
    def put(self, key: str, record: Record, ttl: int | None = None) -> None:
        expires_at = self.expiry(ttl)
        if expires_at is not None and expires_at <= time.time():
            self.delete(key)
            return
        self._put(key, record, expires_at)

    def _put(self, key: str, record: Record, expires_at: float | None, log: float = 0) -> None:
        """Write the record, then its index entries (and a log entry), in one round trip
        on one server (held for the batch, if there is one)."""
        data = _stored(record, expires_at)
        link = self.backend.link
        at = math.ceil(expires_at * 1000) if expires_at is not None else None
        batch = self.backend.current_batch()
        if batch is None:
            self._replaced(link, key, data, link.write(self, key, data, at, log))
        else:  # sent with the batch's pipeline, when the batch ends
            batch.put(self, key, data, at, log, lambda old: self._replaced(link, key, data, old))

    @guarded
    def get(self, key: str) -> Record | None:
        return self._decode(key, self.backend.link.get(self.rkey(key)), time.time())

    @property
    def indexed_at_once(self) -> bool:
        return self.backend.link.spans_keys

    def joins(self, other: Table) -> bool:
        return (
            isinstance(other, RedisTable)
            and other.backend is self.backend
            and self.backend.link.spans_keys
        )

    @guarded
    def get_with(self, key: str, field: str, other: Table) -> tuple[Record | None, Record | None]:
        """Both reads as one script on one server when ``other`` is there too (a Cluster
        spreads the two keys over slots: two reads, as the base class)."""
        if not self.joins(other):
            return super().get_with(key, field, other)
        link = self.backend.link
        raw, other_raw, looked = link.run(
            "lookup", [], [self.rkey(key), field, cast(RedisTable, other).base]
        )
        now = time.time()
        record = self._decode(key, raw, now)
        value = record.get(field) if record is not None else None
        if value is None:
            return record, None
        if not looked:  # not a string: read as the base class would
            return record, other.get(str(value))
        return record, cast(RedisTable, other)._decode(value, other_raw, now)

    @guarded
    def take(self, key: str) -> Record | None:
        return self._decode(key, self.backend.link.take(self, key), time.time())

    @guarded
    def incr(self, key: str, amount: int = 1, ttl: int | None = None) -> int:
        expires_at = self.expiry(ttl)
        fresh = json.dumps({"count": amount, "expires_at": expires_at}, separators=(",", ":"))
        at = "" if expires_at is None else math.ceil(expires_at * 1000)
        return int(self.backend.link.run("incr", [self.rkey(key)], [amount, fresh, at]))

    def delete(self, key: str) -> bool:
        return self.take(key) is not None

    def discard(self, key: str) -> None:
        batch = self.backend.current_batch()
        if batch is None:
            self.delete(key)
        else:
            batch.take(self, key)

    @guarded
    def _list(self, field: str, value: str) -> list[Record]:
        self.listed(field)
        link, ikey, now = self.backend.link, self._ikey(field, value), time.time()
        if link.spans_keys:  # one server: the index and its records in one script
            keys, raws = link.run("list", [ikey], [repr(now), self.base, LISTED_IN_SCRIPT])
            if raws is None:  # a huge index: its records read by one MGET, as elsewhere
                records = self._load(link, keys)
            else:
                records = [self._decode(k, raws[i] or None, now) for i, k in enumerate(keys)]
        else:
            pipe = link.client.pipeline(transaction=False)
            pipe.zremrangebyscore(ikey, "-inf", now)
            pipe.zrangebyscore(ikey, f"({now!r}", "+inf")
            keys = pipe.execute()[1]
            records = self._load(link, keys)
        pairs = list(zip(keys, records, strict=True))
        stale = [(ikey, k) for k, r in pairs if r is None or not _matches(r, field, value)]
        self.unindex(link, stale)
        return [r for _, r in pairs if r is not None and _matches(r, field, value)]

    def list_by_user(self, user_id: str) -> list[Record]:
        return self._list("user_id", user_id)

    def list_by_client(self, client_id: str) -> list[Record]:
        return self._list("client_id", client_id)

    @guarded
    def revoke_by_grant(self, grant_id: str) -> int:
        self.listed("grant_id")
        link, ikey = self.backend.link, self._ikey("grant_id", grant_id)
        keys = link.client.zrange(ikey, 0, -1)
        removed = {}
        for key in keys:
            raw = link.run("revoke", [self.rkey(key)], [str(grant_id)])
            if raw:
                removed[key] = json.loads(raw)
        entries = {(ikey, k) for k in keys}
        entries.update(e for k, r in removed.items() for e in self.entries(k, r))
        self.unindex(link, sorted(entries))
        now = time.time()
        return sum(1 for r in removed.values() if not _expired(r, now))

    @guarded
    def purge(self) -> int:
        link, now = self.backend.link, time.time()
        pipe = link.client.pipeline(transaction=False)
        gone: list[str] = []  # indexes an older version kept (``UNLISTED`` tables)
        for field in INDEXED_FIELDS:
            # ``{*``: an index key's value is in braces; a longer key prefix's is not matched.
            match = _glob_escape(f"{self.base}:{field}:") + "{*"
            for ikey in link.client.scan_iter(match=match, count=1000, _type="zset"):
                if field in self.indexed:
                    pipe.zremrangebyscore(ikey, "-inf", now)
                else:
                    gone.append(ikey)
        if self.ttl:
            pipe.zremrangebyscore(self.log, "-inf", now - self.ttl)
        for start in range(0, len(gone), 1000):
            unlink = link.client.pipeline(transaction=False)
            for ikey in gone[start : start + 1000]:
                unlink.unlink(ikey)
            unlink.execute()
        return sum(pipe.execute())

    @guarded
    def write(self, put: Put) -> None:
        """:meth:`put`, or for an entry (``put.log``) the record and its log member, as
        :meth:`append`."""
        if put.log:
            self._put(put.key, put.record, self.expiry(put.ttl), log=put.log)
        else:
            super().write(put)

    @guarded
    def recent(self, limit: int = 50) -> list[Record]:
        link = self.backend.link
        if self.ttl:
            link.client.zremrangebyscore(self.log, "-inf", time.time() - self.ttl)
        while limit > 0:
            keys = link.client.zrevrange(self.log, 0, limit - 1)
            records = self._load(link, keys)
            gone = [k for k, r in zip(keys, records, strict=True) if r is None]
            if not gone:
                return [r for r in records if r is not None]
            link.client.zrem(self.log, *gone)
        return []


def _glob_escape(text: str) -> str:
    """Escape Redis glob specials so a key prefix matches literally."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
