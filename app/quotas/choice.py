"""The user's own, lower quota: chosen on the consent page, kept with the grant.

When the operator allows it (``quota_user_choice``), the consent page has a field for
the most calls the client may make for this user per the client's period. The choice
goes onto the grant's code and tokens (``user_quota``), so every token of that grant
carries it, refreshes included; the count is the user's with that client (all their
grants together). It is also remembered per user and client, beside the remembered
consent, so a grant issued without the page (remembered consent) keeps it, and the
page shows it the next time.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from flask import g, has_request_context

from .. import context
from .policy import PERIODS, Quota
from .web import quotas, user_budget, user_quota

#: The form field of the consent page.
FIELD = "quota"
#: "10,000 calls a day".
PER_WORDS = {"minute": "a minute", "hour": "an hour", "day": "a day", "month": "a month"}
_CHOICE = "quota-choice:"


class QuotaChoiceError(ValueError):
    """The number the user typed is not a quota they may choose; the message says why."""


def calls(count: int) -> str:
    """``1 call``, ``10,000 calls``."""
    return f"{count:,} call" + ("" if count == 1 else "s")


def calls_text(quota: Quota) -> str:
    return f"{calls(quota.calls)} {PER_WORDS[quota.per]}"


def _key(user_id: str, client_id: str) -> str:
    return _CHOICE + hashlib.sha256(json.dumps([user_id, client_id]).encode()).hexdigest()


def offered(client: Any) -> Quota | None:
    """The client's quota when the user may choose a lower one, else None."""
    policy = client.quotas
    return policy.quota if policy is not None and policy.user_choice else None


def dialog_field(state: Any, client: Any, user_id: str) -> dict[str, Any] | None:
    """What the consent page's field shows: the most allowed and the remembered choice."""
    quota = offered(client)
    if quota is None:
        return None
    kept = _remembered(state, user_id, client.client_id)
    value = kept.calls if kept is not None and kept.per == quota.per else None
    return {
        "max": quota.calls,
        "per": PER_WORDS[quota.per],
        "text": calls_text(quota),
        "value": value,
    }


def read(client: Any, form: Any) -> Quota | None:
    """The quota the user chose (None: the client's own); raise :class:`QuotaChoiceError`."""
    quota = offered(client)
    raw = (form.get(FIELD) or "").strip()
    if quota is None or not raw:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 13 or not 1 <= int(raw) <= quota.calls:
        raise QuotaChoiceError(f"Choose a whole number of calls from 1 to {quota.calls:,}.")
    return Quota(int(raw), quota.per)


def keep(state: Any, client: Any, user_id: str, chosen: Quota | None) -> None:
    """Use ``chosen`` for the grant this request issues, and remember it."""
    if offered(client) is None:
        return
    g.quota_choice = chosen
    table, key = state.storage.consents, _key(user_id, client.client_id)
    if chosen is None:
        table.delete(key)
    else:
        lifetime = state.settings.oidc.consent_lifetime
        table.put(key, {"user_quota": chosen.to_json()}, ttl=lifetime or 0)


def recall(state: Any, client: Any, user_id: str) -> None:
    """A grant issued without the page (remembered consent) keeps the user's choice."""
    if offered(client) is not None:
        g.quota_choice = _remembered(state, user_id, client.client_id)


def _remembered(state: Any, user_id: str, client_id: str) -> Quota | None:
    record = state.storage.consents.get(_key(user_id, client_id))
    return user_quota(record) if record else None


def grant_fields(source: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``user_quota`` a code or token record carries: its source's (the code or
    refresh token it came from), else this request's choice."""
    if source is not None:
        return {"user_quota": source["user_quota"]} if source.get("user_quota") else {}
    chosen = context.g().get("quota_choice") if has_request_context() else None
    return {"user_quota": chosen.to_json()} if chosen is not None else {}


def review_line(client: Any, user_id: str, grants: list[dict[str, Any]]) -> str | None:
    """``Used 120 of 1,000 calls today`` for the review page (None: no quota applies)."""
    if client is None:
        return None
    chosen = [q for q in (user_quota(r) for r in grants) if q is not None]
    own = min(chosen, key=lambda q: q.calls) if chosen else None
    budget = user_budget(client, user_id, own)
    if budget is None:
        return None
    usage = quotas().usage(budget)
    when = PERIODS[usage.per]
    if own is not None:
        return f"Used {usage.used:,} of {calls(usage.limit)} {when} (your limit)"
    return f"Used {calls(usage.used)} {when}; the site allows it {calls_text(budget.quota)} in all"
