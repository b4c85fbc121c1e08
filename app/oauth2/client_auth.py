"""Client authentication at the token endpoints (RFC 6749 §2.3).

https://www.rfc-editor.org/rfc/rfc6749#section-2.3

The methods are Authlib hooks; this module adds what Authlib leaves to us: one secret
check for known and unknown clients alike, a Basic parser that cannot raise, and a
record of the outcome on the request (:func:`outcome`) that other layers read (the
limiter throttles failures with it) without this module knowing about them.
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from authlib.oauth2.rfc6749.errors import InvalidClientError

from .. import context
from ..observability.requestlog import note
from ..secrets_hash import token_digest
from .requests import json_text

#: The methods a client may use, in the order they are tried; the metadata lists them.
METHODS = ("client_secret_basic", "client_secret_post", "none")
#: The methods that prove a secret (the confidential clients' methods).
SECRET_METHODS = METHODS[:2]

#: Compared against when a client id is unknown, so that path costs the same.
_DUMMY_DIGEST = token_digest("unknown-client")


@dataclass(frozen=True)
class Outcome:
    """What client authentication established in this request."""

    claimed: str | None  # the client id the request named, unproven
    client: Any | None  # the client that authenticated; None: authentication failed


def outcome() -> Outcome | None:
    """This request's client authentication, or ``None`` if none was attempted."""
    found: Outcome | None = context.g().get("client_auth")
    return found


def authenticate(authenticate_with, request, methods, endpoint: str):
    """Run Authlib's ``authenticate_with`` and record its outcome on the request."""
    try:
        client = authenticate_with(request, methods, endpoint)
    except InvalidClientError:
        context.g().client_auth = Outcome(claimed_client_id(request.payload.data), None)
        raise
    client_id = client.get_client_id()
    context.g().client_auth = Outcome(client_id, client)
    note(client_id)  # the request line names the client (revocation, introspection too)
    return client


def basic_credentials(headers) -> tuple[str | None, str | None]:
    """``(client_id, secret)`` of an HTTP Basic header, form-urlencoded inside (§2.3.1).

    Total: a missing or malformed header (bad base64, not UTF-8, no secret) gives what
    could be read, ``None`` for the rest, and never raises. A token request reads it
    twice (the limiter's claimed client, then authentication): the request's WSGI
    environ keeps the answer for the header it was read from, for that request only.
    """
    header = headers.get("Authorization", "")
    environ = getattr(headers, "environ", None)
    if environ is not None:
        kept = environ.get(_BASIC_KEY)
        if kept is not None and kept[0] == header:
            return kept[1]  # type: ignore[no-any-return]
    found = _basic(header)
    if environ is not None:
        environ[_BASIC_KEY] = (header, found)
    return found


#: Where a request's WSGI environ keeps its Basic credentials, read once.
_BASIC_KEY = "oauth2.basic_credentials"


def _basic(header: str) -> tuple[str | None, str | None]:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(value.strip()).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, a non-ASCII str
        return None, None
    client_id, colon, secret = decoded.partition(":")
    return unquote(client_id) or None, unquote(secret) if colon else None


def basic_sent(headers) -> bool:
    """Whether the request carries HTTP Basic credentials, well formed or not."""
    return headers.get("Authorization", "").partition(" ")[0].lower() == "basic"


def claimed_client_id(body: dict[str, Any] | None = None) -> str | None:
    """The client id a token request names (Basic first, else the body), unproven."""
    client_id, _ = basic_credentials(context.request().headers)
    if client_id is None and body is not None:
        # As authentication reads it: a JSON number names the client as its text.
        client_id = json_text(body.get("client_id")) or None
    return client_id


def _client_with_secret(query_client, client_id: str | None, secret: str | None):
    """One path for known and unknown clients: always one secret check, same answer."""
    if not client_id or not secret:
        return None
    client = query_client(client_id)
    if client is None:
        hmac.compare_digest(token_digest(secret), _DUMMY_DIGEST)
        return None
    if not client.check_client_secret(secret) or not client.check_ip(context.request().remote_addr):
        return None
    return client


def _auth_basic(query_client, request):
    return _client_with_secret(query_client, *basic_credentials(request.headers))


def _auth_post(query_client, request):
    if basic_sent(request.headers):  # RFC 6749 §2.3: one method per request
        return None
    data = request.form
    return _client_with_secret(query_client, data.get("client_id"), data.get("client_secret"))


def _auth_none(query_client, request):
    data = request.payload.data
    if not data.get("client_id") or data.get("client_secret") or basic_sent(request.headers):
        return None
    client = query_client(data["client_id"])
    if client is None or not client.public or not client.check_ip(context.request().remote_addr):
        return None
    return client


HOOKS = dict(zip(METHODS, (_auth_basic, _auth_post, _auth_none), strict=True))
"""Authlib's client authentication hooks by method name."""
