"""Abuse limits: Flask-Limiter per client, IP, username and token, plus login lockout.

Counters live in Redis when any table is on Redis (every worker and machine then
shares them), else in process memory. A failed login also grows a per-username
lockout kept in the ``session`` table, so guessing slows down everywhere at once.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

from authlib.oauth2.rfc6749.util import extract_basic_authorization
from flask import Flask, current_app, request
from flask_limiter import Limiter, RequestLimit

from .audit import audit
from .storage import Table

limiter = Limiter(key_func=lambda: request.remote_addr or "unknown")

LOCK = "lock:"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _limit(name: str):
    return lambda: current_app.extensions["oauth2"].settings.data["limits"][name]


def client_key() -> str:
    """The client a token request names; counted only once it has authenticated."""
    client_id, _ = extract_basic_authorization(request.headers)
    if not client_id:
        body = request.get_json(silent=True) if request.is_json else request.form
        client_id = body.get("client_id") if isinstance(body, dict) else None
    return f"client:{client_id}" if client_id else f"ip:{request.remote_addr}"


def _authenticated(response) -> bool:
    # A claimed client id proves nothing until the client authenticated: failures count
    # against the caller's IP only, so nobody can spend another client's budget.
    return response.status_code != 401


def username_key() -> str:
    return "user:" + _digest(request.form.get("username", "").strip().lower())


def token_key() -> str:
    kind, _, value = request.headers.get("Authorization", "").partition(" ")
    return "token:" + _digest(value) if value else f"ip:{request.remote_addr}"


token_limit = limiter.limit(_limit("token"), key_func=client_key, deduct_when=_authenticated)
token_ip_limit = limiter.limit(_limit("token_ip"))
login_ip_limit = limiter.limit(_limit("login_ip"), methods=["POST"])
login_user_limit = limiter.limit(_limit("login_user"), key_func=username_key, methods=["POST"])
api_limit = limiter.limit(_limit("api"), key_func=token_key)


def _on_breach(limit: RequestLimit) -> None:
    audit("rate_limited", path=request.path, limit=str(limit.limit))


def retry_after() -> str:
    """Seconds until the limit that was just hit lets the caller in again."""
    current = limiter.current_limit
    if current is None:
        return "60"
    return str(max(1, int(current.reset_at - time.time())))


def storage_uri(settings: Any) -> str:
    """The configured limiter storage, else the first Redis table's server, else memory."""
    configured = settings.data["limits"].get("storage")
    if configured:
        return configured
    for spec in settings.storage_specs.values():
        if spec.scheme in ("redis", "rediss"):
            return spec.url
    return "memory://"


def flask_config(settings: Any) -> dict[str, Any]:
    limits = settings.data["limits"]
    return {
        "RATELIMIT_ENABLED": limits["enabled"],
        "RATELIMIT_STORAGE_URI": storage_uri(settings),
        # One counter per key and window: a third of moving-window's cost per request
        # (bench/README.md), at the price of bursts of up to twice a limit across a window's end.
        "RATELIMIT_STRATEGY": "fixed-window",
        # Only a 429 says when to come back (see retry_after); other answers stay clean.
        "RATELIMIT_HEADERS_ENABLED": False,
        "RATELIMIT_KEY_PREFIX": "oauth2-limits",
        # When the limiter's store is down, requests are not failed for it: they fall back
        "RATELIMIT_SWALLOW_ERRORS": True,
        # ...to per-process counters, so limits still hold while Redis is away.
        "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
        "RATELIMIT_ON_BREACH_CALLBACK": _on_breach,
    }


def init_app(app: Flask) -> None:
    limiter.init_app(app)


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
        self.table.delete(LOCK + _digest(username.strip().lower()))
