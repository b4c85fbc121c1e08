"""Counting quotas: a reservation per call, atomic across workers and instances.

The counts live in the limiter's store when that is Redis (``limits.storage``, or a
Redis table), else in the ``session`` table through its atomic ``incr`` (every
backend): never in process memory, so every worker and instance spends one count.

A call is *reserved* before it is proxied: one atomic increment per quota that
applies. The increment's answer decides: at most the quota, the call goes on; past
it, the increment is taken back and the call is refused (so ``used`` never stays
above the quota, and a refused call costs nothing). N parallel callers of a quota of
N calls get exactly N answers from the increments that are at most N. A call the
site did not answer is given back (:meth:`Quotas.refund`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from ..limits.delays import Counters, TableCounters
from ..storage import Storage, StorageUnavailable
from .policy import Quota

PREFIX = "oauth2-quota"
#: Counters outlive their window by this much (seconds), then the store forgets them.
KEEP_AFTER = 60


@dataclass(frozen=True)
class Budget:
    """One quota a call spends: its name in the ``RateLimit`` fields, whose count it is,
    and whether it refuses calls (a count kept only to be shown does not)."""

    name: str
    owner: str
    quota: Quota
    enforced: bool = True

    def key(self, now: float) -> str:
        """The counter of ``now``'s window (a new window, a new counter)."""
        owner = hashlib.sha256(self.owner.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"{PREFIX}/{owner}/{self.quota.per}/{self.quota.window(now)[0]}"


class Spent(NamedTuple):
    """A budget's count after a reservation (``used`` of its calls); ``reset`` in seconds."""

    budget: Budget
    used: int
    reset: int
    key: str


class Usage(NamedTuple):
    """A quota as shown: ``used`` of ``limit`` calls; the window ends at ``reset`` (UNIX)."""

    limit: int
    used: int
    per: str
    reset: int


class Quotas:
    """Reservations against the shared counters. ``clock`` is what windows are judged by."""

    def __init__(self, store: Counters, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    @classmethod
    def build(cls, limiter_store: Counters | None, storage: Storage) -> Quotas:
        """On the limiter's Redis store if it has one, else on the ``session`` table."""
        return cls(limiter_store if limiter_store is not None else TableCounters(storage.session))

    def reserve(self, budgets: list[Budget]) -> tuple[list[Spent], Spent | None]:
        """Count one call in each budget: ``(spent, None)``, or ``([], refused)`` with
        nothing counted when an enforced budget has no call left."""
        now, done = self.clock(), list[Spent]()
        for budget in budgets:
            key, reset = budget.key(now), budget.quota.reset_in(now)
            used = self._incr(key, reset, 1)
            if budget.enforced and used > budget.quota.calls:
                self.refund([*done, Spent(budget, used, reset, key)])
                return [], Spent(budget, budget.quota.calls, reset, key)
            done.append(Spent(budget, used, reset, key))
        return done, None

    def refund(self, spent: list[Spent]) -> None:
        """Give back reserved calls (refused, or never answered by the site)."""
        for item in spent:
            self._incr(item.key, item.reset, -1)

    def first_refusal(self, refused: Spent) -> bool:
        """Whether this is the first refusal of its budget's window (audited once)."""
        return self._incr(refused.key + "/refused", refused.reset, 1) == 1

    def usage(self, budget: Budget) -> Usage:
        """How much of ``budget`` the current window has used."""
        now = self.clock()
        try:
            used = int(self.store.get(budget.key(now)))
        except Exception as error:  # noqa: BLE001 - any store fault is an outage
            raise _outage(error) from error
        limit = budget.quota.calls
        return Usage(limit, min(max(used, 0), limit), budget.quota.per, budget.quota.window(now)[1])

    def _incr(self, key: str, reset: int, amount: int) -> int:
        try:
            return int(self.store.incr(key, reset + KEEP_AFTER, amount=amount))
        except Exception as error:  # noqa: BLE001 - any store fault is an outage
            raise _outage(error) from error


def _outage(error: Exception) -> StorageUnavailable:
    """A quota cannot be kept without its store: the call waits (503), it is not let through."""
    if isinstance(error, StorageUnavailable):
        return error
    return StorageUnavailable(f"quota store: {type(error).__name__}")
