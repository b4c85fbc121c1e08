"""OAuth 2.0 Dynamic Client Registration Protocol (RFC 7591), https://www.rfc-editor.org/rfc/rfc7591

Authlib's ``ClientRegistrationEndpoint`` does the protocol; this module answers its hooks
over :class:`~app.client_store.ClientStore`, the store the admin API writes, and fixes
what Authlib leaves to us (LIBRARIES.md §3): the secret is stored hashed, a public client
(``none``) gets no secret, metadata is checked by our own rules (the clients file's:
https outside loopback in production, no wildcard) without Authlib's stray ``print``.

Registration needs an initial access token (§3, "protected registration"): the
operator's (``registration.initial_access_token_hash``, reusable) or one the admin API
issued (single use, taken when the client is stored). Admin-only fields are refused.
"""

from __future__ import annotations

import hmac
from typing import Any

from authlib.oauth2.rfc6749.errors import AccessDeniedError, OAuth2Error
from authlib.oauth2.rfc6750.errors import InvalidTokenError
from authlib.oauth2.rfc7591 import ClientRegistrationEndpoint
from authlib.oauth2.rfc7591.errors import InvalidClientMetadataError, InvalidRedirectURIError
from flask import request as flask_request

from ..client_metadata import ClientMetadataError, is_public, read_body
from ..client_policy import LIFETIME_BOUNDS
from ..client_store import ClientStore, describe
from ..clients import ADMIN_SCOPE
from ..oauth2.requests import ParamsRequest, json_body
from ..paths import REGISTER
from ..secrets_hash import new_secret, token_digest, verify_secret
from . import rfc6750

#: Keys of initial access tokens the admin API issued, in the ``clients`` table.
INITIAL_TOKEN = "iat:"  # noqa: S105 - a key prefix, not a secret
#: Fields only the operator sets (admin API, clients file), never a registering party.
ADMIN_ONLY = ("skip_consent", "api_allowlist", "rate_limit", "disabled", "sector_identifier_uri")


class Registered:
    """What the endpoints accept as a bearer credential (Authlib asks ``check_client``)."""

    def __init__(self, client_id: str | None = None, key: str | None = None) -> None:
        self.client_id, self.key = client_id, key

    def check_client(self, client) -> bool:
        return client is not None and client.get_client_id() == self.client_id


def metadata_error(exc: ClientMetadataError) -> OAuth2Error:
    cls = InvalidRedirectURIError if exc.error == "invalid_redirect_uri" else None
    return (cls or InvalidClientMetadataError)(description=safe_text(exc.description))


def safe_text(text: str) -> str:
    """RFC 6749 §5.2's ``error_description`` characters only (a body's keys are echoed)."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)[:500]


def json_request(method: str, body_expected: bool) -> ParamsRequest:
    """An Authlib request whose ``payload.data`` is the JSON object body (checked)."""
    request = ParamsRequest(method, flask_request.url, flask_request.headers, {})
    data: Any = {}
    if body_expected:
        if not flask_request.is_json:
            raise InvalidClientMetadataError(description="Send the body as application/json.")
        data = json_body(flask_request)
        if not isinstance(data, dict):
            raise InvalidClientMetadataError(description="The body must be a JSON object.")
    request.payload._data = data  # type: ignore[attr-defined]
    return request


def checked_fields(
    body: dict[str, Any], server_lifetimes: dict[str, int], current: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A registration body under RFC 7591 names, with every admin-only field refused."""
    body = {k: v for k, v in body.items() if k not in ("client_secret", "client_id")}
    try:
        fields = read_body(body, current)
    except ClientMetadataError as exc:
        raise metadata_error(exc) from None
    problem = admin_only_problem(fields, server_lifetimes)
    if problem:
        raise InvalidClientMetadataError(description=safe_text(problem))
    return fields


def admin_only_problem(fields: dict[str, Any], server_lifetimes: dict[str, int]) -> str | None:
    for name in ADMIN_ONLY:
        if fields.get(name) is not None:
            return f"{name}: only the operator sets it (admin API)"
    if "*" in (fields.get("redirect_uris") or []):
        return "redirect_uris: list exact URIs; a wildcard is never registered"
    scope = fields.get("scope")
    if isinstance(scope, str) and ADMIN_SCOPE in scope.split():
        return f"scope: {ADMIN_SCOPE!r} is never registered"
    for name in LIFETIME_BOUNDS:
        value, limit = fields.get(name), server_lifetimes[name]
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            return f"{name}: at most the server's {limit} seconds"
    return None


class RegistrationEndpoint(ClientRegistrationEndpoint):
    """``POST /register`` (RFC 7591 §3)."""

    def __init__(self, server, *, store: ClientStore, iat_hash: str | None, lifetimes) -> None:
        super().__init__(server)
        self.store, self.iat_hash, self.lifetimes = store, iat_hash, lifetimes

    def create_endpoint_request(self, request):
        return json_request("POST", body_expected=True)

    def authenticate_token(self, request):
        """The initial access token (§3): the operator's, or one the admin API issued."""
        raw = rfc6750.bearer_token(request.headers.get("Authorization", ""))
        if not raw:
            raise InvalidTokenError(description="Send an initial access token as a bearer token.")
        if self.iat_hash and verify_secret(self.iat_hash, raw):
            return Registered()
        key = INITIAL_TOKEN + token_digest(raw)
        if self.store.table.get(key) is None:
            raise InvalidTokenError(description="The initial access token is unknown or expired.")
        return Registered(key=key)

    def extract_client_metadata(self, request):
        fields = checked_fields(request.payload.data, self.lifetimes)
        try:
            self.store.check(fields)  # before the initial access token is spent
        except ClientMetadataError as exc:
            raise metadata_error(exc) from None
        return fields

    def generate_client_info(self, request):
        """§3.2.1: a new ``client_id``; the secret is made (and hashed) by the store."""
        return {"client_id": new_secret(16)}

    def get_server_metadata(self):
        return self.server.metadata

    def save_client(self, client_info, client_metadata, request):
        token: Registered = request.credential
        if token.key is not None and self.store.table.take(token.key) is None:
            raise AccessDeniedError(description="The initial access token was just used.")
        access = new_secret(32)
        extra = {"registration_token": token_digest(access)}
        try:
            record, secret = self.store.create(
                client_metadata, client_info["client_id"], source="registration", extra=extra
            )
        except ClientMetadataError as exc:  # checked before; a rule's answer is never a 500
            raise metadata_error(exc) from None
        request.registered = (record, secret, access)
        return self.store.client(record)

    def generate_client_registration_info(self, client, request):
        record, secret, access = request.registered
        info = registration_info(record, access)
        if secret is not None:
            info["client_secret"] = secret  # shown this once; stored as a hash only
        return info


def registration_info(record: dict[str, Any], access: str | None) -> dict[str, Any]:
    """The client as RFC 7591 §3.2.1 / RFC 7592 §3 show it, with its management fields."""
    info = describe(record)
    info["registration_client_uri"] = f"{client_uri_base()}/{record['client_id']}"
    if access is not None:
        info["registration_access_token"] = access
    if is_public(record["metadata"]):
        info.pop("client_secret_expires_at", None)
    return info


def client_uri_base() -> str:
    from flask import current_app

    return current_app.extensions["oauth2"].settings.issuer + REGISTER


def check_registration_token(record: dict[str, Any] | None, raw: str) -> bool:
    """Whether ``raw`` is the client's current registration access token (constant time)."""
    stored = (record or {}).get("registration_token")
    presented = token_digest(raw)
    return bool(stored) and hmac.compare_digest(str(stored), presented)
