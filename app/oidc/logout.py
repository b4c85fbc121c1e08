"""OpenID Connect RP-Initiated Logout 1.0: validating a logout request.

https://openid.net/specs/openid-connect-rpinitiated-1_0.html

Authlib's :class:`~authlib.oidc.rpinitiated.EndSessionEndpoint` does the protocol: it
verifies ``id_token_hint`` against our JWKS ignoring ``exp`` (§2: an OP SHOULD accept
expired ID Tokens as hints), checks that ``client_id`` is in the hint's ``aud``, matches
``post_logout_redirect_uri`` exactly against the client's registered list and appends
``state``. This subclass adds what our server promises beyond it:

* the hint's ``iss`` must be ours, and hostile input (not only a bad JWS) is an
  ``invalid_request``, never an exception;
* a ``client_id`` that names no client, a repeated parameter, and a
  ``post_logout_redirect_uri`` that would not be used (unregistered, or no client to
  check it against) are errors: §4 says never redirect then, and we say why on a page
  rather than silently dropping what the partner asked for;
* without a hint, a ``post_logout_redirect_uri`` registered for the client that
  ``client_id`` names is legitimate (§3's "other means of confirming"): the client named
  itself and the target is one it registered. The user confirms such a logout first.

The view decides what happens next (:func:`needs_confirmation`): sign out at once only
for a current hint naming the signed-in user's own session.
"""

from __future__ import annotations

import time
from typing import Any

from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oidc.rpinitiated import EndSessionEndpoint, EndSessionRequest

from ..paths import LOGOUT
from ..storage import StorageUnavailable
from .keys import ALGS
from .subjects import session_id_for, subject_for

#: The request parameters of §2; the confirmation page carries them on.
PARAMS = (
    "id_token_hint",
    "logout_hint",
    "client_id",
    "post_logout_redirect_uri",
    "state",
    "ui_locales",
)


def logout_metadata(issuer: str) -> dict[str, Any]:
    """The discovery fields for logout (RP-Initiated §2.1, Back-Channel §2.1)."""
    return {
        "end_session_endpoint": issuer + LOGOUT,
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "frontchannel_logout_supported": False,
    }


class EndSession(EndSessionEndpoint):
    """Authlib's end-session validation over our key ring, clients and issuer."""

    def __init__(self, server, keys, issuer: str) -> None:
        super().__init__(server)
        self.keys = keys
        self.issuer = issuer

    def validate_request(self, request) -> EndSessionRequest:
        lists = request.payload.datalist
        for name in PARAMS:
            if len(lists.get(name, [])) > 1:
                raise InvalidRequestError(f"Parameter '{name}' is repeated.")
        data = request.payload.data
        client_id = data.get("client_id")
        if client_id and self.server.query_client(client_id) is None:
            raise InvalidRequestError("Unknown client_id.")
        validated = super().validate_request(request)
        if data.get("post_logout_redirect_uri") and validated.redirect_uri is None:
            raise InvalidRequestError(
                "The post_logout_redirect_uri is not registered for this client."
                if validated.client
                else "A post_logout_redirect_uri needs an id_token_hint or client_id."
            )
        return validated

    # -- Authlib's hooks --------------------------------------------------------------
    def get_server_jwks(self):
        return self.keys.verification_keys()

    def get_algorithms(self) -> list[str]:
        return list(ALGS)

    def _validate_id_token_hint(self, id_token_hint: str) -> dict:
        try:
            claims = super()._validate_id_token_hint(id_token_hint)
        except (InvalidRequestError, StorageUnavailable):
            raise
        except Exception as exc:  # joserfc raises many types on hostile input
            raise InvalidRequestError("The id_token_hint is not a valid ID Token.") from exc
        if claims.get("iss") != self.issuer:
            raise InvalidRequestError("The id_token_hint was not issued by this server.")
        if "events" in claims:  # a Logout Token (Back-Channel Logout §2.4), not an ID Token
            raise InvalidRequestError("The id_token_hint is not an ID Token.")
        return claims

    def resolve_client_from_id_token_claims(self, id_token_claims: dict):
        """The hint's client: its ``aud`` (a string, or the one-member list our ID Tokens
        carry), else its ``azp`` when that is one of its audiences."""
        aud = id_token_claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        azp = id_token_claims.get("azp")
        if len(audiences) == 1 and isinstance(audiences[0], str):
            return self.server.query_client(audiences[0])
        if isinstance(azp, str) and azp in audiences:
            return self.server.query_client(azp)
        return None

    def _is_valid_post_logout_redirect_uri(self, client, post_logout_redirect_uri: str) -> bool:
        return post_logout_redirect_uri in client.post_logout_redirect_uris

    def is_post_logout_redirect_uri_legitimate(
        self, request, post_logout_redirect_uri, client, logout_hint
    ) -> bool:
        return request.payload.data.get("client_id") == client.client_id


def needs_confirmation(
    request: EndSessionRequest, user_id: str, sid: str | None, secret: bytes
) -> bool:
    """Whether to ask the signed-in user before signing out (§6: a hint-less request, or
    one whose hint has expired or names another user or session, could be a forgery)."""
    claims = request.id_token_claims
    if claims is None or request.client is None:
        return True
    expires = claims.get("exp")
    if not isinstance(expires, (int, float)) or expires <= time.time():
        return True
    if claims.get("sub") != subject_for(request.client, user_id, secret):
        return True
    if "sid" not in claims:
        return False
    # The one this client saw (a pairwise client's, by its sector), or the session's own:
    # what an instance of the release before gave it, during a rolling upgrade.
    return sid is None or claims["sid"] not in (sid, session_id_for(request.client, sid, secret))
