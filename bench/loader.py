"""Fast fixtures: token records written straight into storage in the app's own layout.

The layout is the one of ``GrantStore.save_token`` (``app/oauth2/tokens.py``) on
``RedisTable.put`` (``app/storage/redis.py``) and ``SQLTable.put``
(``app/storage/sql.py``): each token stored under its SHA-256, an access token
paired with its refresh token, ``user_id``/``client_id``/``grant_id`` indexed.
Redis gets raw pipelined commands (the effect of ``put`` and its index script),
Postgres gets ``COPY`` (known tokens) or ``INSERT ... SELECT generate_series``
(filler nobody presents). ``check_pool`` reads samples back through the app's own
``GrantStore`` so a layout drift fails loudly instead of measuring 400s.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from app.dummy_site import DEV_KEY, make_token, user_id
from app.secrets_hash import token_digest

ACCESS_TTL = 7200
REFRESH_TTL = 7776000
SCOPE = "read-only"


@dataclass
class Pair:
    """One grant's access + refresh token records, as ``save_token`` would write them."""

    access_key: str
    access: dict[str, Any]
    refresh_key: str
    refresh: dict[str, Any]


def pair(
    access_token: str,
    refresh_token: str,
    client_id: str,
    uid: str,
    name: str,
    site_token: str,
    grant_id: str,
    now: float,
    expired: bool = False,
) -> Pair:
    access_key, refresh_key = token_digest(access_token), token_digest(refresh_token)
    base = {
        "client_id": client_id,
        "grant_id": grant_id,
        "user_id": uid,
        "user_name": name,
        "site_token": site_token,
        "scope": SCOPE,
        "issued_at": int(now),
    }
    shift = -2 * REFRESH_TTL if expired else 0
    access = dict(base, refresh_key=refresh_key, expires_at=now + ACCESS_TTL + shift)
    refresh = dict(base, access_key=access_key, expires_at=now + REFRESH_TTL + shift)
    return Pair(access_key, access, refresh_key, refresh)


def site_user(name: str) -> tuple[str, str, str]:
    """(id, name, site token) of a dummy-site user, as its /login would answer."""
    return user_id(name), name, make_token(DEV_KEY, name)


def known_pairs(count: int, uid: str, name: str, site_token: str) -> tuple[list[str], list[Pair]]:
    """``count`` fresh grants for one user; returns the refresh tokens and the records."""
    now = time.time()
    tokens, pairs = [], []
    for _ in range(count):
        refresh = secrets.token_urlsafe(32)
        tokens.append(refresh)
        pairs.append(
            pair(
                secrets.token_urlsafe(32),
                refresh,
                "test",
                uid,
                name,
                site_token,
                secrets.token_urlsafe(16),
                now,
            )
        )
    return tokens, pairs


def filler_pairs(
    count: int, tag: str, users: int = 100_000, expired: bool = False
) -> Iterator[Pair]:
    """Grants nobody presents: ``count`` users' worth of live (or expired) token pairs."""
    now = time.time()
    for i in range(count):
        u = f"filler-{i % users}"
        yield pair(
            f"a-{tag}-{i}",
            f"r-{tag}-{i}",
            "test",
            u,
            u,
            "filler-site-token",
            f"g-{tag}-{i}",
            now,
            expired,
        )


# -- Redis ------------------------------------------------------------------------------
def _cmd(*args: str | bytes) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RedisWriter:
    """Pipelined writes on one raw connection, replies counted by a reader thread.

    Every command sent is one with a one-line reply (status or integer), so
    counting CRLFs counts replies; any error reply fails the load.
    """

    def __init__(self, url: str, prefix: str = "oauth2", chunk: int = 5_000) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379))
        self.sock.settimeout(120)
        self.prefix = prefix
        self.chunk = chunk
        self.buffer: list[bytes] = []
        self.pending = 0
        self.sent = 0
        self.replies = 0
        self.error: str | None = None
        self._index_expiry: dict[str, float] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        db = (parts.path or "/0").lstrip("/") or "0"
        self.command("SELECT", db)

    def _read(self) -> None:
        tail = b""
        try:
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    return
                if self.error is None and b"\r\n-" in b"\r\n" + tail + data:
                    lines = (tail + data).split(b"\r\n")
                    self.error = next(x for x in lines if x.startswith(b"-")).decode()
                self.replies += data.count(b"\r\n") + (tail == b"\r" and data[:1] == b"\n")
                tail = data[-1:]
        except OSError:
            return

    def command(self, *args: str | bytes) -> None:
        self.buffer.append(_cmd(*args))
        self.pending += 1
        if self.pending >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.sock.sendall(b"".join(self.buffer))
            self.sent += self.pending
            self.buffer, self.pending = [], 0
        if self.error:
            raise RuntimeError(f"redis refused a bulk-load command: {self.error}")

    def wait(self, timeout: float = 300.0) -> None:
        """Return once Redis has answered every command sent."""
        self.flush()
        deadline = time.monotonic() + timeout
        while self.replies < self.sent:
            if time.monotonic() > deadline or not self._reader.is_alive():
                raise RuntimeError(f"redis answered {self.replies} of {self.sent} commands")
            time.sleep(0.01)
        if self.error:
            raise RuntimeError(f"redis refused a bulk-load command: {self.error}")

    def put(self, table: str, key: str, record: dict[str, Any], long_indexes: bool) -> None:
        """``RedisTable.put`` of a new key: the record with native expiry, then its indexes."""
        expires_at = record["expires_at"]
        base = f"{self.prefix}:{table}"
        self.command(
            "SET",
            f"{base}:{{{key}}}",
            json.dumps(record, separators=(",", ":")),
            "PXAT",
            str(math.ceil(expires_at * 1000)),
        )
        score = repr(float(expires_at))
        for field in ("user_id", "client_id", "grant_id"):
            value = record.get(field)
            if value is None:
                continue
            ikey = f"{base}:{field}:{{{value}}}"
            self.command("ZADD", ikey, score, key)
            if field == "grant_id" and not long_indexes:
                self.command("PEXPIREAT", ikey, str(math.ceil(expires_at * 1000)))
            else:  # shared indexes: one PEXPIREAT at the end, to their longest member
                self._index_expiry[ikey] = max(self._index_expiry.get(ikey, 0.0), expires_at)

    def put_pairs(self, pairs: Iterable[Pair]) -> int:
        count = 0
        for p in pairs:
            self.put("refresh_tokens", p.refresh_key, p.refresh, False)
            self.put("tokens", p.access_key, p.access, False)
            count += 1
        return count

    def close(self) -> None:
        for ikey, expires_at in self._index_expiry.items():
            self.command("PEXPIREAT", ikey, str(math.ceil(expires_at * 1000)))
        self._index_expiry.clear()
        self.wait()
        self.sock.close()


#: Bytes Redis 7.0's ``MEMORY STATS`` counts a key in a database's keyspace table (a
#: ``dictEntry`` and its key object) and in its expires table (a ``dictEntry``).
_KEYSPACE_ENTRY, _EXPIRES_ENTRY, _SLOT = 40, 24, 8


def _slots(client: Any, db: int) -> tuple[int, int] | None:
    """Hash-table slots of ``db``'s keyspace and expires tables, or None if unknown.

    ``MEMORY STATS`` reports each table's overhead as its entries plus its slots; the
    entry sizes are Redis 7.0's. A table being rehashed has both its old and its new
    slots, a sum that is no power of two.
    """
    counts = client.info("keyspace").get(f"db{db}")
    stats = client.memory_stats().get(f"db.{db}")
    if not counts or not stats:
        return None
    main = stats["overhead.hashtable.main"] - counts["keys"] * _KEYSPACE_ENTRY
    expires = stats["overhead.hashtable.expires"] - counts.get("expires", 0) * _EXPIRES_ENTRY
    if main % _SLOT or expires % _SLOT:
        return None
    return main // _SLOT, expires // _SLOT


def _settled(slots: int) -> bool | None:
    """True for one table (a power of two), False mid-rehash (two of them), else None."""
    if slots == 0 or slots & (slots - 1) == 0:
        return True
    low = slots & -slots  # old + new tables: 2^k + 2^(k+1), or 2^k + 2^(k-1) shrinking
    return False if slots == 3 * low else None


def settle(url: str, timeout: float = 600.0) -> float:
    """Wait until ``url``'s database has finished rehashing; return the seconds it took.

    Redis grows a full hash table by moving it to one twice the size a bucket at a
    time: one bucket per look-up of that table, plus 1 ms per cron tick
    (``activerehashing``). Until the move ends, every look-up probes both tables. A
    bulk load past a power of two (1M bench token pairs are 4.2M keys, past 2^22) leaves
    both of a database's tables moving for 2-4 minutes, with writes ~15-30% slower on
    this machine: a transient every Redis database goes through once per doubling, not
    the steady state a benchmark at 1M live tokens is after. So the bench helps the move
    along (``EXISTS`` of keys that have an expiry looks each one up in both tables: a
    bucket moved in each per key) and measures once both tables are single again. On a
    Redis whose ``MEMORY STATS`` does not add up to 7.0's layout it says so and returns.
    """
    parts = urlsplit(url)
    db = int((parts.path or "/0").lstrip("/") or 0)
    started = time.monotonic()
    with redis.Redis.from_url(url) as client:
        _, sample = client.scan(0, count=2000)
        keys = [k for k in sample if client.pttl(k) > 0][:1000] * 10
        while True:
            slots = _slots(client, db)
            states = None if slots is None else [_settled(s) for s in slots]
            if states is None or None in states:
                print(f"settle: cannot tell from MEMORY STATS whether db {db} is rehashing")
                return time.monotonic() - started
            if all(states):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"db {db} still rehashing after {timeout:.0f} s: {slots}")
            if keys:
                for _ in range(50):
                    client.exists(*keys)
            else:
                time.sleep(1.0)


# -- Postgres ---------------------------------------------------------------------------
COLUMNS = "(key, user_id, client_id, grant_id, expires_at, data)"


def _row(key: str, record: dict[str, Any]) -> tuple[Any, ...]:
    data = {k: v for k, v in record.items() if k != "expires_at"}
    return (
        key,
        data.get("user_id"),
        data.get("client_id"),
        data.get("grant_id"),
        record["expires_at"],
        json.dumps(data, separators=(",", ":")),
    )


def pg_copy_pairs(conn: Any, pairs: Iterable[Pair], prefix: str = "oauth2_") -> int:
    """COPY token pairs into ``oauth2_tokens`` and ``oauth2_refresh_tokens``."""
    pairs = list(pairs)
    with conn.cursor() as cur:
        with cur.copy(f"COPY {prefix}refresh_tokens {COLUMNS} FROM STDIN") as copy:
            for p in pairs:
                copy.write_row(_row(p.refresh_key, p.refresh))
        with cur.copy(f"COPY {prefix}tokens {COLUMNS} FROM STDIN") as copy:
            for p in pairs:
                copy.write_row(_row(p.access_key, p.access))
    return len(pairs)


_FILL = """
INSERT INTO {table} {columns}
SELECT k, u, 'test', gr, %(exp)s::double precision,
       json_build_object('client_id', 'test', 'grant_id', gr, 'user_id', u, 'user_name', u,
                         'site_token', 'filler-site-token', 'scope', 'read-only',
                         'issued_at', %(now)s::bigint, {pair_field}, pk)::text
FROM (SELECT encode(sha256(convert_to(%(kind)s || %(tag)s || '-' || g, 'UTF8')), 'hex') AS k,
             encode(sha256(convert_to(%(other)s || %(tag)s || '-' || g, 'UTF8')), 'hex') AS pk,
             'filler-' || (g %% %(users)s) AS u,
             'g-' || %(tag)s || '-' || g AS gr
      FROM generate_series(%(start)s::int, %(stop)s::int) AS g) AS s
"""


def pg_fill(
    conn: Any,
    count: int,
    tag: str,
    expired: bool = False,
    users: int = 100_000,
    tables: tuple[str, ...] = ("tokens", "refresh_tokens"),
    prefix: str = "oauth2_",
    batch: int = 250_000,
) -> None:
    """Generate ``count`` filler pairs server-side (the same rows ``pair`` describes)."""
    now = time.time()
    for table in tables:
        access = table == "tokens"
        ttl = ACCESS_TTL if access else REFRESH_TTL
        sql = _FILL.format(
            table=prefix + table,
            columns=COLUMNS,
            pair_field="'refresh_key'" if access else "'access_key'",
        )
        exp = now + ttl - (2 * REFRESH_TTL if expired else 0)
        for start in range(0, count, batch):
            conn.execute(
                sql,
                {
                    "exp": exp,
                    "now": int(now),
                    "kind": "a-" if access else "r-",
                    "other": "r-" if access else "a-",
                    "tag": tag,
                    "users": users,
                    "start": start,
                    "stop": min(count, start + batch) - 1,
                },
            )


def write_tokens(path: Path, tokens: list[str]) -> Path:
    path.write_text("\n".join(tokens) + "\n")
    return path


def digest_check(token: str, key: str) -> bool:
    return hashlib.sha256(token.encode()).hexdigest() == key
