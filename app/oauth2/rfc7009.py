"""OAuth 2.0 Token Revocation (RFC 7009), https://www.rfc-editor.org/rfc/rfc7009"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc6749.errors import InvalidRequestError, UnsupportedTokenTypeError
from authlib.oauth2.rfc7009 import RevocationEndpoint as _RevocationEndpoint

from ..audit import audit
from .accept import find_either
from .client_auth import METHODS


def check_token_params(request, supported) -> None:
    """``token`` is required; an unknown hint is RFC 6749 §5.2's 400, not Authlib's 401."""
    if "token" not in request.form:
        raise InvalidRequestError("Missing 'token'.")
    hint = request.form.get("token_type_hint")
    if hint and hint not in supported:
        error = UnsupportedTokenTypeError()
        error.status_code = 400
        raise error


class TokenRequest:
    """What revocation and introspection (RFC 7662 §2.1 takes this RFC's request) share:
    our client authentication, the ``token`` and hint checks, finding either token."""

    CLIENT_AUTH_METHODS = list(METHODS)
    SUPPORTED_TOKEN_TYPES: tuple[str, ...]
    server: Any

    def check_params(self, request, client) -> None:
        check_token_params(request, self.SUPPORTED_TOKEN_TYPES)

    def query_token(self, token_string: str, token_type_hint: str | None):
        return find_either(self.server, token_string, token_type_hint)


class RevocationEndpoint(TokenRequest, _RevocationEndpoint):
    """Revoking either token of a pair ends both; unknown tokens still answer 200."""

    def authenticate_token(self, request, client):
        token = super().authenticate_token(request, client)
        if token is None:  # maybe a retry whose first try ended it: announce it again
            self.server.grants.revoke_unknown(request.form["token"])
        return token

    def revoke_token(self, token, request) -> None:
        self.server.grants.revoke_token(token)
        audit("token_revoked", client_id=token.client_id, user_id=token.user_id, kind=token.kind)
