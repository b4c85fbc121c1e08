"""Subject identifiers (OpenID Connect Core §8): ``public`` or ``pairwise`` per client.

A public ``sub`` is the site's own user id: stable, and never reused as long as the site
never reuses its ids. A pairwise ``sub`` (§8.1) is derived from the client's sector (the
host of its redirect URIs, or its ``sector_identifier_uri``'s host), the user id and a
secret kept in the key ring, so two partners in different sectors cannot correlate a user
and the value stays the same across restarts, workers and instances.

The session id (``sid``, in ID Tokens and Logout Tokens) is scoped the same way: one
value for every partner would let partners in different sectors join their pairwise
``sub`` values on it. A pairwise client sees :func:`session_id_for`, derived from its
sector and the session's own id; a public one, the session's id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import urlsplit


def sector_of(client) -> str:
    """The client's sector identifier: its declared sector, else its redirect URIs' host."""
    if client.sector_identifier:
        return client.sector_identifier
    hosts = {urlsplit(uri).hostname or "" for uri in client.redirect_uris if uri != "*"}
    return min(hosts) if hosts else client.client_id


#: How a session id made since session ids are scoped by sector starts. A session made
#: before keeps one id for every partner (and so do the refresh tokens of its grants),
#: so a partner's ID Tokens and Logout Tokens of one session always carry the same ``sid``.
SECTORED_SID = "s."


def session_id_for(client, sid: str, secret: bytes) -> str:
    """The ``sid`` this client sees for the session whose id is ``sid`` (under a key of
    its own, derived from ``secret``: never a value :func:`subject_for` could give)."""
    if client.subject_type != "pairwise" or not sid.startswith(SECTORED_SID):
        return sid
    key = hmac.new(secret, b"oidc session id", hashlib.sha256).digest()
    digest = hmac.new(key, f"{sector_of(client)}\n{sid}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def subject_for(client, user_id: str, secret: bytes) -> str:
    """The ``sub`` this client sees for ``user_id``."""
    if client.subject_type != "pairwise":
        return str(user_id)
    message = f"{sector_of(client)}\n{user_id}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
