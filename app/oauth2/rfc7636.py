"""Proof Key for Code Exchange (RFC 7636), https://www.rfc-editor.org/rfc/rfc7636

Policy on top of Authlib's extension: PKCE is required of public clients (and of
every client with ``auth_server.require_pkce``), ``plain`` only when allowed, and
any mismatch between the code's challenge and the verifier is ``invalid_grant``.
"""

from __future__ import annotations

from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc7636 import CodeChallenge


class PKCEPolicy(CodeChallenge):
    """Authlib's ``CodeChallenge`` with this server's requirements."""

    def __init__(self, require_all: bool = False, allow_plain: bool = False) -> None:
        super().__init__(required=True)
        self.require_all = require_all
        self.SUPPORTED_CODE_CHALLENGE_METHOD = ["S256", "plain"] if allow_plain else ["S256"]
        # RFC 7636 §4.3: a missing method means "plain"; refuse it when plain is off.
        self.DEFAULT_CODE_CHALLENGE_METHOD = "plain"

    @property
    def methods(self) -> list[str]:
        return list(self.SUPPORTED_CODE_CHALLENGE_METHOD)

    def validate_code_challenge(self, grant, redirect_uri):
        data = grant.request.payload.data
        challenge = data.get("code_challenge")
        if not challenge and (self.require_all or grant.request.client.public):
            raise InvalidRequestError("PKCE is required: send 'code_challenge' (S256).")
        if (
            challenge
            and not data.get("code_challenge_method")
            and ("plain" not in self.SUPPORTED_CODE_CHALLENGE_METHOD)
        ):
            raise InvalidRequestError("Unsupported 'code_challenge_method': use S256.")
        return super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant, result):
        try:
            return super().validate_code_verifier(grant, result)
        except InvalidRequestError as exc:
            # The code and the verifier disagree: the grant, not the request, is bad.
            raise InvalidGrantError(description=exc.description) from exc
