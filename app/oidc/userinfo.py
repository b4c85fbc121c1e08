"""The UserInfo Endpoint (OpenID Connect Core §5.3), over our bearer tokens.

https://openid.net/specs/openid-connect-core-1_0.html#UserInfo

A thin resource: the token is checked as ``/api`` checks it (RFC 6750), its scope must
hold ``openid``, and the claims are the adapter's, released by scope (§5.4) with the
``sub`` this token's client sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc6749.util import scope_to_list
from authlib.oidc.core import UserInfo

from ..oauth2 import rfc6750, rfc9449
from ..oauth2.accept import find_access, find_bearer

REALM = "userinfo"


@dataclass
class Refusal(Exception):
    """A refused UserInfo request: status, RFC 6750 error code (None: no token sent)."""

    status: int
    error: str | None
    description: str
    #: A DPoP request's challenge (RFC 9449 §7.1), instead of the bearer one.
    challenge: str | None = None

    def www_authenticate(self) -> str:
        if self.challenge:
            return self.challenge
        value = f'Bearer realm="{REALM}"'
        if self.error:
            value += f', error="{self.error}"'
        if self.error == "insufficient_scope":
            value += ', scope="openid"'
        return value


def presented_token(headers, method: str, form, dpop: bool = False) -> str | None:
    """The bearer token of the request: the header (§2.1), or a POST body's (§2.2);
    ``dpop``: the header's ``DPoP`` token (RFC 9449 §7.1) instead."""
    header = headers.get("Authorization", "")
    in_body = form.getlist("access_token") if method == "POST" else []
    if header and in_body or len(in_body) > 1:
        raise Refusal(400, "invalid_request", "Send the access token one way, once.")
    if in_body:
        return in_body[0] or None
    if not header:
        raise Refusal(401, None, "Send an access token: Authorization: Bearer <token>.")
    token = rfc9449.dpop_token(header) if dpop else rfc6750.bearer_token(header)
    if token is None:
        raise Refusal(401, "invalid_token", "The Authorization header is not a bearer token.")
    return token


def user_info(server, users, adapter, raw_token: str | None, proof=None) -> dict[str, Any]:
    """The claims this token may read; raise :class:`Refusal` for a token that may not.

    ``proof``: ``(DPoP header values, method, path)`` of an ``Authorization: DPoP``
    request (RFC 9449 §7), checked against the token's key.
    Raises ``UpstreamUnavailable`` when the adapter cannot reach the site."""
    if proof is not None:
        token = _dpop_token(server, raw_token or "", proof)
    else:
        token = find_bearer(server, raw_token)
    rfc6750.note(token is not None)
    if token is None or token.is_expired():
        raise Refusal(401, "invalid_token", "The access token is invalid, expired or revoked.")
    scope = token.scope
    if "openid" not in (scope_to_list(scope) or []):
        raise Refusal(403, "insufficient_scope", "The token's scope does not hold openid.")
    user = users.get(token.user_id)
    if user is None:
        raise Refusal(401, "invalid_token", "The access token acts for no user.")
    claims = adapter.claims(user.id, user.site_token, user.claims)
    client = server.clients.get(token.client_id)
    released = UserInfo(claims).filter(scope)
    released["sub"] = server.id_tokens.subject(client, user.id)
    return dict(released)


def dpop_request(server, headers, method: str, path: str):
    """``(DPoP header values, method, path)`` when the request uses the DPoP scheme and
    DPoP is on (the ``proof`` of :func:`user_info`), else ``None``."""
    if server.dpop is None or not rfc9449.dpop_token(headers.get("Authorization", "")):
        return None
    return headers.getlist("DPoP"), method, path


def _dpop_token(server, raw: str, proof):
    dpop = server.dpop
    try:
        token = dpop.accept(raw, *proof, lambda value: find_access(server, value))
    except rfc9449.DPoPError as refusal:
        rfc6750.note(False)
        challenge = dpop.challenge(refusal.error, refusal.description)
        raise Refusal(401, refusal.error, refusal.description, challenge) from None
    if token is None:
        rfc6750.note(False)
        description = "The access token is invalid, expired, revoked or not bound to this key."
        raise Refusal(401, "invalid_token", description, dpop.challenge("invalid_token"))
    return token
