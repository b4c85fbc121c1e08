"""Abuse limits: per client, IP, username and token, plus the sign-in lockout.

Each limit is a fixed-window counter kept by a storage of the ``limits`` library:
Redis when any table is on Redis (every worker and machine then shares it), else
process memory. Asking Redis on every request cost more than the rest of a token
check (bench/README.md), so each process keeps its view of every counter and sends
its hits in batches, and only while the counter is far from its limit:

* a hit goes to the store at once when it would take the process's view past
  three quarters of the limit, when the process holds more than 1/16 of the limit
  unsent, or when the counter was last sent over 0.1 s ago;
* other hits are counted locally and sent with the next one that goes.

So near a limit every hit is one atomic ``INCRBY`` (exact, as the e2e test checks
across workers), and far from it a busy counter costs one round trip per 0.1 s per
process. Far from the limit the shared count can lag by at most 1/16 of the limit
per process. A counter already past its limit refuses without asking the store at
all, so a flood costs no storage traffic. When the store fails, each process counts
on its own until it answers again. A failed login also grows a per-username lockout
kept in the ``session`` table (``LoginThrottle``), so guessing slows down everywhere.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, cast

from authlib.oauth2.rfc6749.util import extract_basic_authorization
from flask import current_app, g, request
from limits import RateLimitItem, parse
from limits.storage import Storage as LimitsStorage
from limits.storage import storage_from_string
from werkzeug.exceptions import TooManyRequests

from .audit import audit
from .settings import Settings
from .storage import Table

log = logging.getLogger("oauth2.limits")

LOCK = "lock:"
PREFIX = "oauth2-limits"
RATES = ("token", "token_ip", "login_ip", "login_user", "api")

#: Send at once past this share of a limit (the process's view) ...
EXACT_FROM = 0.75
#: ... or when more than this share of it is unsent ...
BATCH_SHARE = 1 / 16
#: ... or when the counter was last sent longer ago than this (seconds).
SYNC_EVERY = 0.1
#: After the store failed, count locally for this long before trying it again.
STORE_RETRY = 1.0
#: Redis driver timeouts for the limiter's store (seconds).
STORE_TIMEOUTS = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
#: At most this many counters per process; idle ones go first when it fills up.
MAX_COUNTERS = 100_000


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class Refusal(NamedTuple):
    """A refused hit: seconds until the window ends; ``first`` of its key and window."""

    retry: int
    first: bool


class Counter:
    """A process's view of one key's counter in one window."""

    __slots__ = ("inflight", "pending", "reported", "seen", "synced", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.seen = 0  # the shared count, as the store last answered
        self.pending = 0  # hits counted here and not sent yet
        self.synced = 0.0
        self.inflight = 0  # sends on their way to the store
        self.reported = False  # the breach of this window was audited


class RateLimits:
    """Fixed-window limits by name (``token``, ``api``, ...), batched as described above."""

    def __init__(
        self,
        rates: dict[str, str],
        storage_uri: str,
        enabled: bool = True,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.enabled = enabled
        self.rates: dict[str, RateLimitItem] = {name: parse(rate) for name, rate in rates.items()}
        self.store: LimitsStorage | None = None
        if enabled and not storage_uri.startswith("memory://"):
            # Short timeouts: a store that hangs must not hang requests (they count
            # locally for a second instead).
            options = {**STORE_TIMEOUTS, **(options or {})} if "redis" in storage_uri else {}
            self.store = cast(LimitsStorage, storage_from_string(storage_uri, **options))
        self._counters: dict[str, Counter] = {}
        self._lock = threading.Lock()
        self._store_down_until = 0.0
        self._prune_at = time.time() + 60

    # -- the two questions -------------------------------------------------------------
    def hit(self, name: str, key: str, cost: int = 1) -> Refusal | None:
        """Count a request; ``None`` if it may go on, else the seconds until it may."""
        rate, now = self.rates[name], time.time()
        window, retry = _window(rate, now)
        ident = f"{name}/{key}"
        with self._lock:
            counter = self._counter(ident, window, now)
            if counter.seen >= rate.amount:
                return self._refuse(counter, retry)  # known spent: no store trip
            used = counter.seen + counter.pending + cost
            store = self._usable_store(now)
            if store is None or not (
                used > rate.amount * EXACT_FROM
                or counter.pending + cost > rate.amount * BATCH_SHARE
                or now - counter.synced >= SYNC_EVERY
                or counter.inflight  # another thread is asking: its answer is not in the view
            ):
                if store is None and used > rate.amount:
                    return self._refuse(counter, retry)
                counter.pending += cost
                return None
            send = _start_send(counter, now, cost)
        total = self._exchange(store, counter, f"{PREFIX}/{ident}/{window}", rate, send)
        with self._lock:
            return self._refuse(counter, retry) if total > rate.amount else None

    def spent(self, name: str, key: str) -> Refusal | None:
        """Whether ``key`` has no budget left (seconds to wait), without counting."""
        rate, now = self.rates[name], time.time()
        window, retry = _window(rate, now)
        ident = f"{name}/{key}"
        with self._lock:
            counter = self._counter(ident, window, now)
            used = counter.seen + counter.pending
            store = self._usable_store(now)
            near = used >= rate.amount * EXACT_FROM or now - counter.synced >= SYNC_EVERY
            if store is None or used >= rate.amount or not near:
                return self._refuse(counter, retry) if used >= rate.amount else None
            send = _start_send(counter, now, 0)
        # Near the limit (or stale): send what is pending and read the shared count.
        total = self._exchange(store, counter, f"{PREFIX}/{ident}/{window}", rate, send)
        with self._lock:
            return self._refuse(counter, retry) if total >= rate.amount else None

    def _exchange(
        self, store: LimitsStorage, counter: Counter, key: str, rate: RateLimitItem, send: int
    ) -> int:
        """Send ``send`` hits (see :func:`_start_send`); return the shared count after."""
        total = self._send(store, key, rate.get_expiry(), send)
        with self._lock:
            counter.inflight -= 1
            if total is None:  # the store failed: this process decides alone
                counter.pending += send
                return counter.seen + counter.pending
            counter.seen = max(counter.seen, total)
            return total

    # -- helpers -----------------------------------------------------------------------
    def _counter(self, ident: str, window: int, now: float) -> Counter:
        if now >= self._prune_at:
            self._prune(now)
        counter = self._counters.get(ident)
        if counter is None or counter.window != window:
            if counter is None and len(self._counters) >= MAX_COUNTERS:
                self._make_room(now)
            counter = self._counters[ident] = Counter(window)
        return counter

    def _make_room(self, now: float) -> None:
        """Full (a flood of distinct keys): forget what only costs a store trip to relearn."""
        self._prune(now)
        if len(self._counters) >= MAX_COUNTERS:
            idle = [i for i, c in self._counters.items() if not c.pending and not c.inflight]
            for ident in idle:
                del self._counters[ident]
        if len(self._counters) >= MAX_COUNTERS:  # counted here alone: the oldest half goes
            for ident in list(itertools.islice(self._counters, len(self._counters) // 2)):
                del self._counters[ident]

    def _prune(self, now: float) -> None:
        """Forget counters whose window has ended (once a minute, under the lock)."""
        self._prune_at = now + 60
        ended = [
            ident
            for ident, counter in self._counters.items()
            if counter.window + self.rates[ident.partition("/")[0]].get_expiry() <= now
        ]
        for ident in ended:
            del self._counters[ident]

    def _usable_store(self, now: float) -> LimitsStorage | None:
        return self.store if self.store is not None and now >= self._store_down_until else None

    def _send(self, store: LimitsStorage, key: str, span: int, amount: int) -> int | None:
        try:
            if amount == 0:
                return int(store.get(key))
            return int(store.incr(key, span + 1, amount=amount))
        except Exception as error:  # noqa: BLE001 - any store fault: count locally instead
            self._store_down_until = time.time() + STORE_RETRY
            log.warning(
                "rate-limit store unavailable (%s); counting per process", type(error).__name__
            )
            return None

    @staticmethod
    def _refuse(counter: Counter, retry: int) -> Refusal:
        first, counter.reported = not counter.reported, True
        return Refusal(retry, first)


def _window(rate: RateLimitItem, now: float) -> tuple[int, int]:
    """The start of the fixed window ``now`` falls in, and the seconds until it ends."""
    span = rate.get_expiry()
    window = int(now // span) * span
    return window, max(1, math.ceil(window + span - now))


def _start_send(counter: Counter, now: float, cost: int) -> int:
    """Move the counter's pending hits (plus ``cost``) in flight; under the lock."""
    send, counter.pending, counter.synced = counter.pending + cost, 0, now
    counter.inflight += 1
    return send


def _limits() -> RateLimits:
    return current_app.extensions["oauth2"].limits


def _refused(name: str, refusal: Refusal) -> TooManyRequests:
    if refusal.first:  # one audit record per key and window: a flood writes no more
        audit("rate_limited", path=request.path, limit=f"{name} {_limits().rates[name]}")
    retry = refusal.retry
    return TooManyRequests(f"Too many requests; try again in {retry} s.", retry_after=retry)


def _ip() -> str:
    return request.remote_addr or "unknown"


def client_budget(client: Any) -> str:
    """The budget a client spends: its own, or for a public client (whose id anyone may
    send) its id from the caller's address."""
    client_id = client.get_client_id()
    return f"client:{client_id}@{_ip()}" if client.public else f"client:{client_id}"


def claimed_client_key() -> str | None:
    """The budget of the registered client a token request names (checked, not counted)."""
    client_id, _ = extract_basic_authorization(request.headers)
    if not client_id:
        body = request.get_json(silent=True) if request.is_json else request.form
        client_id = body.get("client_id") if isinstance(body, dict) else None
    client = current_app.extensions["oauth2"].clients.get(client_id) if client_id else None
    return client_budget(client) if client is not None else None


def authenticated_client_key() -> str | None:
    """The budget of the client that authenticated in this request, if one did."""
    return g.get("client_budget")


def username_key() -> str:
    return "user:" + _digest(request.form.get("username", "").strip().lower())


def token_key() -> str:
    kind, _, value = request.headers.get("Authorization", "").partition(" ")
    return "token:" + _digest(value) if value else f"ip:{_ip()}"


def limited(
    *checks: tuple[str, Callable[[], str]],
    after: tuple[str, Callable[[], str | None], Callable[[], str | None]] | None = None,
    methods: tuple[str, ...] = (),
):
    """Count each ``(limit, key)`` of ``checks`` before the view runs.

    ``after`` is ``(limit, claimed, proven)``: the ``claimed`` key's budget is checked
    (not counted) before the view runs; once it answered, the ``proven`` key is counted,
    if there is one. For the token endpoints that is the client that authenticated in
    the request: a claimed client id proves nothing, so requests that fail before or
    in client authentication count against the caller's IP only, and nobody can spend
    another client's budget.
    """

    def decorate(view):
        scope = view.__name__ + ":"  # each endpoint has its own budgets

        @functools.wraps(view)
        def limited_view(*args: Any, **kwargs: Any):
            limits = _limits()
            if not limits.enabled or (methods and request.method not in methods):
                return view(*args, **kwargs)
            for name, key_func in checks:
                refusal = limits.hit(name, scope + key_func())
                if refusal is not None:
                    raise _refused(name, refusal)
            if after is not None:
                name, claimed, _ = after
                key = claimed()
                refusal = limits.spent(name, scope + key) if key is not None else None
                if refusal is not None:
                    raise _refused(name, refusal)
            response = current_app.make_response(view(*args, **kwargs))
            if after is not None:
                proven = after[2]()
                if proven is not None:
                    limits.hit(after[0], scope + proven)
            return response

        return limited_view

    return decorate


token_limits = limited(
    ("token_ip", _ip), after=("token", claimed_client_key, authenticated_client_key)
)
login_limits = limited(("login_ip", _ip), ("login_user", username_key), methods=("POST",))
api_limit = limited(("api", token_key))


def storage_config(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The limiter storage's URI and driver options (a Redis table's, if it is one)."""
    configured = settings.limits.storage
    if configured:
        return configured, {}
    for spec in settings.storage_specs.values():
        if spec.scheme in ("redis", "rediss"):
            options = {k: v for k, v in spec.options.items() if k != "key_prefix"}
            return spec.url, options
    return "memory://", {}


def build(settings: Settings) -> RateLimits:
    config = settings.limits
    rates = {name: getattr(config, name) for name in RATES}
    uri, options = storage_config(settings)
    return RateLimits(rates, uri, config.enabled, options)


class LoginThrottle:
    """Growing delays per username: after ``free`` failures, 2^n seconds, up to ``ceiling``."""

    def __init__(
        self, table: Table, free: int, base: float, ceiling: int, enabled: bool = True
    ) -> None:
        self.table, self.free, self.base, self.ceiling = table, free, base, ceiling
        self.enabled = enabled

    def wait(self, username: str) -> int:
        """Seconds the username must still wait before trying again (0: may try now)."""
        if not self.enabled:
            return 0
        record = self.table.get(LOCK + _digest(username.strip().lower()))
        if not record:
            return 0
        return max(0, math.ceil(record.get("until", 0) - time.time()))

    def failed(self, username: str) -> int:
        """Count a failure; return the lockout it earns (0 while failures are free)."""
        if not self.enabled:
            return 0
        key = LOCK + _digest(username.strip().lower())
        record = self.table.get(key) or {"failures": 0}
        failures = record["failures"] + 1
        delay = 0
        if failures > self.free:
            delay = int(min(self.ceiling, self.base ** (failures - self.free)))
        self.table.put(
            key,
            {"failures": failures, "until": time.time() + delay},
            ttl=max(self.ceiling * 4, 3600),
        )
        return delay

    def succeeded(self, username: str) -> None:
        self.table.discard(LOCK + _digest(username.strip().lower()))
