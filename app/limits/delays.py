"""Growing delays after failures: sign-in per username, client authentication per id and IP.

After ``free`` failures of one subject, each further attempt shuts a gate for
``base ** k`` seconds (``k`` = attempts past ``free``), up to ``ceiling``; while the gate
is shut every attempt is refused, the right password or secret too, so guessing is
bounded. The counts are atomic increments shared by every worker and machine: in the
limiter's store when it is Redis, else (its store is process memory) in the ``session``
table through :class:`TableCounters`. They are forgotten ``memory`` seconds after the
first failure.

Two ways in:

* :meth:`Delays.reserve` counts the attempt *before* it is checked (sign-in): with N
  parallel attempts at most ``free`` + 1 reach the site before the gate shuts;
* :meth:`Delays.check` then :meth:`Delays.failed` or :meth:`Delays.succeeded` (client
  authentication, where the check is cheap and every request pays for the question): a
  process that saw the subject clean less than 0.1 s ago skips the store, and any
  failure it sees ends that; a success that the check found clean has nothing to clear.
  So a partner's successful requests cost the store nothing but one read per subject
  per 0.1 s per process.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TypeVar

from limits.storage import RedisStorage

from ..storage import Table
from .counters import PREFIX, SYNC_EVERY, digest

log = logging.getLogger("oauth2.limits")
T = TypeVar("T")

#: At most this many subjects remembered clean per process (a flood empties it).
MAX_QUIET = 100_000


class Counters(Protocol):
    """The counter verbs of a ``limits`` storage that :class:`Delays` uses."""

    def incr(self, key: str, expiry: int, amount: int = 1) -> int: ...

    def get(self, key: str) -> int: ...

    def clear(self, key: str) -> None: ...

    def get_expiry(self, key: str) -> float: ...


class TableCounters:
    """:class:`Counters` on a storage table (its atomic ``incr``), shared by every
    process that uses the table: the delays of SQL storage, where the limiter's own
    store would be process memory (one lockout per worker)."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self.table.incr(key, amount, ttl=expiry)

    def get(self, key: str) -> int:
        record = self.table.get(key)
        return int(record["count"]) if record else 0

    def clear(self, key: str) -> None:
        self.table.delete(key)

    def get_expiry(self, key: str) -> float:
        record = self.table.get(key)
        return float(record["expires_at"]) if record and record["expires_at"] else time.time()


def _tolerant(default: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Answer ``default`` (let the attempt go on) while the store is down: the tables
    share that store, so they answer 503 anyway, and a flaky limiter must not lock
    everyone out."""

    def decorate(method: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(method)
        def tolerant(*args: Any, **kwargs: Any) -> T:
            try:
                return method(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - any store fault
                log.warning("delay store unavailable (%s)", type(error).__name__)
                return default

        return tolerant

    return decorate


class Attempt(NamedTuple):
    """A reserved attempt: ``wait`` > 0 refuses it; ``delay`` it starts if it fails."""

    wait: int
    delay: int


class Check(NamedTuple):
    """Whether a subject may try now: ``wait`` > 0 refuses it; ``clean``: no failures
    were counted (as this process saw at most 0.1 s ago), so a success has none to clear."""

    wait: int
    clean: bool


class Delays:
    """Growing delays for one kind of failure (named ``name`` in the store)."""

    def __init__(
        self,
        store: Counters,
        name: str,
        free: int,
        base: float,
        ceiling: int,
        enabled: bool = True,
    ) -> None:
        self.store, self.name, self.enabled = store, name, enabled
        self.free, self.base, self.ceiling = free, base, ceiling
        self.memory = max(ceiling * 4, 86_400)
        self._quiet: dict[str, float] = {}  # subject -> seen clean until

    # -- sign-in: reserve first -------------------------------------------------------
    @_tolerant(Attempt(0, 0))
    def reserve(self, subject: str) -> Attempt:
        """Count an attempt before checking it; refused while the gate is shut."""
        if not self.enabled:
            return Attempt(0, 0)
        ident = digest(subject)
        count, gate = self._keys(ident)
        self._quiet.pop(ident, None)  # counted: no longer known clean
        failures = self.store.incr(count, self.memory)
        if failures <= self.free:
            return Attempt(0, 0)
        delay = self._delay(failures)
        if self.store.incr(gate, delay) == 1:  # the gate was open: this attempt shuts it
            return Attempt(0, delay)
        self.store.incr(count, self.memory, amount=-1)  # refused: not an attempt
        return Attempt(self._left(gate), 0)

    @_tolerant(None)
    def release(self, subject: str) -> None:
        """Give back a reserved attempt that was never checked (the site was down)."""
        if self.enabled:
            self.store.incr(self._keys(digest(subject))[0], self.memory, amount=-1)

    # -- client authentication: ask, then count failures ------------------------------
    def wait(self, subject: str) -> int:
        """Seconds ``subject`` must wait before its next attempt (0: may try now)."""
        return self.check(subject).wait

    @_tolerant(Check(0, False))
    def check(self, subject: str) -> Check:
        """:meth:`wait`, and whether the subject had no failures counted."""
        if not self.enabled:
            return Check(0, True)
        ident = digest(subject)
        clean_until = self._quiet.get(ident)
        if clean_until is not None:
            if clean_until > time.time():
                return Check(0, True)
            # Seen clean, due for a fresh look: the other threads keep that view for the
            # moment this thread asks (one read, not one per thread). A subject seen
            # failing or not seen yet has no entry: every thread asks.
            self._remember_quiet(ident)
        count, gate = self._keys(ident)
        failures = self.store.get(count)
        if failures == 0:
            self._remember_quiet(ident)
            return Check(0, True)
        self._quiet.pop(ident, None)
        wait = self._left(gate) if failures > self.free and self.store.get(gate) else 0
        return Check(wait, False)

    @_tolerant(0)
    def failed(self, subject: str) -> int:
        """Count a failure; return the delay it starts (0 while failures are free)."""
        if not self.enabled:
            return 0
        ident = digest(subject)
        count, gate = self._keys(ident)
        self._quiet.pop(ident, None)
        failures = self.store.incr(count, self.memory)
        if failures <= self.free:
            return 0
        delay = self._delay(failures)
        self.store.incr(gate, delay)  # already shut by a parallel failure: that one stands
        return delay

    @_tolerant(None)
    def succeeded(self, subject: str) -> None:
        """Forget the subject's failures (nothing to do if it was seen clean just now)."""
        if not self.enabled:
            return
        ident = digest(subject)
        if self._quiet.get(ident, 0.0) > time.time():
            return
        _clear(self.store, self._keys(ident))
        self._remember_quiet(ident)

    # -- helpers ----------------------------------------------------------------------
    def _keys(self, ident: str) -> tuple[str, str]:
        """The two store keys of a subject's digest (any subject: one short key)."""
        key = f"{PREFIX}/{self.name}/{ident}"
        return key + "/failures", key + "/gate"

    def _delay(self, failures: int) -> int:
        return int(min(self.ceiling, math.ceil(self.base ** min(failures - self.free, 64))))

    def _left(self, gate: str) -> int:
        return max(1, math.ceil(self.store.get_expiry(gate) - time.time()))

    def _remember_quiet(self, ident: str) -> None:
        if len(self._quiet) >= MAX_QUIET:
            self._quiet.clear()
        self._quiet[ident] = time.time() + SYNC_EVERY


def _clear(store: Counters, keys: tuple[str, ...]) -> None:
    """Delete ``keys``: one ``DEL`` (one round trip) on the limiter's Redis, else one by one."""
    if isinstance(store, RedisStorage):  # Cluster's client splits a DEL by slot itself
        store.get_connection().delete(*(store.prefixed_key(key) for key in keys))
    else:
        for key in keys:
            store.clear(key)
