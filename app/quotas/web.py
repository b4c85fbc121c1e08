"""Quotas at ``/api``: which budgets a call spends, its ``RateLimit`` fields, the 429.

Fields as the limits use them (draft-ietf-httpapi-ratelimit-headers):
``RateLimit-Policy: "quota";q=10000;w=86400`` and ``RateLimit: "quota";r=9880;t=3600``,
one item per enforced quota: ``"quota"`` (the client's), ``"quota:<function>"`` (the
client's for that function), ``"quota:user"`` (the user's own, lower one).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flask import Response, current_app

from ..audit import audit
from .counting import Budget, Quotas, Spent, Usage
from .policy import Quota

#: The gateway's answers when the site did not answer (or failed): the call is given back.
NOT_ANSWERED = (502, 504)


def quotas() -> Quotas:
    return current_app.extensions["oauth2"].quotas


def user_quota(record: dict[str, Any]) -> Quota | None:
    """The lower quota the user chose for this grant (kept on its token records)."""
    chosen = record.get("user_quota")
    return Quota(int(chosen["calls"]), str(chosen["per"])) if chosen else None


def user_budget(client: Any, user_id: str, chosen: Quota | None) -> Budget | None:
    """The user's count with this client: enforced at the user's own quota, else kept
    (at the client's quota) only to show on ``/review``."""
    policy = client.quotas
    quota = chosen or (policy.quota if policy else None)
    if quota is None:
        return None
    return Budget("quota:user", f"user/{client.client_id}/{user_id}", quota, chosen is not None)


def budgets(client: Any, record: dict[str, Any], function: str | None) -> list[Budget]:
    """Every budget a call of ``function`` with the token ``record`` spends."""
    if client is None:
        return []
    policy, client_id, found = client.quotas, client.client_id, []
    if policy is not None and policy.quota is not None:
        found.append(Budget("quota", f"client/{client_id}", policy.quota))
    if policy is not None and function in policy.api_quotas:
        quota = policy.api_quotas[function]
        found.append(Budget(f"quota:{function}", f"api/{client_id}/{function}", quota))
    user_id = record.get("user_id")
    user = user_budget(client, user_id, user_quota(record)) if user_id else None
    return [*found, user] if user else found


def fields(spent: list[Spent]) -> list[tuple[str, str]]:
    """The ``RateLimit-Policy`` and ``RateLimit`` fields of the enforced budgets."""
    shown = [s for s in spent if s.budget.enforced]
    if not shown:
        return []
    policies, left = [], []
    for item in shown:
        quota, name = item.budget.quota, item.budget.name
        start, end = quota.window(quotas().clock())
        policies.append(f'"{name}";q={quota.calls};w={end - start}')
        left.append(f'"{name}";r={max(0, quota.calls - item.used)};t={item.reset}')
    return [("RateLimit-Policy", ", ".join(policies)), ("RateLimit", ", ".join(left))]


def spend(client: Any, record: dict[str, Any], function: str, call: Callable[[], Response]):
    """Reserve the call in every budget, then make it; a spent budget answers 429."""
    found = budgets(client, record, function)
    if not found:
        return call()
    spent, refused = quotas().reserve(found)
    if refused is not None:
        return _refusal(client, refused)
    response = call()
    if response.status_code in NOT_ANSWERED:
        quotas().refund(spent)
        return response
    response.headers.extend(fields(spent))
    return response


def _refusal(client: Any, refused: Spent) -> Response:
    budget = refused.budget
    if quotas().first_refusal(refused):  # one audit record per budget and window
        audit(
            "quota_spent",
            client_id=client.client_id,
            quota=budget.name,
            limit=f"{budget.quota.calls}/{budget.quota.per}",
        )
    body = {
        "success": 0,
        "error": "quota exceeded",
        "error_description": f"{budget.quota.calls} calls a {budget.quota.per} "
        f"({budget.name}); try again in {refused.reset} s.",
    }
    response = Response(json.dumps(body), status=429, content_type="application/json")
    response.headers["Retry-After"] = str(refused.reset)
    response.headers["Cache-Control"] = "no-store"
    response.headers.extend(fields([refused]))
    return response


def binding_usage(client: Any, record: dict[str, Any]) -> Usage | None:
    """Of the quotas every call of this grant spends (the client's, the user's own),
    the one with the fewest calls left; None when neither applies."""
    found = [b for b in budgets(client, record, None) if b.enforced]
    if not found:
        return None
    usages = [quotas().usage(b) for b in found]
    return min(usages, key=lambda u: u.limit - u.used)


def introspection_member(client: Any, record: dict[str, Any]) -> dict[str, Any]:
    """RFC 7662 §2.2 extension member ``quota``: ``limit``, ``used``, ``remaining``,
    ``per`` and ``reset`` (when the window ends, a NumericDate like ``exp``)."""
    if client is None or not record.get("user_id"):
        return {}
    usage = binding_usage(client, record)
    if usage is None:
        return {}
    member = {"limit": usage.limit, "used": usage.used, "remaining": usage.limit - usage.used}
    return {"quota": member | {"per": usage.per, "reset": usage.reset}}
