"""OAuth 2.0 for this server: one module per spec, registered once from config."""

from __future__ import annotations

import secrets

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc9207 import IssuerParameter

from ..oidc.logout import logout_metadata
from ..settings import Settings
from .rfc6749 import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    ImplicitGrant,
    RefreshTokenGrant,
)
from .rfc7009 import RevocationEndpoint
from .rfc7636 import PKCEPolicy
from .rfc7662 import IntrospectionEndpoint
from .rfc8414 import build_metadata
from .server import OAuth2Server

__all__ = ["OAuth2Server", "build_server"]


class Issuer(IssuerParameter):
    """RFC 9207: ``iss`` in every authorization response, errors included."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer

    def __call__(self, authorization_server) -> Issuer:
        super().__call__(authorization_server)
        return self

    def get_issuer(self) -> str:
        return self.issuer

    def add_issuer_parameter(self, authorization_server, response) -> None:
        """Put ``iss`` beside the other parameters: the fragment for implicit responses."""
        location = response.location
        if location and "#" in location:
            response.location = add_params_to_uri(location, {"iss": self.issuer}, fragment=True)
        else:
            super().add_issuer_parameter(authorization_server, response)


def build_server(
    settings: Settings,
    clients,
    grants,
    users,
    scopes: list[str],
    keys,
    user_claims: list[str] | None = None,
) -> OAuth2Server:
    """Register exactly the grants and endpoints the configuration lists.

    ``scopes`` are every known scope (the adapter's and OpenID Connect's); ``keys`` is
    the signing key ring ID Tokens are signed with; ``user_claims`` the claims the
    adapter gives (for discovery).
    """
    from ..oidc.grants import IDTokens, OpenIDCode, OpenIDImplicitGrant, OpenIDRefresh

    auth = settings.auth
    server = OAuth2Server(
        clients=clients,
        grants=grants,
        users=users,
        issuer=settings.issuer,
        access_ttl=settings.ttl("tokens") or 3600,
        scopes=scopes,
    )
    server.id_tokens = IDTokens(
        settings.issuer, keys, ttl=settings.oidc.id_token_ttl, default_alg=settings.oidc.default_alg
    )
    server.pkce = PKCEPolicy(auth.require_pkce, auth.allow_plain_pkce)
    binding = _dpop(server, settings, grants)
    enabled = set(auth.grant_types)
    if "authorization_code" in enabled:
        code_extensions = [server.pkce, OpenIDCode(server.id_tokens), *binding]
        server.register_grant(AuthorizationCodeGrant, code_extensions)
    if "implicit" in enabled:
        implicit = _dpop_implicit(server)
        server.register_grant(ImplicitGrant, implicit)
        server.register_grant(OpenIDImplicitGrant, implicit)
    if "refresh_token" in enabled:
        server.register_grant(RefreshTokenGrant, [OpenIDRefresh(server.id_tokens), *binding])
    if "client_credentials" in enabled:
        server.register_grant(ClientCredentialsGrant, binding)
    server.register_endpoint(RevocationEndpoint)
    server.register_endpoint(IntrospectionEndpoint)
    server.issuer_parameter = Issuer(settings.issuer)
    server.register_extension(server.issuer_parameter)
    server.extra_metadata.update(logout_metadata(settings.issuer))
    if settings.registration.enabled:
        _register_registration(server, settings, clients, grants)
    server.metadata = build_metadata(server, user_claims)
    return server


def _dpop(server: OAuth2Server, settings: Settings, grants) -> list:
    """RFC 9449 (``dpop.enabled``): the proof checks, and the token grants' binding."""
    config = settings.dpop
    if not config.enabled:
        return []
    from .rfc9449 import DPoP, DPoPBinding

    secret = settings.auth.session_secret or secrets.token_urlsafe(32)
    server.dpop = DPoP(config, grants.storage.codes, secret, settings.issuer)
    server.extra_metadata["dpop_signing_alg_values_supported"] = list(config.algorithms)
    return [DPoPBinding(server.dpop)]


def _dpop_implicit(server: OAuth2Server) -> list:
    """RFC 9449: no front-channel (unbound) access token where DPoP is required."""
    if getattr(server, "dpop", None) is None:
        return []
    from .rfc9449 import DPoPImplicit

    return [DPoPImplicit(server.dpop)]


def _register_registration(server: OAuth2Server, settings: Settings, clients, grants) -> None:
    """RFC 7591 and RFC 7592 at ``/register``, announced as ``registration_endpoint``."""
    from ..paths import REGISTER
    from .rfc7591 import RegistrationEndpoint
    from .rfc7592 import ConfigurationEndpoint

    store = clients.store
    lifetimes = {
        "access_token_lifetime": server.access_ttl,
        "refresh_token_lifetime": settings.ttl("refresh_tokens") or 31536000,
    }
    iat_hash = settings.registration.initial_access_token_hash
    server.register_endpoint(
        RegistrationEndpoint(server, store=store, iat_hash=iat_hash, lifetimes=lifetimes)
    )

    def remove(client_id: str) -> int | None:
        with grants.ending():  # the token cache: one announcement for every grant
            return store.remove(client_id, grants.storage, grants.revoke_grant)

    server.register_endpoint(
        ConfigurationEndpoint(server, store=store, lifetimes=lifetimes, remove=remove)
    )
    server.extra_metadata["registration_endpoint"] = settings.issuer + REGISTER
