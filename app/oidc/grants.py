"""ID Tokens (OpenID Connect Core 1.0), https://openid.net/specs/openid-connect-core-1_0.html

Authlib's extensions and grant do the protocol; this module answers their hooks:

* :class:`OpenIDCode` on the authorization code grant (§3.1): the code record carries
  the sign-in's ``auth_time``, ``sid``, ``amr`` and the request's ``nonce``;
* :class:`OpenIDRefresh` on the refresh grant (§12.2): a refresh of an ``openid`` grant
  returns a new ID Token with the same ``sub``, ``auth_time`` and ``sid``, no ``nonce``;
* :class:`OpenIDImplicitGrant` (§3.2) for ``id_token`` and ``id_token token``.

``nonce``: optional in the code flow, required for implicit, at most
:data:`MAX_NONCE` characters; never checked for reuse, as §3.1.2.2 says the server
SHOULD do nothing else with it (the relying party checks it against its session).
"""

from __future__ import annotations

import time
from typing import Any

from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oidc import core as oidc
from authlib.oidc.core.grants.util import is_openid_scope
from joserfc.jwk import KeySet

from ..audit import audit
from ..oauth2.grant_store import new_grant_id
from ..oauth2.rfc6749 import ImplicitGrant
from .signin import facts_of, remember_relying_party, sign_in_facts
from .subjects import session_id_for, subject_for

#: The longest ``nonce`` accepted (it is echoed into every ID Token of the grant).
MAX_NONCE = 512


class IDTokens:
    """What every ID Token shares: the issuer, lifetime, signing keys and claims."""

    def __init__(self, issuer: str, keys, *, ttl: int, default_alg: str) -> None:
        self.issuer = issuer
        self.keys = keys
        self.ttl = ttl
        self.default_alg = default_alg

    def algorithm(self, client) -> str:
        return client.id_token_signed_response_alg or self.default_alg

    def signing_keys(self, client) -> KeySet:
        """A key set holding only the active key for the client's algorithm.

        One key, so joserfc names exactly it in the header's ``kid`` (LIBRARIES.md §1,
        pitfall 2). The ring imports each private key once (an RSA import costs tens of
        milliseconds, a signature a fraction of one).
        """
        return KeySet([self.keys.signing_key(self.algorithm(client))])

    def subject(self, client, user_id: str) -> str:
        """The ``sub`` ``client`` sees for ``user_id`` (the key ring only for pairwise)."""
        if client.subject_type != "pairwise":
            return str(user_id)
        return subject_for(client, user_id, self.keys.pairwise_secret())

    def session_id(self, client, sid: str) -> str:
        """The ``sid`` ``client`` sees for the session ``sid`` (the key ring only for
        pairwise)."""
        if client.subject_type != "pairwise":
            return sid
        return session_id_for(client, sid, self.keys.pairwise_secret())

    def base_claims(self, client) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": self.issuer,
            "aud": [client.get_client_id()],
            "iat": now,
            "exp": now + self.ttl,
        }

    @staticmethod
    def user_claims(user, scope: str) -> oidc.UserInfo:
        """The user's claims that ``scope`` releases (§5.4); ``sub`` is added per client."""
        return oidc.UserInfo(getattr(user, "claims", None) or {}).filter(scope)


class _IDTokenHooks:
    """Authlib's ID Token hooks, answered from :class:`IDTokens`."""

    tokens: IDTokens

    def resolve_client_private_key(self, client):
        return self.tokens.signing_keys(client)

    def get_client_algorithm(self, client) -> str:
        return self.tokens.algorithm(client)

    def get_encode_header(self, client) -> dict[str, str]:
        # No ``kid`` here: joserfc sets the one key's (see IDTokens.signing_keys).
        return {"alg": self.tokens.algorithm(client), "typ": "JWT"}

    def get_client_claims(self, client) -> dict[str, Any]:
        return self.tokens.base_claims(client)

    def get_compatible_claims(self, request) -> dict[str, Any]:
        claims = super().get_compatible_claims(request)  # type: ignore[misc]
        claims["sub"] = self.tokens.subject(request.client, request.user.get_user_id())
        source = request.authorization_code or request.refresh_token
        facts = facts_of(source.record) if source is not None else sign_in_facts()
        if "sid" in facts:
            facts["sid"] = self.tokens.session_id(request.client, facts["sid"])
        claims.update(facts)
        return claims

    def generate_user_info(self, user, scope: str) -> oidc.UserInfo:
        return self.tokens.user_claims(user, scope)

    def exists_nonce(self, nonce: str, request) -> bool:
        if len(nonce) > MAX_NONCE:
            raise InvalidRequestError(f"'nonce' is longer than {MAX_NONCE} characters.")
        return False  # §3.1.2.2: the relying party, not the server, checks for replays


def _warm_keys(tokens: IDTokens):
    """A hook reading the signing key before a code or refresh token is spent, so a
    storage outage answers 503 with the credential still good; only when the tokens may
    carry an ID Token (the code's or refresh token's scope, the most a new token can
    have, holds ``openid``): a plain refresh reads no key."""

    def warm(grant, *args) -> None:
        request = grant.request
        if request.client is None:
            return
        source = request.authorization_code or request.refresh_token
        if source is None or is_openid_scope(source.get_scope()):
            tokens.signing_keys(request.client)

    return warm


class OpenIDCode(_IDTokenHooks, oidc.OpenIDCode):
    """ID Tokens for the authorization code grant (``scope`` with ``openid``)."""

    def __init__(self, tokens: IDTokens) -> None:
        super().__init__(require_nonce=False)
        self.tokens = tokens

    def __call__(self, grant) -> None:
        super().__call__(grant)
        grant.register_hook("before_create_token_response", _warm_keys(self.tokens))


class OpenIDRefresh(_IDTokenHooks, oidc.OpenIDToken):
    """A new ID Token when a grant with ``openid`` is refreshed (§12.2)."""

    def __init__(self, tokens: IDTokens) -> None:
        self.tokens = tokens

    def __call__(self, grant) -> None:
        super().__call__(grant)
        grant.register_hook("before_create_token_response", _warm_keys(self.tokens))


class OpenIDImplicitGrant(_IDTokenHooks, oidc.OpenIDImplicitGrant):
    """``id_token`` and ``id_token token`` (§3.2), for clients that may use implicit.

    As :class:`~app.oauth2.rfc6749.ImplicitGrant`, the client is looked up, not
    authenticated; ``nonce`` is required.
    """

    authenticate_token_endpoint_client = ImplicitGrant.authenticate_token_endpoint_client

    @property
    def tokens(self) -> IDTokens:  # type: ignore[override]
        return self.server.id_tokens

    @classmethod
    def check_authorization_endpoint(cls, request) -> bool:
        from ..clients import normal_response_type

        return normal_response_type(request.payload.response_type or "") in cls.RESPONSE_TYPES

    def create_authorization_response(self, redirect_uri: str, grant_user):
        self.request.grant_id = new_grant_id()
        result = super().create_authorization_response(redirect_uri, grant_user)
        if grant_user:
            client_id = self.request.client.get_client_id()
            remember_relying_party(client_id)
            audit(
                "token_issued",
                client_id=client_id,
                user_id=grant_user.get_user_id(),
                grant="implicit",
            )
        return result
