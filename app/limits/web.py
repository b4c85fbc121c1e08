"""The limits at the endpoints: keys, decorators, ``Retry-After`` and ``RateLimit`` fields.

Success budgets are counted per proven identity (an authenticated client, a good
bearer token) after the view answered; per-IP budgets count only what proves nothing
(requests no client authenticated in, bad bearer tokens), so a busy partner spends
only its own budget. Failed client authentication also grows :mod:`.delays` per
claimed client id and per IP. Responses under a budget carry the IETF fields
(draft-ietf-httpapi-ratelimit-headers): ``RateLimit-Policy: "token";q=...;w=...``
and ``RateLimit: "token";r=...;t=...``; a 429 always carries ``Retry-After``.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from authlib.oauth2.rfc6749.errors import OAuth2Error
from flask import Response, request
from limits import RateLimitItem, parse
from werkzeug.exceptions import TooManyRequests

from .. import context
from ..addresses import parse_ip
from ..audit import audit
from ..oauth2 import client_auth, rfc6750, rfc9449
from ..oauth2.requests import json_body
from ..oauth2.server import body_params
from .config import Limits
from .counters import Refusal, digest
from .delays import Delays

Headers = list[tuple[str, str]]


class Limited(TooManyRequests):
    """A 429 with ``Retry-After`` and the budget's ``RateLimit`` fields."""

    def __init__(self, retry: int, fields: Headers) -> None:
        super().__init__(f"Too many requests; try again in {retry} s.", retry_after=retry)
        self.fields = fields

    def get_headers(self, environ=None, scope=None):  # type: ignore[no-untyped-def]
        return [*super().get_headers(environ, scope), *self.fields]


def _limits() -> Limits:
    limits: Limits = context.state().limits
    return limits


def _clients() -> Any:
    return context.state().clients


def ip_group() -> str:
    """The caller's address; IPv6 by /64 (one host usually holds the whole /64)."""
    return group_of(context.request().remote_addr)


def group_of(address: str | None) -> str:
    """:func:`ip_group` of the address ``address``."""
    # An address is short; anything longer is not one, and is not worth remembering.
    return _group(address) if address and len(address) <= 64 else _group.__wrapped__(address)


@functools.lru_cache(maxsize=4096)
def _group(address: str | None) -> str:
    ip = parse_ip(address)
    if ip is None:
        return address or "unknown"
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)


@functools.lru_cache(maxsize=256)
def _rate(text: str) -> RateLimitItem:
    return parse(text)


def _fields(name: str, rate: RateLimitItem, left: int, reset: int) -> Headers:
    return [
        ("RateLimit-Policy", f'"{name}";q={rate.amount};w={rate.get_expiry()}'),
        ("RateLimit", f'"{name}";r={left};t={reset}'),
    ]


def fields(name: str, key: str, rate: RateLimitItem | None = None) -> Headers:
    """The ``RateLimit-Policy`` and ``RateLimit`` fields of one budget."""
    rates = _limits().rates
    rate = rate or rates.rates[name]
    return _fields(name, rate, *rates.remaining(name, key, rate))


def delay_fields(delays: Delays, wait: int) -> Headers:
    """The ``RateLimit`` fields of a shut gate: its free failures are spent for ``wait`` s."""
    return [
        ("RateLimit-Policy", f'"{delays.name}";q={delays.free}'),
        ("RateLimit", f'"{delays.name}";r=0;t={wait}'),
    ]


def _check(refusal: Refusal | None, name: str, key: str, rate: RateLimitItem | None = None):
    if refusal is None:
        return
    if refusal.first:  # one audit record per key and window: a flood writes no more
        shown = rate or _limits().rates.rates[name]
        audit("rate_limited", path=request.path, limit=f"{name} {shown}")
    raise Limited(refusal.retry, fields(name, key, rate))


def _hit(
    limits: Limits, response: Response, name: str, key: str, rate: RateLimitItem | None = None
) -> None:
    """Count an answered request against a budget; its fields go on the response."""
    _add(response, counted(limits, name, key, rate))


def _add(response: Response, fields: Headers) -> None:
    headers = response.headers
    for field, value in fields:
        headers.add(field, value)


def counted(limits: Limits, name: str, key: str, rate: RateLimitItem | None = None) -> Headers:
    """Count an answered request against a budget; its fields."""
    rate = rate or limits.rates.rates[name]
    left, reset = limits.rates.count(name, key, rate)
    return _fields(name, rate, left, reset)


# -- /token, /revoke, /introspect ----------------------------------------------------------
def _client_budget(client: Any, ip: str) -> tuple[str, RateLimitItem | None]:
    """A client's budget key and its own rate; a public client's id anyone may send,
    so its budget is per caller's address."""
    client_id = client.get_client_id()
    key = f"client:{client_id}@{ip}" if client.public else f"client:{client_id}"
    return key, _rate(client.rate_limit) if client.rate_limit else None


def _claimed_body() -> dict[str, Any] | None:
    req = context.request()
    if req.is_json:
        body = json_body(req)
        return body if isinstance(body, dict) else None
    try:  # the view's own reading of the body (read once per request)
        return {key: values[0] for key, values in body_params().items() if values}
    except OAuth2Error:  # refused by the view later; still counted against the id it names
        req.get_data(cache=True)
        return req.form


def before_token(limits: Limits, scope: str, ip: str) -> str | None:
    """Refuse what a budget or a failure delay stops; return the claimed client id if
    it has failures counted (a success then clears them), else ``None``."""
    _check(limits.rates.spent("token_ip", scope + ip), "token_ip", scope + ip)
    # The body is parsed only when the Basic header names no client.
    claimed = client_auth.claimed_client_id(None) or client_auth.claimed_client_id(_claimed_body())
    client = _clients().get(claimed)
    wait, delays, failing = limits.client_ip.wait(ip), limits.client_ip, None
    if claimed and _guarded(client):
        by_id = limits.client_id.check(claimed)
        failing = None if by_id.clean else claimed
        if by_id.wait > wait:
            wait, delays = by_id.wait, limits.client_id
    if wait:
        raise Limited(wait, delay_fields(delays, wait))
    if client is not None:
        key, rate = _client_budget(client, ip)
        _check(limits.rates.spent("token", scope + key, rate), "token", scope + key, rate)
    return failing


def _guarded(client: Any) -> bool:
    """Whether failures delay a claimed id (of ``client``, ``None`` if unknown): a
    secret's, not a public client's.

    A public client has no secret to guess, and anyone may send its id: counting
    strangers' failures against it would only let them lock its users out.
    """
    return client is None or not client.public


def _after_token(
    limits: Limits, scope: str, ip: str, failing: str | None, response: Response
) -> None:
    _add(response, after_token(limits, scope, ip, failing))


def after_token(limits: Limits, scope: str, ip: str, failing: str | None) -> Headers:
    """Count an answered token-style request (:func:`before_token` let it through, its
    ``failing``) against its budget and its failures; the budget's ``RateLimit`` fields."""
    outcome = client_auth.outcome()
    if outcome is not None and outcome.client is not None:
        key, rate = _client_budget(outcome.client, ip)
        fields = counted(limits, "token", scope + key, rate)
        if failing is not None and outcome.claimed == failing:
            limits.client_id.succeeded(failing)  # its failures are forgiven
        return fields
    fields = counted(limits, "token_ip", scope + ip)
    if outcome is not None:  # client authentication failed
        claimed = outcome.claimed
        guarded = bool(claimed) and _guarded(_clients().get(claimed))
        delay = max(
            limits.client_ip.failed(ip),
            limits.client_id.failed(claimed) if guarded and claimed else 0,
        )
        if delay:
            audit("client_lockout", seconds=delay)
    return fields


def token_limits(view):
    """Budgets and failure delays of a token-style endpoint (each has its own budgets)."""
    scope = view.__name__ + ":"

    @functools.wraps(view)
    def limited_view(*args: Any, **kwargs: Any):
        limits = _limits()
        if not limits.enabled:
            return view(*args, **kwargs)
        ip = ip_group()
        failing = before_token(limits, scope, ip)
        response = context.app().make_response(view(*args, **kwargs))
        _after_token(limits, scope, ip, failing, response)
        return response

    return limited_view


# -- /api/* --------------------------------------------------------------------------------
#: The WSGI environ key where the gateway's fast path (:mod:`app.gateway`) leaves the
#: refusal it met, ``(name, key, refusal)``, when it hands the call on: asking again
#: would lose the refusal's ``first`` (its one audit record a window).
REFUSED = "oauth2.limits.refused"


def _spent(limits: Limits, name: str, key: str) -> Refusal | None:
    """``limits.rates.spent`` of ``key``, or the refusal the fast path met for it."""
    environ = context.request().environ
    met = environ.get(REFUSED)
    if met is not None and met[0] == name and met[1] == key:
        del environ[REFUSED]
        return met[2]
    return limits.rates.spent(name, key)


def api_limit(view):
    """A good token (``Bearer``, or ``DPoP`` with its proof) spends its own budget; bad
    ones spend their caller's IP's."""

    @functools.wraps(view)
    def limited_view(*args: Any, **kwargs: Any):
        limits = _limits()
        if not limits.enabled:
            return view(*args, **kwargs)
        ip = "api:" + ip_group()
        _check(_spent(limits, "api_ip", ip), "api_ip", ip)
        header = context.request().headers.get("Authorization", "")
        raw = rfc6750.bearer_token(header) or rfc9449.dpop_token(header)
        key = "token:" + digest(raw) if raw else None
        if key is not None:
            _check(_spent(limits, "api", key), "api", key)
        response = context.app().make_response(view(*args, **kwargs))
        if key is not None and rfc6750.verified():
            _hit(limits, response, "api", key)
        else:
            _hit(limits, response, "api_ip", ip)
        return response

    return limited_view


# -- /login --------------------------------------------------------------------------------
def login_limits(view):
    """Sign-in attempts per IP and per username (the lockout itself is :mod:`.delays`)."""

    @functools.wraps(view)
    def limited_view(*args: Any, **kwargs: Any):
        limits = _limits()
        if limits.enabled and request.method == "POST":
            username = request.form.get("username", "").strip().lower()
            for name, key in (("login_ip", ip_group()), ("login_user", "user:" + digest(username))):
                _check(limits.rates.hit(name, key), name, key)
        return view(*args, **kwargs)

    return limited_view
