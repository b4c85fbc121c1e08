"""The OpenID Connect scopes (OpenID Connect Core §5.4 and §11), known beside the adapter's.

https://openid.net/specs/openid-connect-core-1_0.html#ScopeClaims
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from authlib.oidc.core import UserInfo

#: Scope -> the description on the consent page.
OIDC_SCOPES = {
    "openid": "Sign you in with your account",
    "profile": "See your name and profile details",
    "email": "See your email address",
    "address": "See your postal address",
    "phone": "See your phone number",
    "offline_access": "Keep access while you are not using it",
}

#: Scope -> the claims it releases (§5.4), ``openid`` releasing ``sub``.
SCOPE_CLAIMS: dict[str, list[str]] = UserInfo.SCOPES_CLAIMS_MAPPING
#: Every standard claim a user may have (§5.1), ``sub`` aside.
USER_CLAIMS = tuple(c for c in UserInfo.REGISTERED_CLAIMS if c != "sub")


def known_scopes(adapter_scopes: Iterable[str]) -> list[str]:
    """The adapter's scopes (its first stays the default), then the OpenID Connect ones."""
    scopes = list(adapter_scopes)
    return scopes + [scope for scope in OIDC_SCOPES if scope not in scopes]


def descriptions(adapter_scopes: Mapping[str, str]) -> dict[str, str]:
    """Scope -> consent-page description; the adapter's own wording wins."""
    return {**OIDC_SCOPES, **adapter_scopes}
