"""The counter engine: fixed-window counters, batched, shared through the limiter's store.

Each limit is a fixed-window counter kept by a storage of the ``limits`` library:
Redis when any table is on Redis (every worker and machine then shares it), else
process memory. Asking Redis on every request cost more than the rest of a token
check (bench/README.md), so each process keeps its view of every counter and sends
its hits in batches, and only while the counter is far from its limit:

* a hit goes to the store at once when it would take the process's view past three
  quarters of the limit, when the process holds more than 1/16 of the limit unsent or
  unanswered, or when the counter was last sent over 0.1 s ago;
* other hits are counted locally and sent with the next one that goes, also while
  another thread's send is on its way (however many threads a worker runs).

So near a limit every hit is one atomic ``INCRBY`` (exact, as the e2e test checks
across workers), and far from it a busy counter costs one round trip per 0.1 s per
process. Far from the limit the shared count can lag by at most 1/16 of the limit
per process. A counter already past its limit refuses without asking the store at
all, so a flood costs no storage traffic. When the store fails, each process counts
on its own until it answers again.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import threading
import time
from typing import Any, NamedTuple, cast

from limits import RateLimitItem, parse
from limits.storage import Storage as LimitsStorage
from limits.storage import storage_from_string

log = logging.getLogger("oauth2.limits")

PREFIX = "oauth2-limits"

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


def digest(value: str) -> str:
    """A short, fixed-length key for any value (bounds the key space of strangers)."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class Refusal(NamedTuple):
    """A refused hit: seconds until the window ends; ``first`` of its key and window."""

    retry: int
    first: bool


class Counter:
    """A process's view of one key's counter in one window."""

    __slots__ = ("inflight", "pending", "reported", "seen", "sending", "span", "synced", "window")

    def __init__(self, window: int, span: int) -> None:
        self.window, self.span = window, span
        self.seen = 0  # the shared count, as the store last answered
        self.pending = 0  # hits counted here and not sent yet
        self.synced = 0.0
        self.inflight = 0  # sends on their way to the store
        self.sending = 0  # the hits they carry
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

    def close(self) -> None:
        """Release the store's connections (a Redis store's pool; they open again if used)."""
        client = getattr(self.store, "storage", None)
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            pool.disconnect()

    # -- the two questions -------------------------------------------------------------
    def hit(
        self, name: str, key: str, cost: int = 1, rate: RateLimitItem | None = None
    ) -> Refusal | None:
        """Count a request; ``None`` if it may go on, else the seconds until it may.

        ``rate`` overrides the named limit's (a client's own ``rate_limit``).
        """
        return self._hit(name, key, cost, rate or self.rates[name])[0]

    def count(self, name: str, key: str, rate: RateLimitItem | None = None) -> tuple[int, int]:
        """Count a request already answered; ``(quota left, seconds until the window ends)``
        as this process sees them after it (the ``RateLimit`` field's values)."""
        rate = rate or self.rates[name]
        refusal, used, reset = self._hit(name, key, 1, rate)
        return (0 if refusal else max(0, rate.amount - used)), reset

    def _hit(
        self, name: str, key: str, cost: int, rate: RateLimitItem
    ) -> tuple[Refusal | None, int, int]:
        """:meth:`hit`, with the count after it and the seconds left in the window."""
        now = time.time()
        window, retry = _window(rate, now)
        ident = f"{name}/{key}"
        with self._lock:
            counter = self._counter(ident, window, now, rate)
            if counter.seen >= rate.amount:
                return self._refuse(counter, retry), counter.seen, retry  # known spent
            used = counter.seen + counter.pending + cost
            store = self._usable_store(now)
            # Sends in flight (other threads') are not in ``seen`` yet: they count here as
            # unsent, so near the limit every hit still goes to the store and the hits no
            # answer has confirmed stay under 1/16 of the limit (an answer that already
            # holds them counts them twice for a moment: one more send, never a refusal).
            unconfirmed = counter.pending + counter.sending + cost
            if store is None or not (
                used + counter.sending > rate.amount * EXACT_FROM
                or unconfirmed > rate.amount * BATCH_SHARE
                or now - counter.synced >= SYNC_EVERY
            ):
                if store is None and used > rate.amount:
                    return self._refuse(counter, retry), used, retry
                counter.pending += cost
                return None, used, retry
            send = _start_send(counter, now, cost)
        total = self._exchange(store, counter, f"{PREFIX}/{ident}/{window}", rate, send)
        with self._lock:
            refusal = self._refuse(counter, retry) if total > rate.amount else None
            return refusal, counter.seen + counter.pending, retry

    def spent(self, name: str, key: str, rate: RateLimitItem | None = None) -> Refusal | None:
        """Whether ``key`` has no budget left (seconds to wait), without counting."""
        rate, now = rate or self.rates[name], time.time()
        window, retry = _window(rate, now)
        ident = f"{name}/{key}"
        with self._lock:
            counter = self._counter(ident, window, now, rate)
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

    def remaining(self, name: str, key: str, rate: RateLimitItem | None = None) -> tuple[int, int]:
        """``(quota left, seconds until the window ends)`` as this process sees them."""
        rate, now = rate or self.rates[name], time.time()
        window, reset = _window(rate, now)
        with self._lock:
            counter = self._counters.get(f"{name}/{key}")
            used = counter.seen + counter.pending if counter and counter.window == window else 0
        return max(0, rate.amount - used), reset

    def _exchange(
        self, store: LimitsStorage, counter: Counter, key: str, rate: RateLimitItem, send: int
    ) -> int:
        """Send ``send`` hits (see :func:`_start_send`); return the shared count after."""
        total = self._send(store, key, rate.get_expiry(), send)
        with self._lock:
            counter.inflight -= 1
            counter.sending -= send
            if total is None:  # the store failed: this process decides alone
                counter.pending += send
                return counter.seen + counter.pending
            counter.seen = max(counter.seen, total)
            return total

    # -- helpers -----------------------------------------------------------------------
    def _counter(self, ident: str, window: int, now: float, rate: RateLimitItem) -> Counter:
        if now >= self._prune_at:
            self._prune(now)
        counter = self._counters.get(ident)
        if counter is None or counter.window != window:
            if counter is None and len(self._counters) >= MAX_COUNTERS:
                self._make_room(now)
            counter = self._counters[ident] = Counter(window, rate.get_expiry())
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
        ended = [i for i, c in self._counters.items() if c.window + c.span <= now]
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
    counter.sending += send
    return send
