"""OAuth 2.0 Token Introspection (RFC 7662), https://www.rfc-editor.org/rfc/rfc7662"""

from __future__ import annotations

from authlib.oauth2.rfc7662 import IntrospectionEndpoint as _IntrospectionEndpoint

from ..quotas.web import introspection_member
from .rfc7009 import TokenRequest


class IntrospectionEndpoint(TokenRequest, _IntrospectionEndpoint):
    """A client may introspect only the tokens issued to it; others read as inactive."""

    def check_permission(self, token, client, request) -> bool:
        return token.client_id == client.get_client_id()

    def introspect_token(self, token) -> dict:
        record = token.record
        payload = {
            "active": True,
            "scope": token.scope,
            "client_id": token.client_id,
            "token_type": "Bearer" if token.kind == "access_token" else "refresh_token",
            "exp": token.get_expires_at() or None,
            "iat": record.get("issued_at"),
            "iss": self.server.issuer,
        }
        jkt = record.get("jkt")
        if jkt:
            # RFC 9449 §6.2: a DPoP-bound token names its key's thumbprint.
            payload["cnf"] = {"jkt": jkt}
            if token.kind == "access_token":
                payload["token_type"] = "DPoP"  # noqa: S105 - a token type
        if token.user_id:
            # The ``sub`` its client sees everywhere (ID Token, UserInfo): pairwise or not.
            client = self.server.clients.get(token.client_id)
            payload["sub"] = self.server.id_tokens.subject(client, token.user_id)
            payload["username"] = record.get("user_name")
            payload.update(introspection_member(client, record))
        return {k: v for k, v in payload.items() if v is not None}
