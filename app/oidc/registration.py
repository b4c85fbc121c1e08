"""A client's OpenID Connect metadata in the clients file, with RFC 7591 names.

https://www.rfc-editor.org/rfc/rfc7591#section-2 and
https://openid.net/specs/openid-connect-registration-1_0.html#ClientMetadata

Parsed from a dict (the clients file today, storage later), each problem named with its
client and field. ``sector_identifier_uri`` is not fetched: the clients file is the
operator's own, trusted configuration, so its host is taken as the pairwise sector.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..clients import (
    RESPONSE_TYPE_GRANTS,
    ClientFileError,
    loopback_uri,
    normal_response_type,
    valid_redirect_uri,
)

AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")
SIGNING_ALGS = ("RS256", "ES256")
SUBJECT_TYPES = ("public", "pairwise")


def response_types(entry: dict[str, Any], where: str, grants: list[str]) -> list[str] | None:
    """The registered ``response_types`` (None: whatever the grant types allow)."""
    if "response_types" not in entry:
        return None
    values = entry["response_types"]
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ClientFileError(f"{where}.response_types: expected a list of response types")
    found = [normal_response_type(v) for v in values]
    for value in found:
        grant = RESPONSE_TYPE_GRANTS.get(value)
        if grant is None:
            raise ClientFileError(
                f"{where}.response_types: {value!r} is not one of "
                + ", ".join(repr(v) for v in RESPONSE_TYPE_GRANTS)
            )
        if grant not in grants:
            raise ClientFileError(
                f"{where}.response_types: {value!r} needs the {grant} grant in grant_types"
            )
    return found


def _choice(entry: dict[str, Any], where: str, name: str, allowed: tuple[str, ...]) -> Any:
    value = entry.get(name)
    if value is not None and value not in allowed:
        raise ClientFileError(f"{where}.{name}: must be one of {', '.join(allowed)}")
    return value


def _flag(entry: dict[str, Any], where: str, name: str) -> bool:
    value = entry.get(name, False)
    if not isinstance(value, bool):
        raise ClientFileError(f"{where}.{name}: must be true or false")
    return value


def _plain_http(uri: str) -> bool:
    return not uri.startswith("https://") and loopback_uri(uri) is None


def _uri_list(entry: dict[str, Any], where: str, name: str, require_https: bool) -> list[str]:
    uris = entry.get(name, [])
    if not isinstance(uris, list):
        raise ClientFileError(f"{where}.{name}: expected a list of URIs")
    for uri in uris:
        if not isinstance(uri, str) or not valid_redirect_uri(uri):
            raise ClientFileError(f"{where}.{name}: invalid URI {uri!r}")
        if require_https and _plain_http(uri):
            raise ClientFileError(
                f"{where}.{name}: {uri!r} must use https outside loopback in production"
            )
    return list(uris)


def _backchannel_uri(entry: dict[str, Any], where: str, require_https: bool) -> str | None:
    """Absolute, no fragment; https, or http on loopback or outside production."""
    uri = entry.get("backchannel_logout_uri")
    if uri is None:
        return None
    if not isinstance(uri, str) or not valid_redirect_uri(uri):
        raise ClientFileError(
            f"{where}.backchannel_logout_uri: {uri!r} is not an absolute http(s) URI "
            "without a fragment"
        )
    if require_https and _plain_http(uri):
        raise ClientFileError(
            f"{where}.backchannel_logout_uri: {uri!r} must use https outside loopback in production"
        )
    return uri


def _auth_method(entry: dict[str, Any], where: str, public: bool) -> str | None:
    method = _choice(entry, where, "token_endpoint_auth_method", AUTH_METHODS)
    if method is None:
        return None
    if (method == "none") != public:
        raise ClientFileError(
            f"{where}.token_endpoint_auth_method: {method!r} "
            + (
                'is for public clients: add "public": true and no secret'
                if method == "none"
                else 'needs a secret; a public client uses "none"'
            )
        )
    return method


def _sector(entry: dict[str, Any], where: str, redirects: list[str]) -> tuple[str, str | None]:
    """``(subject_type, sector_identifier)`` (OpenID Connect Core §8.1)."""
    subject_type = _choice(entry, where, "subject_type", SUBJECT_TYPES) or "public"
    uri = entry.get("sector_identifier_uri")
    if uri is not None:
        parts = urlsplit(uri) if isinstance(uri, str) else None
        if parts is None or parts.scheme != "https" or not parts.hostname or "#" in uri:
            raise ClientFileError(
                f"{where}.sector_identifier_uri: {uri!r} must be an https URL without fragment"
            )
        return subject_type, parts.hostname
    if subject_type == "pairwise":
        hosts = {urlsplit(u).hostname for u in redirects if u != "*"}
        if len(hosts) != 1:
            raise ClientFileError(
                f"{where}: a pairwise client needs its redirect URIs on one host, or a "
                "sector_identifier_uri naming its sector"
            )
    return subject_type, None


def oidc_fields(
    entry: dict[str, Any],
    where: str,
    *,
    grants: list[str],
    public: bool,
    redirects: list[str],
    require_https: bool,
) -> dict[str, Any]:
    """The OpenID Connect keyword arguments of :class:`~app.clients.Client` for ``entry``."""
    subject_type, sector = _sector(entry, where, redirects)
    return {
        "response_types": response_types(entry, where, grants),
        "post_logout_redirect_uris": _uri_list(
            entry, where, "post_logout_redirect_uris", require_https
        ),
        "token_endpoint_auth_method": _auth_method(entry, where, public),
        "id_token_signed_response_alg": _choice(
            entry, where, "id_token_signed_response_alg", SIGNING_ALGS
        ),
        "subject_type": subject_type,
        "sector_identifier": sector,
        "backchannel_logout_uri": _backchannel_uri(entry, where, require_https),
        "backchannel_logout_session_required": _flag(
            entry, where, "backchannel_logout_session_required"
        ),
        "skip_consent": _flag(entry, where, "skip_consent"),
        # Sign-in policy beside OpenID Connect's: a second factor for this client's users.
        "require_two_factor": _flag(entry, where, "require_two_factor"),
        # RFC 9449 §5.2: its token requests must carry a DPoP proof.
        "dpop_bound_access_tokens": _flag(entry, where, "dpop_bound_access_tokens"),
    }
