"""Token lifetimes: the client's own, and the ``expires_in`` a token request may ask for.

A client may carry ``access_token_lifetime`` / ``refresh_token_lifetime``
(:mod:`app.client_policy`); without them the server's (``storage.tokens.ttl``,
``storage.refresh_tokens.ttl``) count. At ``/token`` a client may send ``expires_in``
(as getAlby's server accepted) to get a *shorter* access token: a whole number of
seconds from 1; a larger one than the lifetime gets the lifetime (the response's
``expires_in`` says which), anything else is ``invalid_request`` before the code or
refresh token is used. It is not read at ``/authorize`` (the implicit grant).
"""

from __future__ import annotations

from authlib.oauth2.rfc6749.errors import InvalidRequestError

#: Digits of the longest ``expires_in`` read (larger numbers are capped anyway).
MAX_DIGITS = 12


def requested_expires_in(request) -> int | None:
    """The token request's ``expires_in``, or None; raise ``invalid_request`` if malformed."""
    values = request.payload.datalist.get("expires_in") or []
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequestError("Send 'expires_in' once.")
    value = values[0]
    if not (value.isascii() and value.isdigit()) or len(value) > MAX_DIGITS or int(value) < 1:
        raise InvalidRequestError("'expires_in' must be a whole number of seconds from 1.")
    return int(value)


class ShorterLifetime:
    """Grant mixin: the access token lives the client's lifetime, or less if asked."""

    def generate_token(
        self, user=None, scope=None, grant_type=None, expires_in=None, include_refresh_token=True
    ):
        lifetime = self.server.access_lifetime(self.request.client)  # type: ignore[attr-defined]
        asked = requested_expires_in(self.request)  # type: ignore[attr-defined]
        expires_in = lifetime if asked is None else min(asked, lifetime)
        return super().generate_token(  # type: ignore[misc]
            user=user,
            scope=scope,
            grant_type=grant_type,
            expires_in=expires_in,
            include_refresh_token=include_refresh_token,
        )
