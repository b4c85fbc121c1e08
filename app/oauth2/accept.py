"""Which presented tokens are accepted: stored ones of a still-registered client.

A client removed from the clients file (and reloaded) loses every token it holds at
once: its records stay in storage until they expire, so every place that accepts a
token (``/api``, introspection, revocation, refresh) looks it up here.
"""

from __future__ import annotations

from typing import Any

from .models import StoredToken


def _of_registered_client(server: Any, token: StoredToken | None) -> StoredToken | None:
    if token is None or server.clients.get(token.client_id) is None:
        return None
    return token


def find_access(server: Any, token: str) -> StoredToken | None:
    """The access token ``token``, if it is still accepted."""
    return _of_registered_client(server, server.grants.find_access(token))


def find_bearer(server: Any, token: str | None) -> StoredToken | None:
    """The access token ``token`` presented as a bearer token (RFC 6750), if it is still
    accepted and not DPoP-bound: RFC 9449 §7.2, a bound token needs its proof. Every
    resource (``/api``, UserInfo, ``/admin``) looks bearer tokens up here."""
    found = find_access(server, token) if token else None
    if found is None or "jkt" in found.record:
        return None
    return found


def find_refresh(server: Any, token: str, with_owner: bool = False) -> StoredToken | None:
    """The refresh token ``token``, if it is still accepted (``with_owner``: its user's
    record read with it, see :meth:`~.grant_store.GrantStore.find_refresh`)."""
    return _of_registered_client(server, server.grants.find_refresh(token, with_owner))


def find_either(server: Any, token: str, hint: str | None) -> StoredToken | None:
    """Look the token up as the hinted type first, then as the other (RFC 7009 §2.1)."""
    lookups = [find_access, find_refresh]
    if hint == "refresh_token":
        lookups.reverse()
    for lookup in lookups:
        found = lookup(server, token)
        if found is not None:
            return found
    return None
