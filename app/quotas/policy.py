"""What an operator sets: a client's quota, its per-function quotas, the user's choice.

In the clients file and the admin API's metadata alike::

    "quota": {"calls": 10000, "per": "day"},
    "api_quotas": {"profile": {"calls": 1000, "per": "day"}},
    "quota_user_choice": true

Periods are fixed windows aligned to UTC: a minute, an hour, a day (from 00:00 UTC)
or a calendar month (from the 1st, 00:00 UTC). Every call of a window counts, and the
count starts again at zero when the next window starts.
"""

from __future__ import annotations

import calendar
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

#: The periods a quota may be counted over, with the words the pages use for "this one".
PERIODS = {"minute": "this minute", "hour": "this hour", "day": "today", "month": "this month"}
#: The largest quota (a number no count reaches; anything bigger is a typo).
MAX_CALLS = 10**12
#: An ``/api/<name>`` function's name, as the adapters' routes spell them.
API_NAME = re.compile(r"[A-Za-z0-9._~/-]{1,128}")
#: The fields of client metadata this module owns.
FIELDS = ("quota", "api_quotas", "quota_user_choice")


class QuotaError(ValueError):
    """A quota field is invalid; the message names the field (without the client)."""


@dataclass(frozen=True)
class Quota:
    """``calls`` per ``per`` (one of :data:`PERIODS`)."""

    calls: int
    per: str

    def window(self, now: float | None = None) -> tuple[int, int]:
        """The start of the UTC window ``now`` falls in, and its end (UNIX times)."""
        now = time.time() if now is None else now
        if self.per == "month":
            day = time.gmtime(now)
            start = calendar.timegm((day.tm_year, day.tm_mon, 1, 0, 0, 0))
            year, month = (
                (day.tm_year + 1, 1) if day.tm_mon == 12 else (day.tm_year, day.tm_mon + 1)
            )
            return start, calendar.timegm((year, month, 1, 0, 0, 0))
        span = {"minute": 60, "hour": 3600, "day": 86400}[self.per]
        start = int(now // span) * span
        return start, start + span

    def reset_in(self, now: float) -> int:
        """Seconds until the window ``now`` falls in ends (at least 1)."""
        return max(1, math.ceil(self.window(now)[1] - now))

    def to_json(self) -> dict[str, Any]:
        return {"calls": self.calls, "per": self.per}


@dataclass(frozen=True)
class QuotaPolicy:
    """A client's quotas: over all its calls, per function, and whether users may lower."""

    quota: Quota | None = None
    api_quotas: dict[str, Quota] = field(default_factory=dict)
    user_choice: bool = False

    def to_json(self) -> dict[str, Any]:
        """The metadata fields that describe this policy (none for an empty one)."""
        out: dict[str, Any] = {}
        if self.quota:
            out["quota"] = self.quota.to_json()
        if self.api_quotas:
            out["api_quotas"] = {n: q.to_json() for n, q in self.api_quotas.items()}
        if self.user_choice:
            out["quota_user_choice"] = True
        return out


def parse_quota(value: Any, name: str) -> Quota:
    """``{"calls": n, "per": period}``; raise :class:`QuotaError` naming ``name``."""
    if not isinstance(value, dict) or set(value) != {"calls", "per"}:
        raise QuotaError(f'{name}: expected {{"calls": <number>, "per": "day"}}')
    calls, per = value["calls"], value["per"]
    if isinstance(calls, bool) or not isinstance(calls, int) or not 1 <= calls <= MAX_CALLS:
        raise QuotaError(f"{name}.calls: expected a whole number from 1 to {MAX_CALLS}")
    if per not in PERIODS:
        raise QuotaError(f"{name}.per: one of {', '.join(PERIODS)}")
    return Quota(calls, per)


def parse_policy(entry: dict[str, Any]) -> QuotaPolicy | None:
    """The quota fields of a client entry (None: it has none); raise :class:`QuotaError`."""
    raw = entry.get("quota")
    quota = None if raw is None else parse_quota(raw, "quota")
    raw_api = entry.get("api_quotas")
    raw_api = {} if raw_api is None else raw_api
    if not isinstance(raw_api, dict):
        raise QuotaError('api_quotas: expected {"<function>": {"calls": ..., "per": ...}}')
    api_quotas = {}
    for name, value in raw_api.items():
        if not API_NAME.fullmatch(name):
            raise QuotaError(f"api_quotas: {name!r} is not an /api function name")
        api_quotas[name] = parse_quota(value, f"api_quotas.{name}")
    choice = entry.get("quota_user_choice")
    choice = False if choice is None else choice
    if not isinstance(choice, bool):
        raise QuotaError("quota_user_choice: must be true or false")
    if choice and quota is None:
        raise QuotaError("quota_user_choice: needs a quota for the user to lower")
    if quota is None and not api_quotas:
        return None
    return QuotaPolicy(quota, api_quotas, choice)
