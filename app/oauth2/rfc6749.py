"""The OAuth 2.0 Authorization Framework (RFC 6749), https://www.rfc-editor.org/rfc/rfc6749

Each grant holds only the storage and user hooks; the protocol is Authlib's.
Single use is enforced at the moment of issuing: the code or refresh token is
taken and the tokens it buys are written in one storage ``exchange``, so two
concurrent redemptions cannot both win and a crash cannot burn a code for nothing.
The ``token_issued`` / ``token_refreshed`` audit entry goes in the same exchange (one
round trip and one commit, not one more after it), so only the winner records one.
"""

from __future__ import annotations

import hmac
from typing import Any

from authlib.oauth2.rfc6749 import grants, list_to_scope, scope_to_list
from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidGrantError, InvalidScopeError
from authlib.oauth2.rfc6749.hooks import hooked
from authlib.oauth2.rfc7636.challenge import CODE_VERIFIER_PATTERN, create_s256_code_challenge
from authlib.oidc.core.grants.util import is_openid_scope

from ..audit import audit, audit_record, audited
from ..clients import SERVER_SCOPES
from ..oidc.signin import remember_relying_party, sign_in_facts
from ..quotas.choice import grant_fields
from ..secrets_hash import new_secret
from .accept import find_refresh
from .client_auth import METHODS, SECRET_METHODS
from .grant_store import new_grant_id
from .lifetimes import ShorterLifetime
from .server import refresh_lifetime

#: The random bytes of an authorization code: 48 URL-safe characters.
CODE_BYTES = 36


def may_revoke(tombstone: dict[str, Any], client, request) -> bool:
    """Decide whether presenting a used code or rotated refresh token may revoke its grant.

    The one place for that decision (RFC 9700 §4.14.2, RFC 6749 §4.1.2): only the
    client that owns it, authenticated (Authlib authenticates the client before
    the grant looks the credential up), and with the right PKCE verifier when the
    code had a challenge. Anyone else only gets ``invalid_grant``.
    """
    if tombstone.get("client") != client.get_client_id():
        return False
    challenge = tombstone.get("code_challenge")
    return not challenge or _verifier_matches(
        request.form.get("code_verifier"), challenge, tombstone.get("code_challenge_method")
    )


def _verifier_matches(verifier: str | None, challenge: str, method: str | None) -> bool:
    if not verifier or not CODE_VERIFIER_PATTERN.match(verifier):
        return False
    expected = create_s256_code_challenge(verifier) if method == "S256" else verifier
    return hmac.compare_digest(expected.encode(), challenge.encode())


class AuthorizationCodeGrant(ShorterLifetime, grants.AuthorizationCodeGrant):
    """Authorization code (§4.1), with PKCE registered as an extension."""

    TOKEN_ENDPOINT_AUTH_METHODS = list(METHODS)

    def generate_authorization_code(self) -> str:
        """A code of 48 characters, as Authlib's, with 288 bits from one ``os.urandom``
        (Authlib's ``generate_token`` asks the system for randomness once a character)."""
        return new_secret(CODE_BYTES)

    def save_authorization_code(self, code: str, request) -> None:
        """Store the code with what its ID Token needs: the sign-in and the ``nonce``."""
        payload = request.payload.data
        client_id = request.client.get_client_id()
        record = {
            "client_id": client_id,
            "user_id": request.user.get_user_id(),
            "grant_id": new_grant_id(),
            "redirect_uri": payload.get("redirect_uri"),
            "scope": request.scope,
            "code_challenge": payload.get("code_challenge"),
            "code_challenge_method": payload.get("code_challenge_method"),
            **sign_in_facts(),
            **grant_fields(),
        }
        if payload.get("dpop_jkt") is not None:
            # RFC 9449 §10: the token request's proof must be of this key.
            record["dpop_jkt"] = payload["dpop_jkt"]
        if is_openid_scope(request.scope):
            record["nonce"] = payload.get("nonce")
            remember_relying_party(client_id)
        self.server.grants.save_code(code, record)
        audit("code_issued", client_id=client_id, user_id=request.user.get_user_id())

    def query_authorization_code(self, code: str, client):
        found = self.server.grants.find_code(code)
        if found is not None and found.record["client_id"] == client.get_client_id():
            return found
        if found is None:
            self._revoke_if_replayed(code, client)
        return None

    def _revoke_if_replayed(self, code: str, client) -> None:
        """RFC 6749 §4.1.2: a code used twice revokes the tokens issued from it."""
        used = self.server.grants.replayed_code(code)
        if not used:
            return
        client_id = client.get_client_id()
        if not may_revoke(used, client, self.request):
            audit("code_replay_refused", client_id=client_id)
            return
        revoked = self.server.grants.revoke_grant(used["family"])
        audit("code_replay", client_id=client_id, revoked=revoked)

    def delete_authorization_code(self, authorization_code) -> None:
        """Nothing left to do: the code was taken in :meth:`save_token`."""

    def save_token(self, token) -> None:
        """Take the code and store its tokens and audit entry in one exchange; a lost race
        is ``invalid_grant``, with no entry."""
        code = self.request.authorization_code
        fields = self.server.token_fields(self.request)
        lifetime = refresh_lifetime(self.request.client)
        entry = audit_record(
            "token_issued",
            client_id=code.record["client_id"],
            user_id=code.record["user_id"],
            grant="authorization_code",
        )
        if not self.server.grants.redeem_code(code, token, fields, lifetime, entry):
            raise InvalidGrantError("Invalid 'code' in request.")
        audited(entry)

    def authenticate_user(self, authorization_code):
        return self.server.users.of(authorization_code.record["user_id"], authorization_code.owner)

    def create_token_response(self):
        self.request.grant_id = self.request.authorization_code.record["grant_id"]
        return super().create_token_response()


class ImplicitGrant(grants.ImplicitGrant):
    """Implicit (§4.2): the token goes in the redirect URI's fragment.

    Authlib admits only public clients here; the original server let any client
    that lists the grant use it, so the client is looked up, not authenticated.
    """

    def authenticate_token_endpoint_client(self):
        client = self.server.query_client(self.request.payload.client_id)
        if client is None:
            raise InvalidClientError(description="The client does not exist on this server.")
        return client

    def create_authorization_response(self, redirect_uri: str, grant_user):
        self.request.grant_id = new_grant_id()
        result = super().create_authorization_response(redirect_uri, grant_user)
        if grant_user:
            audit(
                "token_issued",
                client_id=self.request.client.get_client_id(),
                user_id=grant_user.get_user_id(),
                grant="implicit",
            )
        return result


class RefreshTokenGrant(ShorterLifetime, grants.RefreshTokenGrant):
    """Refresh (§6) with rotation: the old refresh token and its access token end."""

    TOKEN_ENDPOINT_AUTH_METHODS = list(METHODS)
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str):
        found = find_refresh(self.server, refresh_token, with_owner=True)
        if found is None:
            self._revoke_if_reused(refresh_token)
        return found

    def _revoke_if_reused(self, refresh_token: str) -> None:
        """RFC 9700 §4.14.2: a rotated refresh token presented again ends its family.

        Not within the grace period after its rotation while its successor is
        unused: that is the owner's concurrent or retried refresh, not a thief.
        """
        store = self.server.grants
        rotated = store.rotated_refresh(refresh_token)
        if not rotated:
            return
        client = self.request.client
        client_id = client.get_client_id()
        if not may_revoke(rotated, client, self.request):
            audit("refresh_reuse_refused", client_id=client_id)
        elif store.within_grace(rotated):
            audit("refresh_reuse_in_grace", client_id=client_id)
        else:
            revoked = store.revoke_grant(rotated["family"])
            audit("refresh_reuse", client_id=client_id, revoked=revoked)

    def authenticate_user(self, refresh_token):
        return self.server.users.of(refresh_token.user_id, refresh_token.owner)

    def revoke_old_credential(self, refresh_token) -> None:
        """Nothing left to do: the token was taken in :meth:`save_token`."""

    def save_token(self, token) -> None:
        """Rotate in one exchange: take the old token, end its access token, store the pair
        and the audit entry (none when the token was gone)."""
        old = self.request.refresh_token
        fields = self.server.token_fields(self.request)
        lifetime = refresh_lifetime(self.request.client)
        entry = audit_record("token_refreshed", client_id=old.client_id, user_id=old.user_id)
        if not self.server.grants.rotate_refresh(old, token, fields, lifetime, entry):
            raise InvalidGrantError()
        audited(entry)

    def create_token_response(self):
        self.request.grant_id = self.request.refresh_token.grant_id
        return super().create_token_response()


class ClientCredentialsGrant(ShorterLifetime, grants.ClientCredentialsGrant):
    """Client credentials (§4.4), for clients that list it; no refresh token.

    The only grant that may carry the server's own scopes (``admin``), to a client
    that lists them; the other grants act for a user and never do.
    """

    TOKEN_ENDPOINT_AUTH_METHODS = list(SECRET_METHODS)

    def validate_requested_scope(self):
        asked = scope_to_list(self.request.payload.scope) or []
        self.server.validate_requested_scope(
            list_to_scope([s for s in asked if s not in SERVER_SCOPES])
        )

    @hooked
    def create_token_response(self):
        client = self.request.client
        scope = client.get_allowed_scope(self.request.payload.scope, server_scopes=True)
        if scope is None:
            raise InvalidScopeError()
        self.request.grant_id = new_grant_id()
        token = self.generate_token(scope=scope, include_refresh_token=False)
        self.save_token(token)
        audit("token_issued", client_id=client.get_client_id(), grant="client_credentials")
        return 200, token, self.TOKEN_RESPONSE_HEADER
