"""Redis backend: records as JSON strings with native TTL, indexes as sorted sets.

Key layout (``oauth2`` is the ``key_prefix`` option, ``<t>`` the table):

* ``oauth2:<t>:{<key>}``: the record as JSON (with ``expires_at``), expiring
  natively at that time (``SET ... PXAT``).
* ``oauth2:<t>:<field>:{<value>}`` for ``user_id``, ``client_id``, ``grant_id``:
  a sorted set of record keys scored by their expiry (``inf`` for none); the set
  itself expires with its longest-lived member, so it outlives each record.
* ``oauth2:<t>:log``: the audit log, record keys scored by append time.

Redis Cluster: each atomic step touches one key (``GETDEL`` for take, a one-key
Lua script for index upkeep and for revoke's compare-and-delete), so no command
is ever cross-slot; the hash tag pins each record and each index to the slot of
its own key or value, spreading a table over the cluster, and keeps any future
companion key of a record in that record's slot. Instead of multi-key
transactions, writes are ordered: a put writes the record before its index
entries, and whoever removes an index entry re-reads the record afterwards and
re-indexes it if it was put again meanwhile, so a live record is never unindexed.

``exchange`` (a redemption) is one script on a single server. A cluster puts the
records of one redemption in different slots, so there it is the base class's
take-then-write, which puts the taken record back if a write fails.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.retry import Retry

from .base import (
    INDEXED_FIELDS,
    Backend,
    Put,
    Record,
    StorageConfigError,
    StorageUnavailable,
    Table,
    audit_key,
)

P = ParamSpec("P")
R = TypeVar("R")

#: Driver options a table entry may set; anything else is a configuration error.
CLIENT_OPTIONS = {
    "max_connections", "socket_timeout", "socket_connect_timeout", "health_check_interval",
    "username", "password", "client_name", "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile",
    "ssl_keyfile",
}  # fmt: skip
CLIENT_DEFAULTS: dict[str, Any] = {
    "socket_connect_timeout": 2.0,
    "socket_timeout": 2.0,
    "health_check_interval": 15,
}

# Add a member to an index and keep the index alive as long as its longest-lived member.
INDEX_LUA = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]
if top == 'inf' then redis.call('PERSIST', KEYS[1])
else redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(top) * 1000)) end
"""

# A whole put on one server: SET the record (returning the one it replaced), then add
# it to each index (as INDEX_LUA does) and, for the audit table, to the log. KEYS: the
# record, the index keys, then the log key if ARGV[5] is set. ARGV: the JSON, PXAT ms
# or '', the member, its index score, the log score or ''. (One server only.)
PUT_LUA = """
local old
if ARGV[2] ~= '' then old = redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2], 'GET')
else old = redis.call('SET', KEYS[1], ARGV[1], 'GET') end
local last = #KEYS
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[last], ARGV[5], ARGV[3])
  last = last - 1
end
for i = 2, last do
  redis.call('ZADD', KEYS[i], ARGV[4], ARGV[3])
  local top = redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')[2]
  if top == 'inf' then redis.call('PERSIST', KEYS[i])
  else redis.call('PEXPIREAT', KEYS[i], math.ceil(tonumber(top) * 1000)) end
end
return old
"""

# Delete a record only if it still belongs to the grant; return it.
REVOKE_LUA = """
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local grant = cjson.decode(raw)['grant_id']
if type(grant) ~= 'string' and type(grant) ~= 'number' then return false end
if tostring(grant) ~= ARGV[1] then return false end
redis.call('DEL', KEYS[1])
return raw
"""


# Take a record and drop its index entries in one atomic step (one server only: the
# index keys are not declared, which Redis Cluster would refuse).
TAKE_LUA = """
local raw = redis.call('GETDEL', KEYS[1])
if not raw then return false end
local record = cjson.decode(raw)
for _, field in ipairs({'user_id', 'client_id', 'grant_id'}) do
  local value = record[field]
  if value ~= nil and value ~= cjson.null then
    redis.call('ZREM', ARGV[1] .. ':' .. field .. ':{' .. tostring(value) .. '}', ARGV[2])
  end
end
return raw
"""

# The exchange (see ``Backend.exchange``) as one script on one server: take a record,
# then put records and delete others, index upkeep included. ARGV[1] is the plan:
# {"take": [rkey, base, key], "puts": [[rkey, json, pxat|'', member, score, [ikeys]]],
# "discards": [[rkey, base, key]]}; ARGV[2] is now (seconds). Redis does not roll a
# failed script back, so every argument is checked before the first write.
EXCHANGE_LUA = """
local plan = cjson.decode(ARGV[1])
for _, put in ipairs(plan.puts) do
  if put[3] ~= '' and not tonumber(put[3]) then return redis.error_reply('bad expiry') end
  if put[5] ~= 'inf' and not tonumber(put[5]) then return redis.error_reply('bad score') end
end
local function unindex(raw, base, member)
  local record = cjson.decode(raw)
  for _, field in ipairs({'user_id', 'client_id', 'grant_id'}) do
    local value = record[field]
    if value ~= nil and value ~= cjson.null then
      redis.call('ZREM', base .. ':' .. field .. ':{' .. tostring(value) .. '}', member)
    end
  end
  return record
end
local raw = redis.call('GETDEL', plan.take[1])
if not raw then return false end
local taken = unindex(raw, plan.take[2], plan.take[3])
if taken.expires_at ~= nil and taken.expires_at ~= cjson.null
  and taken.expires_at <= tonumber(ARGV[2]) then return false end
for _, put in ipairs(plan.puts) do
  local old
  if put[3] ~= '' then old = redis.call('SET', put[1], put[2], 'PXAT', put[3], 'GET')
  else old = redis.call('SET', put[1], put[2], 'GET') end
  if old then unindex(old, put[7], put[4]) end
  for _, ikey in ipairs(put[6]) do
    redis.call('ZADD', ikey, put[5], put[4])
    local top = redis.call('ZRANGE', ikey, -1, -1, 'WITHSCORES')[2]
    if top == 'inf' then redis.call('PERSIST', ikey)
    else redis.call('PEXPIREAT', ikey, math.ceil(tonumber(top) * 1000)) end
  end
end
for _, gone in ipairs(plan.discards) do
  local old = redis.call('GETDEL', gone[1])
  if old then unindex(old, gone[2], gone[3]) end
end
return raw
"""


def guarded(method: Callable[P, R]) -> Callable[P, R]:
    """Turn every Redis driver error into :class:`StorageUnavailable`."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (RedisError, RedisClusterException, OSError) as exc:
            raise StorageUnavailable(f"redis: {exc}") from exc

    return wrapper


@dataclass
class Link:
    """One process's client and the scripts registered on it."""

    client: Any
    index: Script
    revoke: Script
    take: Script
    put: Script
    exchange: Script
    pid: int

    def mget(self, keys: list[str]) -> list[str | None]:
        if isinstance(self.client, RedisCluster):
            return self.client.mget_nonatomic(keys)
        return self.client.mget(keys)


class Batch:
    """Writes held for one pipeline: each adds its commands, then reads its replies."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.ops: list[tuple[Callable[[Any], int], Callable[[list[Any]], None]]] = []

    def add(self, queue: Callable[[Any], int], done: Callable[[list[Any]], None]) -> None:
        """``queue(pipe)`` adds commands and says how many; ``done`` gets their replies."""
        self.ops.append((queue, done))

    @guarded
    def send(self) -> None:
        if not self.ops:
            return
        link = self.backend.link
        for attempt in (1, 2):
            pipe = link.client.pipeline(transaction=False)
            counts = [queue(pipe) for queue, _ in self.ops]
            try:
                replies = pipe.execute()
                break
            except NoScriptError:  # the server lost its scripts: load, send again
                if attempt == 2:
                    raise
                link.client.script_load(PUT_LUA)
                link.client.script_load(TAKE_LUA)
        at = 0
        for (_, done), count in zip(self.ops, counts, strict=True):
            done(replies[at : at + count])
            at += count


class RedisBackend(Backend):
    schemes = ("redis", "rediss", "redis+cluster")

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.prefix = str(self.options.pop("key_prefix", "oauth2"))
        unknown = set(self.options) - CLIENT_OPTIONS
        if unknown:
            raise StorageConfigError(f"redis: unknown option(s) {', '.join(sorted(unknown))}")
        self._link: Link | None = None
        self._lock = threading.Lock()
        self._batch: ContextVar[Batch | None] = ContextVar(f"redis-batch-{id(self)}", default=None)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        if self._batch.get() is not None or self.url.startswith("redis+cluster://"):
            yield  # nested: the outer batch sends; a cluster's pipeline has no order
            return
        batch = Batch(self)
        token = self._batch.set(batch)
        try:
            yield
        finally:
            self._batch.reset(token)
            batch.send()

    def current_batch(self) -> Batch | None:
        return self._batch.get()

    def _connect(self) -> Any:
        # One quick retry re-dials a connection the server closed (restart, CLIENT KILL).
        kwargs = {**CLIENT_DEFAULTS, **self.options, "decode_responses": True}
        kwargs["retry"] = Retry(NoBackoff(), 1)
        if self.url.startswith("redis+cluster://"):
            return RedisCluster.from_url("redis://" + self.url.split("://", 1)[1], **kwargs)
        return redis.Redis(connection_pool=redis.ConnectionPool.from_url(self.url, **kwargs))

    @property
    def link(self) -> Link:
        """Return this process's client, (re)creating it lazily and after fork()."""
        with self._lock:
            if self._link is None or self._link.pid != os.getpid():
                client = self._connect()
                script = client.register_script
                self._link = Link(
                    client,
                    index=script(INDEX_LUA),
                    revoke=script(REVOKE_LUA),
                    take=script(TAKE_LUA),
                    put=script(PUT_LUA),
                    exchange=script(EXCHANGE_LUA),
                    pid=os.getpid(),
                )
            return self._link

    def table(self, name: str, ttl: int | None) -> RedisTable:
        return RedisTable(self, name, ttl)

    @guarded
    def exchange(
        self, take: tuple[Table, str], puts: Sequence[Put], discards: Sequence[tuple[Table, str]]
    ) -> Record | None:
        """One script on one server; a cluster spreads the keys over slots, so there
        (and for tables elsewhere) the ordered best effort of the base class."""
        table, key = take
        tables = [table, *(p.table for p in puts), *(t for t, _ in discards)]
        link = self.link
        if isinstance(link.client, RedisCluster) or not all(
            isinstance(t, RedisTable) and t.backend is self for t in tables
        ):
            return super().exchange(take, puts, discards)
        plan = {
            "take": cast(RedisTable, table).locator(key),
            "puts": [cast(RedisTable, p.table).planned_put(p) for p in puts],
            "discards": [cast(RedisTable, t).locator(k) for t, k in discards],
        }
        raw = link.exchange(args=[json.dumps(plan), repr(time.time())], client=link.client)
        return cast(RedisTable, table)._decode(key, raw, time.time()) if raw else None

    @guarded
    def ping(self) -> None:
        self.link.client.ping()

    def close(self) -> None:
        with self._lock:
            link, self._link = self._link, None
        if link is None or link.pid != os.getpid():
            return
        if isinstance(link.client, RedisCluster):
            link.client.close()
        else:
            link.client.connection_pool.disconnect()


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

    def _rkey(self, key: str) -> str:
        return f"{self.base}:{{{key}}}"

    def _ikey(self, field: str, value: Any) -> str:
        return f"{self.base}:{field}:{{{value}}}"

    def locator(self, key: str) -> list[str]:
        """The record's Redis key, the table's key base and the index member, for scripts."""
        return [self._rkey(key), self.base, key]

    def planned_put(self, put: Put) -> list[Any]:
        """One put for ``EXCHANGE_LUA``: [rkey, json, pxat|'', member, score, ikeys, base]."""
        expires_at = self.expiry(put.ttl)
        data = {k: v for k, v in put.record.items() if k not in ("key", "expires_at")}
        data["expires_at"] = expires_at
        at = "" if expires_at is None else str(math.ceil(expires_at * 1000))
        score = "inf" if expires_at is None else repr(float(expires_at))
        ikeys = [ikey for ikey, _ in self._entries(put.key, data)]
        raw = json.dumps(data, separators=(",", ":"))
        return [self._rkey(put.key), raw, at, put.key, score, ikeys, self.base]

    def _decode(self, key: str, raw: str | None, now: float) -> Record | None:
        if raw is None:
            return None
        record = json.loads(raw)
        return None if _expired(record, now) else {**record, "key": key}

    def _load(self, link: Link, keys: list[str]) -> list[Record | None]:
        raws = link.mget([self._rkey(k) for k in keys]) if keys else []
        now = time.time()
        return [self._decode(k, raw, now) for k, raw in zip(keys, raws, strict=True)]

    def _entries(self, key: str, record: Record) -> list[tuple[str, str]]:
        fields = [f for f in INDEXED_FIELDS if record.get(f) is not None]
        return [(self._ikey(f, record[f]), key) for f in fields]

    def _index(self, link: Link, key: str, record: Record, client: Any = None) -> None:
        expires_at = record.get("expires_at")
        score = "inf" if expires_at is None else repr(float(expires_at))
        for ikey, _ in self._entries(key, record):
            link.index(keys=[ikey], args=[key, score], client=client or link.client)

    def _unindex(self, link: Link, entries: list[tuple[str, str]]) -> None:
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
                self._index(link, key, record)

    def _queue_put(
        self, pipe: Any, link: Link, key: str, data: Record, raw: str, at: int | None, log: float
    ) -> int:
        """Add the put to ``pipe`` as one ``PUT_LUA`` call by SHA; return 1 (its replies).

        Scripts go by ``EVALSHA`` alone: redis-py would otherwise ask ``SCRIPT EXISTS``
        before every pipeline, a second round trip. After a server restart lost them,
        they are loaded again and the pipeline is sent once more.
        """
        score = "inf" if data["expires_at"] is None else repr(float(data["expires_at"]))
        keys = [self._rkey(key)] + [ikey for ikey, _ in self._entries(key, data)]
        if log:
            keys.append(self.log)
        args = (raw, "" if at is None else at, key, score, repr(log) if log else "")
        pipe.evalsha(link.put.sha, len(keys), *keys, *args)
        return 1

    def _pipelined_put(
        self, link: Link, key: str, data: Record, raw: str, at: int | None, log: float
    ) -> Any:
        """One put as one pipeline; return the record it replaced."""
        for attempt in (1, 2):
            pipe = link.client.pipeline(transaction=False)
            self._queue_put(pipe, link, key, data, raw, at, log)
            try:
                return pipe.execute()[0]
            except NoScriptError:
                if attempt == 2:
                    raise
                link.client.script_load(PUT_LUA)
        return None

    def _replaced(self, link: Link, key: str, data: Record, old: Any) -> None:
        """Drop the index entries the replaced record had and the new one has not."""
        if isinstance(old, str):
            stale = set(self._entries(key, json.loads(old))) - set(self._entries(key, data))
            self._unindex(link, sorted(stale))

    @guarded
    def put(self, key: str, record: Record, ttl: int | None = None) -> None:
        expires_at = self.expiry(ttl)
        if expires_at is not None and expires_at <= time.time():
            self.delete(key)
            return
        self._put(key, record, expires_at)

    def _put(self, key: str, record: Record, expires_at: float | None, log: float = 0) -> None:
        """Write the record, then its index entries (and a log entry), in one round trip.

        A pipeline on one server runs in order, so the record still lands before its
        index entries; a cluster's pipeline may not, so there each step is its own call.
        """
        data = {k: v for k, v in record.items() if k not in ("key", "expires_at")}
        data["expires_at"] = expires_at
        link = self.backend.link
        at = math.ceil(expires_at * 1000) if expires_at is not None else None
        raw = json.dumps(data, separators=(",", ":"))
        if isinstance(link.client, RedisCluster):
            old = link.client.set(self._rkey(key), raw, pxat=at, get=True)
            self._index(link, key, data)
            if log:
                link.client.zadd(self.log, {key: log})
        else:
            batch = self.backend.current_batch()
            if batch is not None:  # sent with the batch's pipeline, when the batch ends
                batch.add(
                    lambda pipe: self._queue_put(pipe, link, key, data, raw, at, log),
                    lambda replies: self._replaced(link, key, data, replies[0]),
                )
                return
            old = self._pipelined_put(link, key, data, raw, at, log)
        self._replaced(link, key, data, old)

    @guarded
    def get(self, key: str) -> Record | None:
        return self._decode(key, self.backend.link.client.get(self._rkey(key)), time.time())

    @guarded
    def take(self, key: str) -> Record | None:
        link = self.backend.link
        if not isinstance(link.client, RedisCluster):
            taken = link.take(keys=[self._rkey(key)], args=[self.base, key], client=link.client)
            return self._decode(key, taken, time.time()) if isinstance(taken, str) else None
        raw: Any = link.client.getdel(self._rkey(key))
        if raw is None:
            return None
        self._unindex(link, self._entries(key, json.loads(raw)))
        return self._decode(key, raw, time.time())

    def delete(self, key: str) -> bool:
        return self.take(key) is not None

    def discard(self, key: str) -> None:
        batch = self.backend.current_batch()
        if batch is None:
            self.delete(key)
            return
        link = self.backend.link

        def queue(pipe: Any) -> int:
            pipe.evalsha(link.take.sha, 1, self._rkey(key), self.base, key)
            return 1

        batch.add(queue, lambda replies: None)

    @guarded
    def _list(self, field: str, value: str) -> list[Record]:
        link, ikey, now = self.backend.link, self._ikey(field, value), time.time()
        pipe = link.client.pipeline(transaction=False)
        pipe.zremrangebyscore(ikey, "-inf", now)
        pipe.zrangebyscore(ikey, f"({now!r}", "+inf")
        keys = pipe.execute()[1]
        records = self._load(link, keys)
        pairs = list(zip(keys, records, strict=True))
        stale = [(ikey, k) for k, r in pairs if r is None or not _matches(r, field, value)]
        self._unindex(link, stale)
        return [r for _, r in pairs if r is not None and _matches(r, field, value)]

    def list_by_user(self, user_id: str) -> list[Record]:
        return self._list("user_id", user_id)

    def list_by_client(self, client_id: str) -> list[Record]:
        return self._list("client_id", client_id)

    @guarded
    def revoke_by_grant(self, grant_id: str) -> int:
        link, ikey = self.backend.link, self._ikey("grant_id", grant_id)
        keys = link.client.zrange(ikey, 0, -1)
        removed = {}
        for key in keys:
            raw = link.revoke(keys=[self._rkey(key)], args=[str(grant_id)], client=link.client)
            if raw:
                removed[key] = json.loads(raw)
        entries = {(ikey, k) for k in keys}
        entries.update(e for k, r in removed.items() for e in self._entries(k, r))
        self._unindex(link, sorted(entries))
        now = time.time()
        return sum(1 for r in removed.values() if not _expired(r, now))

    @guarded
    def purge(self) -> int:
        link, now = self.backend.link, time.time()
        pipe = link.client.pipeline(transaction=False)
        for field in INDEXED_FIELDS:
            match = _glob_escape(f"{self.base}:{field}:") + "*"
            for ikey in link.client.scan_iter(match=match, count=1000, _type="zset"):
                pipe.zremrangebyscore(ikey, "-inf", now)
        if self.ttl:
            pipe.zremrangebyscore(self.log, "-inf", now - self.ttl)
        return sum(pipe.execute())

    @guarded
    def append(self, record: Record) -> str:
        now = time.time()
        key = audit_key(now)
        self._put(key, record, self.expiry(None), log=now)
        return key

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
