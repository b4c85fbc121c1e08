"""One process's Redis connection: its scripts, and where one server and a Cluster differ.

The shape of the deployment is chosen once, at connect time (:func:`connect`), and
every difference lives in the two :class:`Link` kinds, so :mod:`.redis` reads as one
path:

* :class:`Single` (one server) runs each step as one script, and sends a put as one
  pipeline of ``EVALSHA`` calls, which a :class:`Batch` can hold and send with others;
* :class:`Cluster` spreads the keys of one step over slots, where multi-key scripts
  are refused and a pipeline has no order: each step is ordered one-key calls, and
  :meth:`Link.batch` gives none.

The Lua scripts are the files in ``lua/`` (package data), read once per process.
"""

from __future__ import annotations

import abc
import functools
import json
import select
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import redis
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _HiredisParser
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as LostConnection
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as TimedOut
from redis.retry import Retry

from .. import process
from . import codec
from .base import StorageUnavailable

if TYPE_CHECKING:
    from .redis import RedisTable

P = ParamSpec("P")
R = TypeVar("R")

#: The scripts that only read (sent again when their reply was lost, as a GET is).
READ_SCRIPTS = frozenset({"lookup", "list"})

#: The scripts in ``lua/``, by file name.
SCRIPTS = ("index", "put", "revoke", "take", "exchange", "incr", "lookup", "list")

CLIENT_DEFAULTS: dict[str, Any] = {
    "socket_connect_timeout": 2.0,
    "socket_timeout": 2.0,
    "health_check_interval": 15,
}


#: The scripts that add index members: ``lua/keep.lua`` (their ``index_add``) goes before them.
KEEPERS = frozenset({"index", "put", "exchange"})


@functools.cache
def lua(name: str) -> str:
    """The text of the script ``lua/<name>.lua`` (after ``keep.lua`` for :data:`KEEPERS`)."""
    text = resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")
    return lua("keep") + text if name in KEEPERS else text


def guarded(method: Callable[P, R]) -> Callable[P, R]:
    """Turn every Redis driver error into :class:`StorageUnavailable`."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (RedisError, RedisClusterException, OSError) as exc:
            raise StorageUnavailable(f"redis: {exc}") from exc

    return wrapper


def connect(url: str, options: dict[str, Any]) -> Link:
    """The link for ``url``: a Cluster for ``redis+cluster://``, else one server."""
    # One quick retry re-dials a connection the server closed (restart, CLIENT KILL).
    kwargs = {**CLIENT_DEFAULTS, **options, "decode_responses": True}
    kwargs["retry"] = Retry(NoBackoff(), 1)
    if url.startswith("redis+cluster://"):
        return Cluster(RedisCluster.from_url("redis://" + url.split("://", 1)[1], **kwargs))
    return Single(redis.Redis(connection_pool=redis.ConnectionPool.from_url(url, **kwargs)))


class Link(abc.ABC):
    """One process's client and the scripts registered on it."""

    #: Whether one script may span several records (a redemption is then one script).
    spans_keys: bool

    def __init__(self, client: Any) -> None:
        self.client = client
        self.pid = process.pid()
        self.scripts = {name: client.register_script(lua(name)) for name in SCRIPTS}

    def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run one script (loading it if the server does not have it)."""
        return self.scripts[name](keys=keys, args=args, client=self.client)

    def batch(self) -> Batch | None:
        """A batch to hold writes in, or ``None`` where writes cannot be held."""
        return None

    def get(self, key: str) -> str | None:
        """The raw value of ``key``."""
        return self.client.get(key)

    @abc.abstractmethod
    def mget(self, keys: list[str]) -> list[str | None]:
        """The raw values of ``keys``."""

    @abc.abstractmethod
    def take(self, table: RedisTable, key: str) -> str | None:
        """GETDEL the record and drop its index entries; return its JSON."""

    @abc.abstractmethod
    def write(
        self, table: RedisTable, key: str, data: dict[str, Any], at: int | None, log: float
    ) -> Any:
        """SET the record, then its index entries (and a log entry); return the one replaced."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connections."""


class Single(Link):
    """One server: each step is one script; a put is one pipelined ``EVALSHA``.

    Its sends (:meth:`_send`) take a connection from a stack of its own, not from
    redis-py's pool each time: a connection is checked out of the pool once, the first
    time every one on the stack is in use, and goes back on the stack after each send.
    The pool's check-out and return (a lock, its connection counts and their
    telemetry) were a third of a round trip's client CPU. What the pool's check made
    sure of is looked at here too (:func:`_unasked`): a connection with something to
    read before it was sent anything (closed by the server, or out of step, the reply
    on the socket or already in the parser's buffer) is dialled again first.
    """

    spans_keys = True

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        #: Connections between sends (``list.pop`` and ``append`` are atomic: no lock).
        self.idle: list[Any] = []

    def batch(self) -> Batch:
        return Batch(self)

    def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """One script by ``EVALSHA`` on a pooled connection (:meth:`_send`), loaded again
        if the server lost it (:meth:`pipelined`)."""
        sha = self.scripts[name].sha

        def queue(commands: Commands) -> None:
            commands.evalsha(sha, len(keys), *keys, *args)

        return self.pipelined(queue, reads=name in READ_SCRIPTS)[0]

    def get(self, key: str) -> str | None:
        return self._send(lambda commands: commands.append(("GET", key)), reads=True)[0]

    def mget(self, keys: list[str]) -> list[str | None]:
        return self.client.mget(keys)

    def take(self, table: RedisTable, key: str) -> str | None:
        raw = self.run("take", [table.rkey(key)], [table.base, key])
        return raw if isinstance(raw, str) else None

    def write(
        self, table: RedisTable, key: str, data: dict[str, Any], at: int | None, log: float
    ) -> Any:
        return self.pipelined(lambda pipe: self.queue_put(pipe, table, key, data, at, log))[0]

    def queue_script(self, pipe: Any, name: str, keys: list[str], args: list[Any]) -> int:
        """Add one script call to ``pipe`` by SHA; return 1 (its replies).

        Scripts go by ``EVALSHA`` alone: redis-py would otherwise ask ``SCRIPT EXISTS``
        before every pipeline, a second round trip (see :meth:`pipelined`).
        """
        pipe.evalsha(self.scripts[name].sha, len(keys), *keys, *args)
        return 1

    def queue_put(
        self, pipe: Any, table: RedisTable, key: str, data: dict[str, Any], at: int | None,
        log: float,
    ) -> int:  # fmt: skip
        """Add the put to ``pipe`` as one ``put.lua`` call; return 1."""
        score = "inf" if data["expires_at"] is None else repr(float(data["expires_at"]))
        keys = [table.rkey(key), *table.index_keys(data)]
        if log:
            keys.append(table.log)
        raw = codec.dumps(data)
        args = [raw, "" if at is None else at, key, score, repr(log) if log else ""]
        return self.queue_script(pipe, "put", keys, args)

    def pipelined(self, queue: Callable[[Any], Any], reads: bool = False) -> list[Any]:
        """Send what ``queue(pipe)`` adds as one pipeline; return the replies.

        After a server restart (or ``SCRIPT FLUSH``) lost the scripts, they are
        loaded again and the pipeline is sent once more (the server ran none of it).
        """
        try:
            return self._send(queue, reads)
        except NoScriptError:
            for script in self.scripts.values():
                self.client.script_load(script.script)
            return self._send(queue, reads)

    def _send(self, queue: Callable[[Any], Any], reads: bool = False) -> list[Any]:
        """One write of the queued commands and a read of every reply, on one pooled
        connection: what redis-py's non-transactional ``Pipeline.execute`` does (its
        health check, a reply error raised once all replies are read), without its
        per-call bookkeeping (a fifth of a token write's client CPU). A connection that
        failed is dropped, never pooled. It is dialled again and the commands sent once
        more when sending them failed; when their replies did not come, only if they
        are ``reads``: a write the server may have made is not made twice (a refresh
        token rotated twice, a counter counted twice) but answered as a storage fault."""
        commands = Commands()
        queue(commands)
        if not commands:
            return []
        conn = self._checkout()
        try:
            return conn.retry.call_with_retry(
                lambda: _exchange(conn, commands, reads), lambda _error: conn.disconnect()
            )
        except ResponseError:
            raise  # every reply was read: the connection is in step
        except BaseException:
            conn.disconnect()  # dialled again at its next send
            raise
        finally:
            self.idle.append(conn)

    def _checkout(self) -> Any:
        """A connection to send on: the latest one back on the stack, else a new one
        from the pool. One the server closed, or with a reply nobody asked for, is
        dropped first, so the send dials it again (as the pool's own check does)."""
        try:
            conn = self.idle.pop()
        except IndexError:
            return self.client.connection_pool.get_connection()
        try:
            if conn._sock is not None and _unasked(conn):
                conn.disconnect()  # the send dials it again, inside its retry
        except (LostConnection, TimedOut, OSError):
            conn.disconnect()
        return conn

    def close(self) -> None:
        self.client.connection_pool.disconnect()


class Cluster(Link):
    """A Redis Cluster: ordered one-key calls; whoever unindexes re-reads (see redis.py)."""

    spans_keys = False

    def mget(self, keys: list[str]) -> list[str | None]:
        return self.client.mget_nonatomic(keys)

    def take(self, table: RedisTable, key: str) -> str | None:
        raw = self.client.getdel(table.rkey(key))
        if raw is not None:
            table.unindex(self, table.entries(key, json.loads(raw)))
        return raw

    def write(
        self, table: RedisTable, key: str, data: dict[str, Any], at: int | None, log: float
    ) -> Any:
        raw = codec.dumps(data)
        old = self.client.set(table.rkey(key), raw, pxat=at, get=True)
        table.index(self, key, data)
        if log:
            self.client.zadd(table.log, {key: log})
        return old

    def close(self) -> None:
        self.client.close()


class Batch:
    """Writes held for one pipeline on one server: each adds its commands, then reads
    its replies."""

    def __init__(self, link: Single) -> None:
        self.link = link
        self.ops: list[tuple[Callable[[Any], int], Callable[[list[Any]], None]]] = []

    def put(
        self, table: RedisTable, key: str, data: dict[str, Any], at: int | None, log: float,
        done: Callable[[Any], None],
    ) -> None:  # fmt: skip
        """Hold a put; ``done`` gets the record it replaced."""
        queue = functools.partial(self.link.queue_put, table=table, key=key, data=data)
        self.ops.append((lambda pipe: queue(pipe, at=at, log=log), lambda r: done(r[0])))

    def take(self, table: RedisTable, key: str) -> None:
        """Hold a take whose result nobody reads (a discard)."""
        keys, args = [table.rkey(key)], [table.base, key]
        self.ops.append((lambda pipe: self.link.queue_script(pipe, "take", keys, args), _ignore))

    @guarded
    def send(self) -> None:
        if not self.ops:
            return
        counts: list[int] = []

        def queue(pipe: Any) -> None:
            counts[:] = [add(pipe) for add, _ in self.ops]  # again if the pipeline is resent

        replies = self.link.pipelined(queue)
        at = 0
        for (_, done), count in zip(self.ops, counts, strict=True):
            done(replies[at : at + count])
            at += count


class Commands(list[tuple[Any, ...]]):
    """The commands a batch queues (as it would on a redis-py pipeline: ``EVALSHA`` only)."""

    def evalsha(self, sha: str, numkeys: int, *args: Any) -> None:
        self.append(("EVALSHA", sha, numkeys, *args))


class Unanswered(RedisError):
    """Commands that were sent but whose replies never came: the server may have run
    them (not a ``ConnectionError``, so redis-py's ``Retry`` does not send them again)."""


def _exchange(conn: Any, commands: list[tuple[Any, ...]], reads: bool) -> list[Any]:
    """Send ``commands`` at once and read every reply; then raise the first reply error.
    Replies lost on the way raise :class:`Unanswered` unless the commands are ``reads``."""
    conn.send_packed_command(conn.pack_commands(commands))
    replies: list[Any] = []
    failed: ResponseError | None = None
    for _ in commands:
        try:
            replies.append(conn.read_response())
        except ResponseError as error:
            replies.append(error)
            failed = failed or error
        except (LostConnection, TimedOut) as lost:
            if reads:
                raise
            raise Unanswered(f"no reply: {lost}") from lost
    if failed is not None:
        raise failed
    return replies


def _unasked(conn: Any) -> bool:
    """Whether a connection between sends has something to read: a reply read ahead
    into the parser's buffer, data TLS decrypted, anything on the socket (a reply nobody
    asked for, or the end of a connection the server closed). ``can_read`` answers the
    same with three system calls and an exception on the usual path; for hiredis's
    parser this looks at its buffer, then ``poll``s the socket once (``select`` would
    fail on a descriptor above 1023). Another parser: its own ``can_read``."""
    parser = conn._parser
    if type(parser) is not _HiredisParser or parser._reader is None:
        return bool(conn.can_read(timeout=0))
    if parser._next_response is not NOT_ENOUGH_DATA or parser._reader.has_data():
        return True
    sock = conn._sock
    pending = getattr(sock, "pending", None)  # an SSL socket's decrypted bytes
    if pending is not None and pending():
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _ignore(replies: list[Any]) -> None:
    """The replies of a write nobody reads."""
