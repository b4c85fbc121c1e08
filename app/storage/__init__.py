"""Storage chosen per table: a scheme registry, config parsing and the ``Storage`` facade.

A table's entry is a URL (``sqlite:///var/oauth2.db``, ``redis://host:6379/1``,
``postgresql://...``), an object ``{"url": ..., "ttl": ...}``, or the original
server's object form (``{"type": "Redis", "host", "port", "db", "ttl", "options"}``,
``{"type": "Postgres", "options": {...}}``). Tables without an entry use ``default``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .base import (
    Backend,
    Probe,
    Put,
    Record,
    StorageConfigError,
    StorageUnavailable,
    Table,
    ordered_exchange,
)

__all__ = [
    "Probe",
    "Put",
    "Storage",
    "StorageConfigError",
    "StorageSpec",
    "StorageUnavailable",
    "Table",
    "open_table",
]

log = logging.getLogger(__name__)

#: The tables one redemption writes together (see :meth:`Storage.exchange`).
GRANT_TABLES = ("codes", "tokens", "refresh_tokens")

#: The logical tables. ``session`` holds three kinds of short-lived record, told apart by
#: key: signed-in sessions (the SHA-256 of the cookie's id, ``app.sessions``), consent
#: transactions (``txn:`` + the SHA-256 of the form's id, ``app.views.authorize``) and,
#: when no table is on Redis, the failure counters of the sign-in and client-auth
#: delays (``oauth2-limits/...``, ``app.limits.delays``). Codes and refresh tokens keep
#: their tombstones in their own tables (``used:``, ``rotated:``, ``app.oauth2.grant_store``).
#: ``keys`` holds the OpenID Connect signing key ring (``app.oidc.keys``); ``consents``
#: the scopes each user granted each client, remembered (``app.oidc.consent``); ``factors``
#: the two-step sign-in secrets, used time steps and recovery codes (``app.twofactor``).
TABLES = (
    "session",
    "codes",
    "tokens",
    "refresh_tokens",
    "users",
    "audit",
    "clients",
    "keys",
    "consents",
    "factors",
)

#: The original server's lifetimes, in seconds; 0 means records never expire.
DEFAULT_TTLS = {
    "session": 1800,
    "codes": 60,
    "tokens": 7200,
    "refresh_tokens": 7776000,
    "users": 0,
    "audit": 0,
    "clients": 0,
    "keys": 0,
    "consents": 0,
    "factors": 0,
}

#: URL scheme -> "module:Class"; drivers are imported only when a scheme is used.
BACKENDS = {
    "sqlite": "app.storage.sqlite:SQLiteBackend",
    "redis": "app.storage.redis:RedisBackend",
    "rediss": "app.storage.redis:RedisBackend",
    "redis+cluster": "app.storage.redis:RedisBackend",
    "postgresql": "app.storage.postgres:PostgresBackend",
    "postgres": "app.storage.postgres:PostgresBackend",
}

_ORIGINAL_TYPES = {
    "redis": "redis",
    "postgres": "postgresql",
    "postgresql": "postgresql",
    "sqlite": "sqlite",
}


@dataclass(frozen=True)
class StorageSpec:
    """One table's backend URL, lifetime and driver options."""

    url: str
    ttl: int | None = None
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def scheme(self) -> str:
        return self.url.split(":", 1)[0].lower()


def _original_redis_url(entry: dict[str, Any]) -> str:
    host = entry.get("host", "127.0.0.1")
    port = entry.get("port", 6379)
    db = entry.get("db", 0)
    password = (entry.get("options") or {}).get("password")
    auth = f":{quote(str(password), safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port}/{db}"


def _original_postgres_url(entry: dict[str, Any]) -> str:
    opts = entry.get("options") or {}
    user = quote(str(opts.get("user", "postgres")), safe="")
    password = opts.get("password")
    auth = f"{user}:{quote(str(password), safe='')}" if password else user
    host = opts.get("host", "127.0.0.1")
    port = opts.get("port", 5432)
    database = opts.get("database", "oauth2")
    url = f"postgresql://{auth}@{host}:{port}/{database}"
    ssl = opts.get("ssl")
    if ssl is True:
        url += "?sslmode=require"  # node-postgres' ssl: true insists on TLS; so do we
    elif isinstance(ssl, str):
        url += f"?sslmode={ssl}"
    return url


def parse_spec(table: str, entry: Any) -> StorageSpec:
    """Turn one config entry into a :class:`StorageSpec`, naming the table on error."""
    where = f"storage.{table}"
    if isinstance(entry, str):
        return _checked(where, StorageSpec(url=entry))
    if not isinstance(entry, dict):
        raise StorageConfigError(f"{where}: expected a URL string or an object, got {entry!r}")
    ttl = entry.get("ttl")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0):
        raise StorageConfigError(f"{where}.ttl: expected a whole number of seconds >= 0")
    options = entry.get("options") or {}
    if not isinstance(options, dict):
        raise StorageConfigError(f"{where}.options: expected an object")
    options = dict(options)
    if "url" in entry:
        return _checked(where, StorageSpec(url=entry["url"], ttl=ttl, options=options))
    kind = str(entry.get("type", "")).lower()
    if kind not in _ORIGINAL_TYPES:
        raise StorageConfigError(
            f"{where}.type: unsupported storage type {entry.get('type')!r}; "
            "use Redis, Postgres, SQLite or a URL"
        )
    if kind == "redis":
        url = _original_redis_url(entry)
        options.pop("password", None)
    elif kind == "sqlite":
        url = "sqlite:///" + str(entry.get("path", "var/oauth2.db"))
    else:
        url = _original_postgres_url(entry)
        options = {}
    return _checked(where, StorageSpec(url=url, ttl=ttl, options=options))


def _checked(where: str, spec: StorageSpec) -> StorageSpec:
    if spec.scheme not in BACKENDS:
        raise StorageConfigError(
            f"{where}: unknown storage URL scheme {spec.scheme!r} "
            f"(known: {', '.join(sorted(BACKENDS))})"
        )
    return spec


def parse_storage_config(config: dict[str, Any]) -> dict[str, StorageSpec]:
    """Return a spec for every table, falling back to ``default``."""
    unknown = set(config) - set(TABLES) - {"default", "auto_migrate", "purge_interval"}
    if unknown:
        raise StorageConfigError(f"storage: unknown table(s) {', '.join(sorted(unknown))}")
    interval = config.get("purge_interval", 300)
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
        raise StorageConfigError("storage.purge_interval: expected whole seconds >= 0 (0: off)")
    if "default" not in config:
        raise StorageConfigError("storage.default: missing (the catch-all backend)")
    default = parse_spec("default", config["default"])
    specs = {}
    for name in TABLES:
        spec = parse_spec(name, config[name]) if name in config else default
        ttl = spec.ttl if name in config and spec.ttl is not None else DEFAULT_TTLS[name]
        specs[name] = StorageSpec(url=spec.url, ttl=ttl, options=spec.options)
    return specs


def option_problems(config: dict[str, Any]) -> list[str]:
    """What each entry's backend finds wrong with its ``options``, one line per key."""
    problems = []
    for name, entry in config.items():
        if name not in TABLES and name != "default":
            continue  # auto_migrate, purge_interval
        try:
            spec = parse_spec(name, entry)
        except StorageConfigError:
            continue  # the settings model reports the entry itself
        where = f"storage.{name}.options"
        problems += _backend_class(spec.scheme).option_problems(spec.options, where)
    return problems


def _backend_class(scheme: str) -> type[Backend]:
    module, _, cls = BACKENDS[scheme].partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:  # pragma: no cover - depends on installed extras
        raise StorageConfigError(f"storage backend {scheme!r} is not available: {exc}") from exc


#: This process's open backends by URL (see :func:`open_table`).
_OPEN: weakref.WeakValueDictionary[str, Backend] = weakref.WeakValueDictionary()


def open_table(name: str, spec: StorageSpec) -> Table:
    """The table ``name`` for a user outside :class:`Storage` (the limits' counters).

    It shares the backend a :class:`Storage` of this process opened for the URL, so
    its connections and its view of an outage (a dropped pool, a failed probe), and
    opens one only where there is none.
    """
    backend = _OPEN.get(spec.url) or _backend_class(spec.scheme)(spec.url, spec.options)
    return backend.table(name, spec.ttl)


class Storage:
    """Every table, each bound to its backend; backends are shared per URL.

    Attributes are the tables: ``storage.codes``, ``storage.tokens``, ...
    """

    session: Table
    codes: Table
    tokens: Table
    refresh_tokens: Table
    users: Table
    audit: Table
    clients: Table
    keys: Table
    consents: Table
    factors: Table

    def __init__(self, specs: dict[str, StorageSpec]) -> None:
        self.specs = specs
        self.backends: dict[str, Backend] = {}
        #: Context managers entered around every outermost-or-not :meth:`batch`, before the
        #: backends' batches, so they end after the held writes were sent.
        self.batch_wrappers: list[Callable[[], contextlib.AbstractContextManager[Any]]] = []
        self._lock = threading.Lock()
        self._owner: dict[str, Backend] = {}
        for name, spec in specs.items():
            self._owner[name] = self._backend(spec)
            setattr(self, name, self._owner[name].table(name, spec.ttl))
        grant_specs = {name: specs[name] for name in GRANT_TABLES if name in specs}
        if len({spec.url for spec in grant_specs.values()}) > 1:
            log.warning(
                "storage: %s are on different backends, so redeeming a code or refresh "
                "token cannot commit atomically (ordered best effort instead)",
                ", ".join(f"{name} ({spec.scheme})" for name, spec in grant_specs.items()),
            )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Storage:
        return cls(parse_storage_config(config))

    def _backend(self, spec: StorageSpec) -> Backend:
        with self._lock:
            if spec.url not in self.backends:
                self.backends[spec.url] = _backend_class(spec.scheme)(spec.url, spec.options)
                _OPEN[spec.url] = self.backends[spec.url]
            return self.backends[spec.url]

    def tables(self) -> dict[str, Table]:
        return {name: getattr(self, name) for name in TABLES}

    def exchange(
        self,
        take: tuple[Table, str],
        puts: Sequence[Put],
        discards: Sequence[tuple[Table, str]] = (),
        probe: Probe | None = None,
    ) -> Record | None:
        """Take one record and write what it buys, all or nothing; ``None``: it was gone.

        ``probe``: answered within the exchange where its one backend can (see
        :class:`~.base.Probe`).

        Atomic when every table lives on one backend (one transaction or one script);
        across backends, the ordered best effort of :func:`~.base.ordered_exchange`.
        An entry (a put with ``log``: the audit's) on a backend none of the other tables
        is on is written after a successful exchange, held by the batch if there is one:
        it costs the rest neither their atomicity nor a write at once.
        """
        tables = [take[0], *(t for t, _ in discards), *(p.table for p in puts if not p.log)]
        owners = self._owners(tables)
        kept: list[Put] = []
        after: list[Put] = []
        for put in puts:
            elsewhere = put.log and self._owner[put.table.name] not in owners
            (after if elsewhere else kept).append(put)
        taken = self._exchange(take, kept, discards, owners, probe)
        if taken is not None:
            for put in after:
                put.table.write(put)
        return taken

    def _owners(self, tables: Sequence[Table]) -> list[Backend]:
        """The backends ``tables`` live on, each once."""
        return list({id(self._owner[t.name]): self._owner[t.name] for t in tables}.values())

    def _exchange(
        self,
        take: tuple[Table, str],
        puts: Sequence[Put],
        discards: Sequence[tuple[Table, str]],
        owners: list[Backend],
        probe: Probe | None = None,
    ) -> Record | None:
        if len(owners) == 1:
            return owners[0].exchange(take, puts, discards, probe)
        with contextlib.ExitStack() as stack:
            # Its writes go at once: a failing one must put the taken record back.
            for backend in owners:
                stack.enter_context(backend.unbatched())
            return ordered_exchange(take, puts, discards)

    def ping(self) -> None:
        """Raise :class:`StorageUnavailable` unless every backend answers."""
        for backend in self.backends.values():
            backend.ping()

    def migrate(self) -> dict[str, list[str]]:
        """Apply schema migrations on every backend."""
        return {url: backend.migrate() for url, backend in self.backends.items()}

    def purge(self) -> dict[str, int]:
        """Delete expired rows in every table."""
        return {name: table.purge() for name, table in self.tables().items()}

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Send the writes made inside in one round trip per backend, at the end.

        For writes that nothing inside reads back (a token response's records and
        its audit entry) and ``discard``: reads, takes and deletes still go at once. The writes are
        sent when the block ends, also when it raised, so a caller answers only after
        they landed: one pipeline per Redis server (a Cluster holds nothing), one
        statement per SQL database, its writes all or nothing.
        """
        with contextlib.ExitStack() as stack:
            for wrapper in self.batch_wrappers:
                stack.enter_context(wrapper())
            for backend in self.backends.values():
                stack.enter_context(backend.batch())
            yield

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()
