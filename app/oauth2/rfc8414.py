"""OAuth 2.0 Authorization Server Metadata (RFC 8414), https://www.rfc-editor.org/rfc/rfc8414

The document is built once, from what was registered at start; it is also the OpenID
Connect Discovery document (``app.oidc.discovery`` adds the provider's fields).
"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc8414 import AuthorizationServerMetadata

from .. import paths
from ..oidc.discovery import provider_metadata
from .client_auth import METHODS


def build_metadata(server: Any, user_claims: list[str] | None = None) -> dict[str, Any]:
    """Describe the endpoints, grants, auth methods and scopes this server registered,
    the OpenID Provider's fields (``user_claims``: the claims the adapter gives), and
    last ``server.extra_metadata`` (fields of endpoints registered outside Authlib)."""
    issuer = server.issuer
    auth_methods = list(METHODS)
    endpoints = {
        f"{name}_endpoint": issuer + path
        for name, path in paths.ENDPOINTS.items()
        if name in server.endpoint_names
    }
    metadata = AuthorizationServerMetadata(
        {
            "issuer": issuer,
            "authorization_endpoint": issuer + paths.AUTHORIZE,
            "token_endpoint": issuer + paths.TOKEN,
            **endpoints,
            "scopes_supported": list(server.scopes_supported or []),
            "response_types_supported": sorted(server.response_types),
            "response_modes_supported": ["query", "fragment"],
            "grant_types_supported": sorted(server.grant_types),
            "token_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_methods_supported": auth_methods,
            "introspection_endpoint_auth_methods_supported": auth_methods,
            "code_challenge_methods_supported": server.pkce.methods,
            "authorization_response_iss_parameter_supported": True,
            **provider_metadata(server, user_claims or ["name"]),
            **server.extra_metadata,
        }
    )
    return dict(metadata)
