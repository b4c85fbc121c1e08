"""A per-process cache of access-token records that is never wrong about revocation.

``/api``, ``/userinfo`` and introspection look an access token up on every request;
with ``token_cache.enabled`` each process keeps the records it read, so a token used
again is checked without a storage round trip. A cached record is served only while
this process *knows* it has heard of every revocation that could concern it.

How (the channel is the ``tokens`` table's backend: Redis sharded pub/sub, plain
pub/sub on a server older than 7.0, a Redis Cluster's shard of the channel's slot, or
Postgres ``LISTEN``/``NOTIFY``):

1. Whatever ends an access token (revocation, a grant revoked by a code replay, the
   review page or a client's deletion, refresh rotation) is written to storage first;
   then an invalidation naming the token digests or grant ids is *published*; then the
   revoking process waits ``max_staleness`` (measured from when the publish returned)
   before it answers. Only then does it answer 200 (or exit, for the CLI).
2. Every process has one subscriber thread on one connection, subscribed to the
   invalidation channel and to a heartbeat channel of its own. Every
   ``max_staleness / 2`` (while lookups come; idle, it only listens) it takes
   ``sent = monotonic()`` and publishes ``sent`` on its heartbeat channel; when that
   message comes back, every message the server took before it has come back too
   (one Redis server, or one Postgres commit order, delivers one subscription's
   messages in order), so every invalidation published before ``sent`` has been
   applied. It records ``confirmed = sent``.
3. A cached record is served only if ``monotonic() - confirmed < max_staleness``,
   reading ``confirmed`` before the entry. A request that arrives after a revocation's
   200 arrives at least ``max_staleness`` after that revocation's publish returned,
   so a hit needs a heartbeat sent after the publish returned, hence published after
   the invalidation, hence applied after it: the entry is already gone.
4. Filling the cache cannot resurrect a token either: a lookup notes the generation
   (bumped by every invalidation applied, every flush and every new subscription)
   before it reads storage and stores what it read only if the generation is unchanged.
5. A refresh skips the publish and the wait when no process can hold the access
   token it ends (the usual case: a client refreshes a token it no longer uses). A
   process keeps a record only after it wrote the token's *held mark*
   (``held:<digest>`` in the ``tokens`` table) and then read the record again; the
   refresh reads the mark after its exchange deleted the record. Storage orders the
   two processes' operations (each backend is linearizable per key): if the second
   read found the record, the mark was written before the delete, hence before the
   refresh reads it, which then announces and waits as in point 1. The mark lives
   until the token's own expiry plus ``max_age`` + 5 s (the writer's clock cancels
   out; it is judged by the Redis server's clock inside the exchange's script, else by
   the refreshing process's), and an entry never outlives the token's expiry, so the
   mark outlives every entry kept on its strength unless the clock that judges it runs
   more than that margin ahead of the holder's. A mark is written when a process first
   keeps a token (again only after its entry was evicted or flushed), never for an
   unknown token (the first read finds nothing); a failed write keeps nothing, and a
   failed read of it counts as "held". Storage must not evict keys
   (``maxmemory-policy noeviction``, as for every record).
6. On any doubt the cache is flushed and not trusted: a connection error or a silent
   one (no heartbeat back within ``max_staleness``: then nothing is served from the
   cache until heartbeats flow again on a new, flushed subscription); a message not
   understood flushes everything. The connection is a raw one, never redis-py's
   ``PubSub``, which resubscribes silently after a disconnect and so can lose messages
   (redis-py PR #4293).

Exact conditions of the guarantee: every instance has ``token_cache`` enabled with the
same ``max_staleness`` (an instance with it off neither publishes nor waits), the
clocks of each machine run at the rate of real time (only durations are compared, never
two machines' readings), and the channel is on the backend of the ``tokens`` table. An
entry never outlives the token's ``expires_at`` nor ``max_age`` seconds. The client is
never cached: a removed or disabled client's tokens are refused by the check after the
lookup (:mod:`.accept`). SQLite has no channel between processes: there is no cache.
A failed publish is tried again (three tries within ~100 ms) before the revocation
fails with a 5xx; the client's retry announces again even though storage has nothing
left: RFC 7009 announces the presented token's digest (and, for a refresh token, its
access token's, from a ``revoked:`` tombstone kept ``max_age``), a grant revocation
always announces its grant id (code and refresh replays keep their tombstones; a deleted
client's tokens are refused as its client is), and a save of the review page flushes
every cache. If a process dies between a revocation's write and its publish, it
never answered 200; other processes may then serve the token from their caches for up
to ``max_age`` unless the client retries.

Only positive lookups of access tokens are cached (refresh tokens are used once).
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

from .. import process
from ..storage import Storage, StorageUnavailable

log = logging.getLogger(__name__)

#: More names than this in one message: the message says "flush everything" instead.
MAX_NAMES = 64
#: Everything: the message that flushes every cache.
FLUSH = "*"
#: The name of a subscriber connection: Postgres ``application_name``
#: (``pg_stat_activity``), Redis ``CLIENT SETNAME`` (``CLIENT LIST``).
APPLICATION_NAME = "oauth2-token-cache"
#: Seconds without a lookup after which the subscriber stops sending heartbeats (it
#: still applies invalidations); the next lookup misses and wakes it within IDLE_POLL.
IDLE_AFTER = 1.0
IDLE_POLL = 0.1
#: Seconds between reconnection attempts of the subscriber.
RETRY_DELAY = 0.5
#: The sharded pub/sub commands (Redis 7.0); a server with neither uses plain pub/sub.
SHARDED = ("SPUBLISH", "SSUBSCRIBE")
#: Pauses (seconds) before the second and third tries of a failed publish: a blip is
#: absorbed within ~100 ms, a longer outage still fails the revocation.
PUBLISH_RETRIES = (0.02, 0.06)


class Subscription(abc.ABC):
    """One subscriber connection, subscribed and confirmed; messages come in server order."""

    #: This process's heartbeat channel.
    name: str

    @abc.abstractmethod
    def heartbeat(self, payload: str) -> None:
        """Publish ``payload`` on this process's heartbeat channel."""

    @abc.abstractmethod
    def receive(self, timeout: float) -> list[tuple[bool, str]]:
        """The next messages as (is_heartbeat, payload), in order; none after ``timeout``."""

    @abc.abstractmethod
    def close(self) -> None: ...


class Channel(abc.ABC):
    """The invalidation channel on one storage backend."""

    @abc.abstractmethod
    def publish(self, payload: str) -> None:
        """Publish on the invalidation channel; return once the server took it."""

    @abc.abstractmethod
    def subscribe(self, heartbeat: str) -> Subscription:
        """A new connection subscribed to the invalidation channel and to ``heartbeat``."""


class RedisChannel(Channel):
    """Sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``, Redis 7): on one server as on a
    Cluster, every channel of this cache shares one hash tag, so one shard orders all
    of them; when that slot moves the shard drops the subscription and we resubscribe.
    One server older than 7.0 has no sharded pub/sub: there (and only there: every
    process talks to the same server, so all of them choose alike, and a restart on a
    newer version makes every subscriber subscribe again) plain ``PUBLISH``/``SUBSCRIBE``,
    which one server orders the same way."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.tag = f"{{{backend.prefix}:token-cache}}"
        self.name = f"{self.tag}:invalidate"

    def publish(self, payload: str) -> None:
        try:
            _publish(self.backend.link.client, self.name, payload)
        except Exception as exc:  # every driver error: the revocation is not confirmed
            raise StorageUnavailable(f"redis: token cache invalidation: {exc}") from exc

    def subscribe(self, heartbeat: str) -> Subscription:
        return _RedisSubscription(self, f"{self.tag}:heartbeat:{heartbeat}")


def _unknown_command(exc: Exception) -> bool:
    import redis

    return isinstance(exc, redis.ResponseError) and "unknown command" in str(exc).lower()


def _require_no_sharded_pub_sub(info: Any) -> None:
    """Refuse unless ``COMMAND INFO SPUBLISH SSUBSCRIBE`` says the server has *neither*:
    plain pub/sub then, for publishers and subscribers alike. A server with only one of
    them (renamed, a partial clone) is refused: the two sides would not meet."""
    known = [entry not in (None, [], {}) for entry in info] if isinstance(info, list) else []
    if len(known) == 2 and not any(known):
        return
    raise StorageUnavailable(f"redis: no consistent sharded pub/sub on this server: {info!r}")


def _publish(client: Any, channel: str, payload: str) -> None:
    """``SPUBLISH``, or ``PUBLISH`` on one server that has no sharded pub/sub at all
    (older than Redis 7.0); a Cluster never falls back (its PUBLISH crosses the bus and
    could be overtaken by a heartbeat sent straight to the subscriber's node)."""
    from redis.cluster import RedisCluster

    try:
        client.execute_command("SPUBLISH", channel, payload)
    except Exception as exc:
        if isinstance(client, RedisCluster) or not _unknown_command(exc):
            raise
        # Asked on a connection of its own: redis-py's parser of COMMAND's reply fails
        # on an unknown command's nil.
        connection = client.connection_pool.make_connection()
        try:
            connection.connect()
            _require_no_sharded_pub_sub(_command_info(connection))
        finally:
            connection.disconnect()
        client.execute_command("PUBLISH", channel, payload)


def _command_info(connection: Any) -> Any:
    """``COMMAND INFO`` of the sharded pub/sub commands, read raw from ``connection``."""
    connection.send_command("COMMAND", "INFO", *SHARDED)
    return connection.read_response()


class _RedisSubscription(Subscription):
    def __init__(self, channel: RedisChannel, heartbeat: str) -> None:
        import redis
        from redis.cluster import RedisCluster

        from ..storage.redis_link import CLIENT_DEFAULTS

        self.channel, self.name = channel, heartbeat
        backend = channel.backend
        client = backend.link.client
        kwargs = {**CLIENT_DEFAULTS, **backend.options, "decode_responses": True}
        kwargs["health_check_interval"] = 0  # a subscribed connection sends nothing
        if isinstance(client, RedisCluster):
            node = client.get_node_from_key(channel.name)
            pool = redis.ConnectionPool(host=node.host, port=node.port, **kwargs)
            self.publisher: Any = redis.Redis(connection_pool=pool)
        else:
            pool = redis.ConnectionPool.from_url(backend.url, **kwargs)
            self.publisher = client
        self.pool = pool
        self.connection = pool.make_connection()
        try:
            self.connection.connect()
            self._name_connection()
            self.sharded = True
            if not self._subscribe("SSUBSCRIBE", channel.name, heartbeat):
                if isinstance(client, RedisCluster):  # see _publish: never plain on a Cluster
                    raise StorageUnavailable("redis: this Cluster has no sharded pub/sub")
                _require_no_sharded_pub_sub(_command_info(self.connection))
                self.sharded = False
                self._subscribe("SUBSCRIBE", channel.name, heartbeat)
        except BaseException:
            self.close()
            raise

    def _name_connection(self) -> None:
        """``CLIENT SETNAME`` (``CLIENT LIST`` shows it, as Postgres shows the
        ``application_name``); a server or ACL that refuses it costs only the name."""
        import redis

        self.connection.send_command("CLIENT", "SETNAME", APPLICATION_NAME)
        try:
            self.connection.read_response()
        except redis.ResponseError as exc:
            log.info("token cache: the subscriber connection stays unnamed: %s", exc)

    def _subscribe(self, verb: str, *channels: str) -> bool:
        """Subscribe; False if the server does not know ``verb``."""
        import redis

        self.connection.send_command(verb, *channels)
        for _ in channels:
            try:
                reply = self.connection.read_response()
            except redis.ResponseError as exc:
                if verb == "SSUBSCRIBE" and _unknown_command(exc):
                    return False
                raise
            if not isinstance(reply, list) or reply[0] != verb.lower():
                raise StorageUnavailable(f"redis: unexpected reply to {verb}: {reply!r}")
        return True

    def heartbeat(self, payload: str) -> None:
        verb = "SPUBLISH" if self.sharded else "PUBLISH"  # the way it subscribed: in order
        self.publisher.execute_command(verb, self.name, payload)

    def receive(self, timeout: float) -> list[tuple[bool, str]]:
        messages: list[tuple[bool, str]] = []
        kind = "smessage" if self.sharded else "message"
        while self.connection.can_read(timeout=0 if messages else timeout):
            reply = self.connection.read_response()
            if not (isinstance(reply, list) and len(reply) == 3 and reply[0] == kind):
                # "sunsubscribe" (the slot moved) or anything else: this subscription is over.
                raise StorageUnavailable(f"redis: token cache subscription ended: {reply!r}")
            messages.append((reply[1] == self.name, str(reply[2])))
        return messages

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.disconnect()
        with contextlib.suppress(Exception):
            self.pool.disconnect()


class PostgresChannel(Channel):
    """``NOTIFY`` in autocommit (committed when it returns), ``LISTEN`` on a connection
    of its own: Postgres delivers notifications in commit order."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.name = f"{backend.table_prefix}token_cache"

    def publish(self, payload: str) -> None:
        self.backend.execute("SELECT pg_notify(%s, %s)", (self.name, payload), True)

    def subscribe(self, heartbeat: str) -> Subscription:
        return _PostgresSubscription(self, f"{self.name}_{heartbeat}")


class _PostgresSubscription(Subscription):
    def __init__(self, channel: PostgresChannel, heartbeat: str) -> None:
        import psycopg
        from psycopg import sql

        self.name = heartbeat
        try:
            self.conn = psycopg.connect(
                channel.backend.conninfo, autocommit=True, application_name=APPLICATION_NAME
            )
            for name in (channel.name, heartbeat):
                self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise StorageUnavailable(f"postgres: token cache subscription: {exc}") from exc

    def heartbeat(self, payload: str) -> None:
        self.conn.execute("SELECT pg_notify(%s, %s)", (self.name, payload))

    def receive(self, timeout: float) -> list[tuple[bool, str]]:
        # Drained whole: one packet may carry several notifications.
        notifies = list(self.conn.notifies(timeout=timeout, stop_after=1))
        if self.conn.closed or self.conn.broken:
            raise StorageUnavailable("postgres: token cache subscription lost")
        return [(n.channel == self.name, n.payload) for n in notifies]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


def channel_for(storage: Storage) -> Channel | None:
    """The channel on the ``tokens`` table's backend, or None where there is none (SQLite)."""
    from ..storage.postgres import PostgresBackend
    from ..storage.redis import RedisBackend

    backend = getattr(storage.tokens, "backend", None)
    if isinstance(backend, RedisBackend):
        return RedisChannel(backend)
    if isinstance(backend, PostgresBackend):
        return PostgresChannel(backend)
    return None


class _Ended:
    """What ended inside one :meth:`TokenCache.ending` block."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.grants: set[str] = set()
        self.everything = False


class TokenCache:
    """Access-token records of this process, served only while provably current.

    ``max_staleness`` (seconds) bounds how long a process may go without proof that it
    heard every invalidation, and is how long a revocation waits before answering.
    """

    def __init__(
        self,
        channel: Channel,
        *,
        max_staleness: float = 0.05,
        max_entries: int = 10000,
        max_age: float = 60.0,
    ) -> None:
        self.channel = channel
        self.max_staleness = max_staleness
        self.interval = max_staleness / 2
        self.max_entries = max_entries
        self.max_age = max_age
        self._ending: ContextVar[_Ended | None] = ContextVar(
            f"token-cache-{id(self)}", default=None
        )
        self._lock = threading.Lock()
        self._pid = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._reset_state()

    def _reset_state(self) -> None:
        self._entries: dict[str, tuple[dict[str, Any], float]] = {}
        #: monotonic() at which the newest heartbeat that came back was sent.
        self._confirmed = -float("inf")
        #: monotonic() of the latest lookup: heartbeats only while lookups come.
        self._used = time.monotonic()
        self._generation = 0
        self.subscribed = False
        self.heartbeat_channel: str | None = None

    # -- the request side -------------------------------------------------------------
    def _started(self) -> None:
        if self._pid != process.pid():  # first use in this process (or after fork())
            with self._lock:
                if self._pid != process.pid():
                    self._reset_state()
                    self._stop = threading.Event()
                    self._thread = threading.Thread(
                        target=self._run, name="token-cache", daemon=True
                    )
                    self._pid = process.pid()
                    self._thread.start()

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached record under ``key`` if it is provably current, else None."""
        self._started()
        confirmed = self._confirmed  # first: see the module's doc, point 3
        now = self._used = time.monotonic()
        if now - confirmed >= self.max_staleness:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        record, until = entry
        if time.time() >= until:
            self._entries.pop(key, None)
            return None
        return dict(record)

    def generation(self) -> int:
        """Note this before reading storage; pass it to :meth:`put`."""
        return self._generation

    def holds(self, key: str) -> bool:
        """Whether a record is kept under ``key`` whose held mark (written by this
        process before keeping it) outlives any entry put again: one with an expiry,
        the mark living past it (point 5). A record without one is marked each time."""
        entry = self._entries.get(key)
        return entry is not None and entry[0].get("expires_at") is not None

    def mark_lifetime(self, record: dict[str, Any]) -> int:
        """Seconds the held mark of the token ``record`` lives (point 5): past the token's
        expiry by ``max_age`` + 5 s (a token without one: that, from now)."""
        margin = math.ceil(self.max_age) + 5
        expires_at = record.get("expires_at")
        if expires_at is None:
            return margin
        return max(1, math.ceil(float(expires_at) - time.time())) + margin

    def put(self, key: str, record: dict[str, Any], generation: int) -> None:
        """Keep ``record`` unless anything was invalidated since ``generation`` was noted."""
        expires_at = record.get("expires_at")
        until = time.time() + self.max_age
        if expires_at is not None:
            until = min(until, float(expires_at))
        with self._lock:
            if generation != self._generation or not self.subscribed:
                return
            if key not in self._entries and len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = (record, until)

    def will_keep(self, generation: int) -> bool:
        """Whether a :meth:`put` with ``generation`` would keep its record (right now)."""
        return generation == self._generation and self.subscribed

    # -- the revoking side ------------------------------------------------------------
    def ended(self, keys: Iterable[str] = (), grants: Iterable[str] = ()) -> None:
        """Tokens ``keys`` (digests) and those of ``grants`` were ended in storage.

        Inside :meth:`ending` this is announced when the block ends; else at once.
        Returns (or the block ends) only once no process can serve them from its cache.
        """
        pending = self._ending.get()
        if pending is None:
            self._announce(set(keys), set(grants))
        else:
            pending.keys.update(keys)
            pending.grants.update(grants)

    def ended_unknown(self) -> None:
        """Tokens that can no longer be named ended: every cache is flushed (as :meth:`ended`)."""
        pending = self._ending.get()
        if pending is None:
            self._announce(set(), set(), everything=True)
        else:
            pending.everything = True

    @contextlib.contextmanager
    def ending(self) -> Iterator[None]:
        """Collect what ends inside and announce it once when the block ends (raised or not).

        Wrap it around the storage writes that end tokens (``Storage.batch`` does), so
        the announcement follows the writes.
        """
        if self._ending.get() is not None:
            yield  # nested: the outermost block announces
            return
        pending = _Ended()
        token = self._ending.set(pending)
        try:
            yield
        finally:
            self._ending.reset(token)
            if pending.keys or pending.grants or pending.everything:
                self._announce(pending.keys, pending.grants, pending.everything)

    def _announce(self, keys: set[str], grants: set[str], everything: bool = False) -> None:
        if not keys and not grants and not everything:
            return
        if everything or len(keys) + len(grants) > MAX_NAMES:
            payload = FLUSH
        else:
            payload = json.dumps({"k": sorted(keys), "g": sorted(grants)}, separators=(",", ":"))
        self._apply(payload)  # this process's own cache at once, even if the publish fails
        self._publish(payload)
        published = time.monotonic()
        # Every other process's next hit needs a heartbeat sent after this moment.
        remaining = published + self.max_staleness - time.monotonic()
        while remaining > 0:
            time.sleep(remaining)
            remaining = published + self.max_staleness - time.monotonic()

    def _publish(self, payload: str) -> None:
        """Publish, trying again briefly: the storage write is done, and a retried
        revocation may find nothing left to name (see the module's doc)."""
        for pause in PUBLISH_RETRIES:
            try:
                self.channel.publish(payload)
                return
            except Exception as exc:  # every driver error; the last one is raised
                log.warning("token cache: publish failed, trying again: %s", exc)
                time.sleep(pause)
        self.channel.publish(payload)

    # -- the subscriber thread --------------------------------------------------------
    def _apply(self, payload: str) -> None:
        """Drop what one invalidation names (everything, if it cannot be read)."""
        try:
            names = None if payload == FLUSH else json.loads(payload)
            keys, grants = (set(names["k"]), set(names["g"])) if names else (set(), set())
        except (ValueError, TypeError, KeyError):
            names = None
        with self._lock:
            self._generation += 1
            if names is None:
                self._entries.clear()
                return
            for key in keys:
                self._entries.pop(key, None)
            if grants:
                for key, (record, _) in list(self._entries.items()):
                    if record.get("grant_id") in grants:
                        self._entries.pop(key, None)

    def _flush(self, subscribed: bool) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self._confirmed = -float("inf")
            self.subscribed = subscribed

    def _run(self) -> None:
        stop, name = self._stop, f"{process.pid()}_{secrets.token_hex(6)}"
        while not stop.is_set():
            subscription = None
            try:
                subscription = self.channel.subscribe(name)
                self.heartbeat_channel = subscription.name
                # Subscribed: only now may lookups fill the cache (point 4).
                self._flush(subscribed=True)
                self._listen(subscription, stop)
            except Exception as exc:
                log.warning("token cache: subscriber down, cache flushed and off: %s", exc)
            finally:
                self._flush(subscribed=False)
                if subscription is not None:
                    subscription.close()
            stop.wait(RETRY_DELAY)

    def _listen(self, subscription: Subscription, stop: threading.Event) -> None:
        outstanding: dict[str, float] = {}  # heartbeats sent and not back yet
        while not stop.is_set():
            sent = time.monotonic()
            if sent - self._used > IDLE_AFTER:  # idle: listen only, cheaply
                deadline = sent + IDLE_POLL
            else:
                outstanding[repr(sent)] = sent
                subscription.heartbeat(repr(sent))
                deadline = sent + self.interval
            while (left := deadline - time.monotonic()) > 0:
                messages = subscription.receive(left)
                if not messages:
                    break
                for heartbeat, payload in messages:  # in the server's order
                    if not heartbeat:
                        self._apply(payload)
                        continue
                    confirmed = outstanding.get(payload)  # only our own, never a forged one
                    if confirmed is not None:
                        self._confirmed = confirmed
                        for early in [p for p, at in outstanding.items() if at <= confirmed]:
                            del outstanding[early]

    def close(self) -> None:
        """Stop this process's subscriber (tests; the thread is a daemon otherwise)."""
        self._stop.set()
        if self._thread is not None and self._pid == process.pid():
            self._thread.join(5)
        self._flush(subscribed=False)


def build(settings: Any, storage: Storage) -> TokenCache | None:
    """The cache ``token_cache`` asks for, or None (off, or no channel on this backend)."""
    if not settings.enabled:
        return None
    channel = channel_for(storage)
    if channel is None:
        log.info(  # not a warning: it is on by default, and SQLite is the demo's store
            "token_cache: the tokens table is on %s, which has no channel between "
            "processes; tokens are not cached",
            storage.specs["tokens"].scheme,
        )
        return None
    return TokenCache(
        channel,
        max_staleness=settings.max_staleness_ms / 1000,
        max_entries=settings.max_entries,
        max_age=settings.max_age,
    )
