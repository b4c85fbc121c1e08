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

from ..oauth2 import rfc6750
from ..oauth2.accept import find_access

REALM = "userinfo"


@dataclass
class Refusal(Exception):
    """A refused UserInfo request: status, RFC 6750 error code (None: no token sent)."""

    status: int
    error: str | None
    description: str

    def www_authenticate(self) -> str:
        value = f'Bearer realm="{REALM}"'
        if self.error:
            value += f', error="{self.error}"'
        if self.error == "insufficient_scope":
            value += ', scope="openid"'
        return value


def presented_token(headers, method: str, form) -> str | None:
    """The bearer token of the request: the header (§2.1), or a POST body's (§2.2)."""
    header = headers.get("Authorization", "")
    in_body = form.getlist("access_token") if method == "POST" else []
    if header and in_body or len(in_body) > 1:
        raise Refusal(400, "invalid_request", "Send the access token one way, once.")
    if in_body:
        return in_body[0] or None
    if not header:
        raise Refusal(401, None, "Send an access token: Authorization: Bearer <token>.")
    token = rfc6750.bearer_token(header)
    if token is None:
        raise Refusal(401, "invalid_token", "The Authorization header is not a bearer token.")
    return token


def user_info(server, users, adapter, raw_token: str | None) -> dict[str, Any]:
    """The claims this token may read; raise :class:`Refusal` for a token that may not.

    Raises ``UpstreamUnavailable`` when the adapter cannot reach the site."""
    token = find_access(server, raw_token) if raw_token else None
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
